"""Notifications of one app-server turn → backend-neutral :mod:`quartproxy.events`, sans-io.

The I/O layer routes every notification that carries a thread's id to the request that owns the
thread, and feeds it here; what comes out is what :class:`~quartproxy.completion.Completion`
consumes, so content, retries, finish_reason and usage follow the same rules as on proto. One
:class:`TurnTranslator` serves one turn of one thread.

Rules:

1. ``codex/event/*`` (the v1 duplicates that 0.100–0.119 send next to every v2 notification)
   produce nothing: the v2 notification carries the same event.
2. ``item/agentMessage/delta`` is answer text (:class:`Delta`); ``item/completed`` of an
   ``agentMessage`` item is that message in full (:class:`Message`). After a retry the new
   attempt streams under a new item id from its first word; the abandoned item never completes.
3. ``thread/tokenUsage/updated`` is the thread's cumulative ``total`` (:class:`TokenCount`,
   cumulative). An update whose input and output counts are both zero is dropped: codex sends one
   on a context-window failure with the window size as its only number.
4. ``error`` with ``willRetry: true`` starts a new attempt (:class:`Retry`); otherwise it is the
   turn's failure (:class:`Error`), its kind read from ``codexErrorInfo``.
5. ``turn/completed`` ends the turn: ``completed`` → :class:`TaskComplete`; ``failed`` → an
   :class:`Error` from ``turn.error`` if no ``error`` notification came first, then
   :class:`TaskComplete`; ``interrupted`` (only ever after our own interrupt or delete) →
   :class:`TurnAborted`. After it the translator is :attr:`~TurnTranslator.finished` and
   produces nothing more.
6. Reasoning summaries are never answer text: ``item/reasoning/summaryPartAdded`` →
   :class:`ReasoningPart`, ``item/reasoning/summaryTextDelta`` → :class:`ReasoningDelta`.
7. A client tool call is collected from ``rawResponseItem/completed`` — never from the
   ``item/tool/call`` server request, which may come late or out of order — when its ``turnId`` is
   this turn's, it is a ``function_call``, its name was declared, and its ``call_id`` is not one
   the proxy injected as history (injected history is echoed as raw items under another turn id,
   ``auto-compact-0``), nor one already collected. Its ``arguments`` are the model's string,
   byte for byte (:class:`ToolCall`). Other raw items of this turn are activity; raw items of any
   other turn produce nothing.
8. ``rawResponse/completed`` of this turn ends one model response (:class:`ResponseDone`, with
   that response's usage). With calls pending codex sends nothing else, so this is where a tool
   turn finishes.
9. Anything else under ``item/`` or ``turn/`` is turn activity (:class:`Other`, which resets idle
   timers and changes nothing else); everything else is bookkeeping and produces nothing.

The turn id comes from the ``turn/start`` result; the owner sets :attr:`TurnTranslator.turn_id`.
If it has not yet when ``turn/started`` arrives, the id is taken from there. Until a turn id is
known no tool call is collected, since nothing could tell it from an echo of the history.
"""

from __future__ import annotations

from typing import Any

from ...events import (
    Counts,
    Delta,
    Error,
    ErrorKind,
    Event,
    Message,
    Other,
    ReasoningDelta,
    ReasoningPart,
    ResponseDone,
    Retry,
    TaskComplete,
    TokenCount,
    ToolCall,
    TurnAborted,
)
from .rpc import Notification

V1_PREFIX = "codex/event/"


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def counts_of(usage: Any) -> Counts | None:
    """An app-server usage object (``total``/``last`` of a token update, or a raw response's
    ``usage``) as :class:`Counts`; ``None`` when it says nothing.

    ``totalTokens`` is not used (callers add input and output), and ``cacheWriteInputTokens`` has
    no OpenAI field.
    """
    if not isinstance(usage, dict):
        return None
    counts = Counts(
        input_tokens=_int(usage.get("inputTokens")),
        output_tokens=_int(usage.get("outputTokens")),
        cached_input_tokens=_int(usage.get("cachedInputTokens")),
        reasoning_output_tokens=_int(usage.get("reasoningOutputTokens")),
    )
    if counts.input_tokens is None and counts.output_tokens is None:
        return None
    return counts


def error_kind(info: Any) -> ErrorKind:
    """``codexErrorInfo`` (a string such as ``"usageLimitExceeded"``, or a one-key object such as
    ``{"responseTooManyFailedAttempts": {"httpStatusCode": 429}}``) → what the client is told."""
    if isinstance(info, str):
        name, detail = info, None
    elif isinstance(info, dict) and len(info) == 1:
        ((name, detail),) = info.items()
    else:
        return ErrorKind.OTHER
    if name == "usageLimitExceeded":
        return ErrorKind.USAGE_LIMIT
    if name == "contextWindowExceeded":
        return ErrorKind.CONTEXT_WINDOW
    if name == "responseTooManyFailedAttempts" and _dict(detail).get("httpStatusCode") == 429:
        return ErrorKind.RATE_LIMIT
    return ErrorKind.OTHER


def _error_text(error: dict[str, Any], fallback: str) -> str:
    return (
        _str(error.get("message")) or _str(error.get("additionalDetails")) or fallback
    )


class TurnTranslator:
    """Turns the notifications of one turn into events (rules in the module docstring).

    ``declared`` are the tool names sent in ``dynamicTools``; ``injected_call_ids`` the call ids
    put into the thread as history. ``duplicate_v1`` records that the release also sends
    ``codex/event/*`` copies; they are dropped either way.
    """

    __slots__ = (
        "_calls",
        "_failed",
        "declared",
        "duplicate_v1",
        "finished",
        "injected_call_ids",
        "turn_id",
    )

    def __init__(
        self,
        declared: frozenset[str] = frozenset(),
        injected_call_ids: frozenset[str] = frozenset(),
        duplicate_v1: bool = False,
    ) -> None:
        self.declared = declared
        self.injected_call_ids = injected_call_ids
        self.duplicate_v1 = duplicate_v1
        self.turn_id: str | None = None
        self.finished = False
        self._failed = False  # an `error` without retry was translated
        self._calls: set[str] = set()  # call ids already collected

    def feed(self, note: Notification) -> list[Event]:
        if self.finished:
            return []
        method, params = note.method, note.params
        if method.startswith(V1_PREFIX):
            return []
        if method == "item/agentMessage/delta":
            delta = _str(params.get("delta"))
            return [Delta(delta)] if delta else []
        if method == "item/completed":
            item = _dict(params.get("item"))
            text = _str(item.get("text"))
            if item.get("type") == "agentMessage" and text is not None:
                return [Message(text)]
            return [Other(method)]
        if method == "thread/tokenUsage/updated":
            counts = counts_of(_dict(params.get("tokenUsage")).get("total"))
            if counts is None or not (counts.input_tokens or counts.output_tokens):
                return []
            return [TokenCount(counts, cumulative=True)]
        if method == "error":
            return self._error(params)
        if method == "turn/completed":
            return self._completed(_dict(params.get("turn")))
        if method == "item/reasoning/summaryPartAdded":
            return [ReasoningPart()]
        if method == "item/reasoning/summaryTextDelta":
            delta = _str(params.get("delta"))
            return [ReasoningDelta(delta)] if delta else []
        if method == "rawResponseItem/completed":
            return self._raw_item(params)
        if method == "rawResponse/completed":
            if not self._this_turn(params):
                return []
            return [ResponseDone(counts_of(params.get("usage")))]
        if method == "turn/started" and self.turn_id is None:
            self.turn_id = _str(_dict(params.get("turn")).get("id"))
        if method.startswith(("item/", "turn/")):
            return [Other(method)]
        return []

    # ------------------------------------------------------------------------------ helpers

    def _this_turn(self, params: dict[str, Any]) -> bool:
        return self.turn_id is not None and params.get("turnId") == self.turn_id

    def _error(self, params: dict[str, Any]) -> list[Event]:
        error = _dict(params.get("error"))
        if params.get("willRetry") is True:
            return [Retry(_error_text(error, "codex is retrying the model request"))]
        self._failed = True
        return [
            Error(
                _error_text(error, "codex reported an error"),
                error_kind(error.get("codexErrorInfo")),
            )
        ]

    def _completed(self, turn: dict[str, Any]) -> list[Event]:
        self.finished = True
        status = turn.get("status")
        if status == "completed":
            return [TaskComplete(None)]
        if status == "failed":
            events: list[Event] = []
            if not self._failed:
                error = _dict(turn.get("error"))
                events.append(
                    Error(
                        _error_text(error, "codex reported the turn as failed"),
                        error_kind(error.get("codexErrorInfo")),
                    )
                )
            events.append(TaskComplete(None))
            return events
        # "interrupted", or a status this proxy does not know: the turn ended without finishing.
        return [TurnAborted(status if isinstance(status, str) and status else "unknown")]

    def _raw_item(self, params: dict[str, Any]) -> list[Event]:
        if not self._this_turn(params):
            return []  # history echoes (auto-compact-0), or a turn we cannot attribute yet
        item = _dict(params.get("item"))
        call_id, name = _str(item.get("call_id")), _str(item.get("name"))
        arguments = _str(item.get("arguments"))
        if (
            item.get("type") == "function_call"
            and call_id is not None
            and name is not None
            and arguments is not None
            and name in self.declared
            and call_id not in self.injected_call_ids
            and call_id not in self._calls
        ):
            self._calls.add(call_id)
            return [ToolCall(call_id, name, arguments)]
        return [Other("rawResponseItem/completed")]
