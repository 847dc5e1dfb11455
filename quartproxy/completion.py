"""The completion state machine: one per request, sans-io.

Theory of operation
-------------------
A request's whole life is a sequence of *inputs* — proto events from the child (:meth:`feed`) and
ends imposed from outside (:meth:`end`: stdout closed, a deadline, shutdown, the client leaving)
— and a sequence of *outputs*: :class:`Content` pieces, then exactly one terminal output,
:class:`Finished` or :class:`Failed` (or nothing at all when the client left). The SSE renderer
turns outputs into frames as they happen; the JSON renderer reads the final state. Because both
read this one object, a stream and a non-stream request fed the same events cannot disagree about
content, finish_reason or usage, except where the spec makes them differ on purpose (below).

Rules kept here (from the spec's lifecycle section):

1. Answer text is the ``agent_message_delta`` text of the *current attempt*. An ``agent_message``
   adds only what its deltas did not already carry. Several messages in one turn are joined with
   a blank line.
2. ``stream_error``/``background_event`` start a new attempt that replays the answer from its
   start. Non-stream simply forgets the old attempt. A stream cannot take back what it sent, so
   the new attempt is matched against the sent text: the repeat is swallowed, only text beyond it
   is sent, and a contradiction ends the stream with ``upstream_retry_diverged``.
3. If ``agent_message`` contradicts its deltas, a stream keeps what it sent; non-stream answers
   with the message (the "message wins" rule) — the one deliberate stream/non-stream difference
   besides rule 2.
4. ``max_tokens`` is counted with the estimator on the delivered text; crossing it cuts the text
   at the limit and finishes with ``length``.
5. With tool-block handling on (:mod:`.toolblocks`), delivered text passes a gate that holds
   back the tail after the last complete ``<use_tool>`` block; a stop-after-tools cut finishes
   with ``stop``. Both renderings read the gated text.
6. Every way a turn can end maps to one terminal output (the finish_reason table): ``stop`` (or
   the reason task_complete carries) when codex finishes; ``length`` when the turn is cut with
   answer text in hand (truncation, deadlines, shutdown, max_tokens, an error after text); an
   error without answer text is :class:`Failed` with the matching status.
7. After the terminal output the state is frozen: later inputs change nothing. Token counts are
   kept as soon as they arrive. A whole-turn total replaces an earlier one; per-response counts
   (flat proto 0.8–0.29, app-server ``rawResponse/completed``) add up, and are used only when no
   total arrived; ``info: null`` is ignored.
8. Client function calls (:class:`~quartproxy.events.ToolCall`) are collected as they arrive,
   in order; with ``parallel_tool_calls: false`` only the first is kept. At the end of the model
   response that made them (:class:`~quartproxy.events.ResponseDone`) the turn finishes with
   ``tool_calls``. Any other end with at least one call in hand — a deadline, the backend
   going away, an error — also finishes with ``tool_calls`` (each collected call is complete);
   only a client disconnect does not.
9. A codex error without answer text becomes the status its kind calls for: usage limit and
   rate limit 429, context window 400, anything else 502.

Rule 0, as in h11: every decision about what a client receives lives in this file (and the
sans-io modules it uses); the I/O layer only feeds events and ends.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import errors
from .errors import ApiError
from .events import (
    Counts,
    Delta,
    Error,
    ErrorKind,
    Event,
    Message,
    ReasoningDelta,
    ReasoningPart,
    ResponseDone,
    Retry,
    TaskComplete,
    TokenCount,
    ToolCall,
    TurnAborted,
)
from .toolblocks import ToolBlockGate, ToolPolicy
from .usage import Usage, make_usage

FINISH_REASONS = frozenset({"stop", "length", "content_filter", "tool_calls"})
MESSAGE_SEPARATOR = "\n\n"


class End(enum.Enum):
    """Why the I/O layer stopped feeding events."""

    EOF = "eof"  # the backend stopped talking (proto: child's stdout closed) before the end
    WORKER_EXIT = "worker_exit"  # app-server: the worker carrying the turn died
    TIMEOUT = "timeout"  # PROXY_TIMEOUT_MS
    IDLE = "idle"  # no stdout event for the idle deadline
    EARLY_FINALIZE = "early_finalize"  # PROXY_NONSTREAM_TRUNCATE_AFTER_MS
    SHUTDOWN = "shutdown"  # the server's drain deadline passed
    TOOL_CUT = "tool_cut"  # stop-after-tools (burst): no new tool block within the grace
    OVERFLOW = "overflow"  # app-server: a slow client let the turn's buffer pass its cap
    DISCONNECT = "disconnect"  # the client went away: nothing more is written


@dataclass(frozen=True, slots=True, init=False)
class Content:
    """Answer text to send. One per streamed word: set through the slot, as
    :class:`~quartproxy.events.Delta` is."""

    text: str

    def __init__(self, text: str) -> None:
        _set_content_text(self, text)


_set_content_text: Callable[[Content, str], None] = Content.__dict__["text"].__set__


@dataclass(frozen=True, slots=True)
class CallOut:
    """A collected client function call, ``index`` in the order the model made them."""

    index: int
    call: ToolCall


@dataclass(frozen=True, slots=True)
class Finished:
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    error: ApiError


Output = Content | CallOut | Finished | Failed

_PATH_RE = re.compile(r"(?<![\w:/.~-])(?:~|\.{1,2})?/(?:[\w.@+-]+/)*[\w.@+-]+")


def backend_message(raw: str) -> str:
    """codex's error text as a client may see it: first line, filesystem paths removed."""
    first = next((line.strip() for line in raw.splitlines() if line.strip()), "")
    first = _PATH_RE.sub("<path>", first)
    if len(first) > 500:
        first = first[:497] + "..."
    return first or "codex reported an error"


def _retry_diverged() -> ApiError:
    return errors.ApiError(
        502,
        "codex retried the answer and the new attempt differs from the text already streamed; "
        "the stream cannot be continued.",
        "server_error",
        "upstream_retry_diverged",
    )


def error_for_kind(kind: ErrorKind, message: str, prompt_param: str = "messages") -> ApiError:
    """The client's error for a codex failure with no answer text (rule 9).

    ``prompt_param`` is the request field a context-window overflow blames: ``messages``,
    ``prompt`` (legacy completions) or ``input`` (Responses), as the prompt-size guard does."""
    shown = backend_message(message)
    if kind is ErrorKind.USAGE_LIMIT:
        return ApiError(429, shown, "insufficient_quota", "insufficient_quota")
    if kind is ErrorKind.RATE_LIMIT:
        return ApiError(429, shown, "rate_limit_error", "rate_limit_exceeded",
                        headers={"Retry-After": "1"})
    if kind is ErrorKind.CONTEXT_WINDOW:
        return ApiError(400, shown, "invalid_request_error", "context_length_exceeded",
                        prompt_param)
    return errors.backend_error(shown)


def _add(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else a + b


def _add_counts(a: Counts, b: Counts) -> Counts:
    return Counts(
        input_tokens=_add(a.input_tokens, b.input_tokens),
        output_tokens=_add(a.output_tokens, b.output_tokens),
        cached_input_tokens=_add(a.cached_input_tokens, b.cached_input_tokens),
        reasoning_output_tokens=_add(a.reasoning_output_tokens, b.reasoning_output_tokens),
    )


class _Message:
    """One assistant message of the current attempt."""

    __slots__ = ("deltas", "final", "length")

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.length = 0
        self.final: str | None = None

    def delta_text(self) -> str:
        return "".join(self.deltas)

    def answer(self) -> str:
        return self.final if self.final is not None else self.delta_text()


class Completion:
    def __init__(
        self,
        *,
        stream: bool,
        prompt_chars: int,
        max_tokens: int | None = None,
        tools: ToolPolicy | None = None,
        parallel_calls: bool = True,
        prompt_param: str = "messages",
    ) -> None:
        self.stream = stream
        self.prompt_param = prompt_param
        self.tools = tools if tools is not None and tools.active else None
        self._gate = ToolBlockGate() if self.tools is not None else None
        self._released: list[str] = []  # what passed the tool-block gate
        self.prompt_chars = prompt_chars
        self.limit_chars = max_tokens * 4 if max_tokens else None
        self._total: Counts | None = None  # latest whole-turn total
        self._sum: Counts | None = None  # per-response counts, added up
        self.calls: list[ToolCall] = []
        self.calls_dropped = 0  # parallel_tool_calls: false
        self.parallel_calls = parallel_calls
        self.reasoning: list[list[str]] = []  # summary parts of the current attempt
        self.outcome: Finished | Failed | None = None
        self.end_cause: End | None = None
        # Whether nothing more is produced: an outcome was reached, or the client left. A plain
        # attribute, set where those two are, because it is read once per event.
        self.done = False
        self.backend_error_text: str | None = None  # codex's own text, for logs only
        self.attempts = 1
        self._messages: list[_Message] = []
        # What went out on the wire (stream) / was delivered in this attempt (non-stream).
        self._sent: list[str] = []
        self._sent_len = 0
        # Stream retry bookkeeping: the sent text the new attempt must repeat before going on.
        self._replay: str | None = None
        self._replay_pos = 0
        self._cut_text: str | None = None  # non-stream answer cut at max_tokens

    # ----------------------------------------------------------------------------- queries

    @property
    def counts(self) -> Counts | None:
        return self._total if self._total is not None else self._sum

    def reasoning_text(self) -> list[str]:
        return [text for part in self.reasoning if (text := "".join(part))]

    @property
    def finish_reason(self) -> str | None:
        return self.outcome.reason if isinstance(self.outcome, Finished) else None

    @property
    def error(self) -> ApiError | None:
        return self.outcome.error if isinstance(self.outcome, Failed) else None

    @property
    def tool_blocks(self) -> int:
        return self._gate.blocks if self._gate is not None else 0

    def has_text(self) -> bool:
        if self.stream:
            return self._sent_len > 0
        return any(m.length or m.final for m in self._messages)

    def text(self) -> str:
        """The answer a non-stream response carries (and what a stream has sent)."""
        if self._gate is not None:
            return "".join(self._released)
        if self.stream:
            return "".join(self._sent)
        if self._cut_text is not None:
            return self._cut_text
        parts = [answer for m in self._messages if (answer := m.answer())]
        return MESSAGE_SEPARATOR.join(parts)

    def usage(self) -> Usage:
        return make_usage(self.counts, self.prompt_chars, len(self.text()))

    # ----------------------------------------------------------------------------- inputs

    def feed(self, event: Event) -> list[Output]:
        """The outputs one event produces (none once the completion is done)."""
        out: list[Output] = []
        if not self.done:
            self._feed(event, out)
        return out

    def feed_batch(self, events: Iterable[Event]) -> list[Output]:
        """The outputs of a batch, in order; events after the one that decided the outcome are
        not looked at. One call per batch: the relay feeds every word of a stream through it."""
        out: list[Output] = []
        for event in events:
            if self.done:
                break
            self._feed(event, out)
        return out

    def _feed(self, event: Event, out: list[Output]) -> None:
        if isinstance(event, Delta):
            if event.text:
                self._add_text(event.text, out)
        elif isinstance(event, Message):
            self._message(event.text, out)
        elif isinstance(event, TokenCount):
            if event.counts is not None:
                if event.cumulative:
                    self._total = event.counts
                else:
                    self._add_response(event.counts)
        elif isinstance(event, ReasoningPart):
            self.reasoning.append([])
        elif isinstance(event, ReasoningDelta):
            if not self.reasoning:
                self.reasoning.append([])
            self.reasoning[-1].append(event.text)
        elif isinstance(event, ToolCall):
            if self.calls and not self.parallel_calls:
                self.calls_dropped += 1
            else:
                self.calls.append(event)
                out.append(CallOut(len(self.calls) - 1, event))
        elif isinstance(event, ResponseDone):
            if event.counts is not None:
                self._add_response(event.counts)
            if self.calls:
                self._finish("tool_calls", out)
        elif isinstance(event, Retry):
            self._new_attempt()
        elif isinstance(event, Error):
            self.backend_error_text = event.message
            self._terminate_with_text_or(
                out, error_for_kind(event.kind, event.message, self.prompt_param))
        elif isinstance(event, TaskComplete):
            if self._replay is not None:
                # The retry ended before repeating everything already streamed: it diverged.
                self._fail(_retry_diverged(), out)
                return
            if not self._messages and event.last_message:
                self._message(event.last_message, out)
            if not self.done:
                reason = event.finish_reason or "stop"
                # "tool_calls" is only ever true when calls were collected (rule 8).
                reason = reason if reason in FINISH_REASONS - {"tool_calls"} else "stop"
                self._finish("tool_calls" if self.calls else reason, out)
        elif isinstance(event, TurnAborted):
            self._terminate_with_text_or(
                out, errors.backend_error(f"codex aborted the turn ({event.reason or 'unknown'})")
            )

    def end(self, cause: End) -> list[Output]:
        """The I/O layer stopped for ``cause``; produce the terminal output for it."""
        if self.done:
            return []
        self.end_cause = cause
        out: list[Output] = []
        if cause is End.DISCONNECT:
            self.done = True
            return out
        if self.calls:
            self._finish("tool_calls", out)
        elif cause is End.SHUTDOWN:
            if self.stream or self.has_text():
                self._finish("length", out)
            else:
                self._fail(errors.shutting_down(), out)
        elif cause is End.TOOL_CUT:
            self._finish("stop", out)
        elif cause is End.EOF:
            self._terminate_with_text_or(
                out, errors.backend_error("codex exited before completing the answer.")
            )
        elif cause is End.WORKER_EXIT:
            self._terminate_with_text_or(
                out, errors.ApiError(502, "The codex worker carrying this request exited before "
                                     "completing the answer.", "server_error", "worker_exited")
            )
        elif cause is End.OVERFLOW:
            self._terminate_with_text_or(
                out, errors.backend_error("The client read the answer too slowly; it was cut.")
            )
        elif cause is End.IDLE:
            self._terminate_with_text_or(
                out, errors.timeout("idle_timeout", "codex produced no output before the idle "
                                    "deadline.")
            )
        else:  # TIMEOUT, EARLY_FINALIZE
            self._terminate_with_text_or(
                out, errors.timeout("request_timeout", "No answer before the request deadline.")
            )
        return out

    def abort(self, error: ApiError) -> list[Output]:
        """End with ``error`` whatever the state (the I/O layer hit a bug, not codex)."""
        out: list[Output] = []
        if not self.done:
            self._fail(error, out)
        return out

    # ----------------------------------------------------------------------------- text

    def _needs_new_message(self) -> bool:
        return not self._messages or self._messages[-1].final is not None

    def _add_text(self, text: str, out: list[Output]) -> _Message | None:
        """Append text to the current message, or start one if there is none or the last one
        was completed; ``None`` if the limit cut it first."""
        messages = self._messages
        if not messages or messages[-1].final is not None:
            if messages and messages[-1].answer():
                self._deliver(MESSAGE_SEPARATOR, out)
                if self.done:
                    return None
            messages.append(_Message())
        message = messages[-1]
        message.deltas.append(text)
        message.length += len(text)
        self._deliver(text, out)
        return message

    def _message(self, text: str, out: list[Output]) -> None:
        if self._needs_new_message():
            # A message with no deltas before it: all of its text is new.
            if text and (message := self._add_text(text, out)) is not None:
                message.final = text
            return
        message = self._messages[-1]
        delivered = message.delta_text()
        if not text and delivered:
            return  # an empty message never erases text codex already streamed
        if text.startswith(delivered):
            extra = text[len(delivered):]
            if extra:
                message.deltas.append(extra)
                message.length += len(extra)
                self._deliver(extra, out)
        message.final = text
        if not self.stream and not self.done and self.limit_chars is not None:
            answer = self.text()
            if len(answer) > self.limit_chars:
                self._cut_text = answer[: self.limit_chars]
                self._finish("length", out)

    def _add_response(self, counts: Counts) -> None:
        self._sum = counts if self._sum is None else _add_counts(self._sum, counts)

    def _new_attempt(self) -> None:
        self.attempts += 1
        self._messages = []
        self.reasoning = []
        if self.stream:
            if self._sent_len:
                self._replay = "".join(self._sent)
                self._replay_pos = 0
        else:
            self._sent = []
            self._sent_len = 0
            if self._gate is not None:
                self._gate = ToolBlockGate()
                self._released = []

    def _deliver(self, text: str, out: list[Output]) -> None:
        if self._replay is not None:
            text = self._match_replay(text, out)
            if not text:
                return
        if self.limit_chars is not None and self._sent_len + len(text) >= self.limit_chars:
            room = self.limit_chars - self._sent_len
            head = text[:room]
            if head:
                self._emit(head, out)
            if len(text) > room:
                if not self.stream:
                    self._cut_text = "".join(self._sent)  # this attempt's text, cut at the limit
                self._finish("length", out)
            return
        self._emit(text, out)

    def _match_replay(self, text: str, out: list[Output]) -> str:
        replay = self._replay
        assert replay is not None
        pos = self._replay_pos
        n = min(len(text), len(replay) - pos)
        if text[:n] != replay[pos : pos + n]:
            self._replay = None
            self._fail(_retry_diverged(), out)
            return ""
        self._replay_pos = pos + n
        if self._replay_pos == len(replay):
            self._replay = None
        return text[n:]

    def _emit(self, text: str, out: list[Output]) -> None:
        self._sent.append(text)
        self._sent_len += len(text)
        gate = self._gate
        if gate is None:
            out.append(Content(text))
            return
        before = gate.blocks
        released = gate.feed(text)
        if released:
            self._released.append(released)
            out.append(Content(released))
        assert self.tools is not None
        if gate.blocks > before and self.tools.cut_now(gate.blocks):
            self._finish("stop", out)

    # ----------------------------------------------------------------------------- endings

    def _terminate_with_text_or(self, out: list[Output], error: ApiError) -> None:
        if self.done:
            return
        if self.calls:
            self._finish("tool_calls", out)
        elif self.has_text():
            self._finish("length", out)
        else:
            self._fail(error, out)

    def _finish(self, reason: str, out: list[Output]) -> None:
        if self.outcome is None:
            if self._gate is not None:
                rest = self._gate.finish()
                if rest:
                    self._released.append(rest)
                    out.append(Content(rest))
            self.outcome = Finished(reason)
            self.done = True
            out.append(self.outcome)

    def _fail(self, error: ApiError, out: list[Output]) -> None:
        if self.outcome is None:
            self.outcome = Failed(error)
            self.done = True
            out.append(self.outcome)
