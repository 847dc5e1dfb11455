"""The Responses API rendering of a :class:`~quartproxy.completion.Completion`. Sans-io.

The third rendering of the one completion, next to chat and legacy (:mod:`.render`): the same
outputs (:class:`~quartproxy.completion.Content`, :class:`~quartproxy.completion.CallOut`,
:class:`~quartproxy.completion.Finished`, :class:`~quartproxy.completion.Failed`) and the same
final state, written as OpenAI's ``response`` object and its typed SSE events.

Status (the finish_reason table, in Responses words):

======================================  =================================================
completion                              response
======================================  =================================================
``stop``, ``tool_calls``                ``completed``
``length`` (max_output_tokens, and      ``incomplete``, ``incomplete_details.reason``
every other cut chat calls ``length``:  ``max_output_tokens``: the answer was cut short,
timeouts, truncation, shutdown, a       exactly what chat's ``length`` says; the usage log
codex error after text)                 records which cut it was
``content_filter``                      ``incomplete``, reason ``content_filter``
:class:`Failed` before any byte         the HTTP error envelope chat gives (429/400/502/504)
:class:`Failed` once the stream began   ``response.failed`` with ``error: {code, message}``,
                                        the codes chat uses (``upstream_retry_diverged``...)
======================================  =================================================

Output items, in this order: a ``reasoning`` item when codex reported reasoning text (its
summary parts), a ``message`` item with the answer as one ``output_text`` part, then one
``function_call`` item per collected call. The message item is left out only when the model
made calls and wrote no text. A stream emits the reasoning item as one block when the first
text, call or ending arrives (codex's reasoning precedes its answer); reasoning that arrives
after that is not streamed, and the stream's final response lists what it streamed.

Stream events: ``response.created``, ``response.in_progress`` (the opening), then per item
``output_item.added`` … ``output_item.done`` with its content events, then exactly one of
``response.completed``/``response.incomplete``/``response.failed`` carrying the whole response
with usage; nothing follows it (no ``[DONE]``: Responses streams end with their terminal event).
Every event is ``event: <type>`` + ``data: <json>`` with a ``sequence_number`` counting from 0.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from .completion import CallOut, Completion, Content, Failed, Finished, Output
from .errors import ApiError
from .events import ToolCall
from .render import keepalive_comment
from .usage import Usage

IdFactory = Callable[[str], str]


def new_id(prefix: str) -> str:
    """``resp_``/``msg_``/``rs_``/``fc_`` followed by 48 hex digits (OpenAI-like, unique)."""
    return f"{prefix}_{secrets.token_hex(24)}"


def responses_usage(usage: Usage) -> dict[str, Any]:
    """Usage in the Responses shape. codex reports no cache writes: ``cache_write_tokens`` is
    always 0 (current SDKs require the field)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def error_object(error: ApiError) -> dict[str, Any]:
    return {"code": error.code or "server_error", "message": error.message}


@dataclass(frozen=True, slots=True)
class Status:
    status: str  # in_progress | completed | incomplete | failed
    incomplete_details: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def item_status(self) -> str:
        """What a message item that ends with the response says."""
        return "completed" if self.status == "completed" else "incomplete"


IN_PROGRESS = Status("in_progress")


def status_of(completion: Completion) -> Status:
    error = completion.error
    if error is not None:
        return Status("failed", error=error_object(error))
    reason = completion.finish_reason
    if reason == "length":
        return Status("incomplete", {"reason": "max_output_tokens"})
    if reason == "content_filter":
        return Status("incomplete", {"reason": "content_filter"})
    return Status("completed")


# ----------------------------------------------------------------------------- items


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "text": text}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [output_text_part(text)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": content}


def reasoning_item(item_id: str, parts: list[str] | None) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text} for text in parts or []]
    return {"type": "reasoning", "id": item_id, "summary": summary}


def function_call_item(item_id: str, call: ToolCall, status: str,
                       arguments: str | None = None) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call.call_id, "name": call.name,
            "arguments": call.arguments if arguments is None else arguments, "status": status}


# ----------------------------------------------------------------------------- the object


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What every response object of one request shares: id, time, model, the request echo."""

    response_id: str
    created_at: int
    model: str
    echo: dict[str, Any]

    def body(self, status: Status, output: list[dict[str, Any]],
             usage: Usage | None) -> dict[str, Any]:
        """The ``response`` object, keys in the order OpenAI writes them."""
        echo = self.echo
        doc: dict[str, Any] = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status.status,
            "background": echo.get("background", False),
            "error": status.error,
            "incomplete_details": status.incomplete_details,
            "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"),
            "max_tool_calls": echo.get("max_tool_calls"),
            "model": self.model,
            "output": output,
        }
        for key, default in (
            ("parallel_tool_calls", True), ("previous_response_id", None),
            ("prompt_cache_key", None), ("reasoning", {"effort": None, "summary": None}),
            ("safety_identifier", None), ("service_tier", "default"), ("store", False),
            ("temperature", 1.0), ("text", {"format": {"type": "text"}}),
            ("tool_choice", "auto"), ("tools", []), ("top_logprobs", 0), ("top_p", 1.0),
            ("truncation", "disabled"),
        ):
            doc[key] = echo.get(key, default)
        doc["usage"] = responses_usage(usage) if usage is not None else None
        doc["user"] = echo.get("user")
        doc["metadata"] = echo.get("metadata", {})
        return doc


def response_json(
    completion: Completion, head: ResponseHead, *, ids: IdFactory = new_id
) -> dict[str, Any]:
    """The non-stream answer: the final state as one ``response`` object."""
    status = status_of(completion)
    output: list[dict[str, Any]] = []
    reasoning = completion.reasoning_text()
    if reasoning:
        output.append(reasoning_item(ids("rs"), reasoning))
    text = completion.text()
    if text or not completion.calls:
        output.append(message_item(ids("msg"), text, status.item_status))
    output += [function_call_item(ids("fc"), call, "completed") for call in completion.calls]
    return head.body(status, output, completion.usage())


# ----------------------------------------------------------------------------- the stream


class _Events:
    """Numbered SSE events; the hot path (text deltas) uses pre-encoded pieces."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0

    def next_seq(self) -> bytes:
        seq = self.seq
        self.seq += 1
        return str(seq).encode()

    def event(self, kind: str, fields: dict[str, Any]) -> bytes:
        name = kind.encode()
        rest = orjson.dumps(fields)[1:] if fields else b"}"
        return (
            b"event: " + name + b'\ndata: {"type":"' + name + b'","sequence_number":'
            + self.next_seq() + (b"," if fields else b"") + rest + b"\n\n"
        )


_DELTA_HEAD = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
               b'"sequence_number":')
_DELTA_TAIL = b',"logprobs":[]}\n\n'


class ResponsesStreamRenderer:
    """SSE events for one ``/v1/responses`` stream (the :class:`~quartproxy.render.Renderer`
    protocol). Tracks which output items are open so every ``added`` gets its ``done``, and the
    final event lists exactly the items the stream announced."""

    __slots__ = ("_delta_mid", "_done", "_events", "_head", "_ids", "_items", "_message_id",
                 "_message_start", "_reasoning_sent", "_text_len")

    def __init__(self, head: ResponseHead, *, ids: IdFactory = new_id) -> None:
        self._head = head
        self._ids = ids
        self._events = _Events()
        self._items: list[dict[str, Any]] = []  # finished items, by output_index
        self._reasoning_sent = False
        self._message_id: str | None = None  # the open message item
        self._message_start = 0  # where its text starts in the completion's text
        self._delta_mid = b""
        self._text_len = 0  # characters of answer text rendered so far
        self._done = False

    def opening(self) -> bytes:
        body = self._head.body(IN_PROGRESS, [], None)
        return (self._events.event("response.created", {"response": body})
                + self._events.event("response.in_progress", {"response": body}))

    def keepalive(self, now_ms: int) -> bytes:
        return keepalive_comment(now_ms)

    def render(self, outputs: Iterable[Output], completion: Completion) -> bytes:
        frames: list[bytes] = []
        for output in outputs:
            if self._done:
                break
            if not self._reasoning_sent:
                self._reasoning(completion, frames)
            if isinstance(output, Content):
                if self._message_id is None:
                    self._open_message(frames)
                frames.append(_DELTA_HEAD + self._events.next_seq() + self._delta_mid
                              + orjson.dumps(output.text) + _DELTA_TAIL)
                self._text_len += len(output.text)
            elif isinstance(output, CallOut):
                self._close_message(completion, "completed", frames)
                self._function_call(output.call, frames)
            else:
                self._finish(output, completion, frames)
        return b"".join(frames)

    # ------------------------------------------------------------------------ items

    def _add(self, item: dict[str, Any], frames: list[bytes]) -> int:
        index = len(self._items)
        frames.append(self._events.event("response.output_item.added",
                                         {"output_index": index, "item": item}))
        return index

    def _close(self, index: int, item: dict[str, Any], frames: list[bytes]) -> None:
        self._items.append(item)
        frames.append(self._events.event("response.output_item.done",
                                         {"output_index": index, "item": item}))

    def _reasoning(self, completion: Completion, frames: list[bytes]) -> None:
        self._reasoning_sent = True
        parts = completion.reasoning_text()
        if not parts:
            return
        item_id = self._ids("rs")
        index = self._add(reasoning_item(item_id, None), frames)
        event = self._events.event
        where = {"item_id": item_id, "output_index": index}
        for number, text in enumerate(parts):
            part = {**where, "summary_index": number}
            frames.append(event("response.reasoning_summary_part.added",
                                {**part, "part": {"type": "summary_text", "text": ""}}))
            frames.append(event("response.reasoning_summary_text.delta", {**part, "delta": text}))
            frames.append(event("response.reasoning_summary_text.done", {**part, "text": text}))
            frames.append(event("response.reasoning_summary_part.done",
                                {**part, "part": {"type": "summary_text", "text": text}}))
        self._close(index, reasoning_item(item_id, parts), frames)

    def _open_message(self, frames: list[bytes]) -> None:
        item_id = self._ids("msg")
        index = self._add(message_item(item_id, None, "in_progress"), frames)
        self._message_id = item_id
        self._message_start = self._text_len
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        frames.append(self._events.event("response.content_part.added",
                                         {**where, "part": output_text_part("")}))
        self._delta_mid = b"," + orjson.dumps(where)[1:-1] + b',"delta":'

    def _close_message(self, completion: Completion, status: str, frames: list[bytes]) -> None:
        item_id = self._message_id
        if item_id is None:
            return
        self._message_id = None
        index = len(self._items)
        # The whole text once, from the completion (never rebuilt per delta).
        text = completion.text()[self._message_start:self._text_len]
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        event = self._events.event
        frames.append(event("response.output_text.done", {**where, "text": text,
                                                          "logprobs": []}))
        frames.append(event("response.content_part.done",
                            {**where, "part": output_text_part(text)}))
        self._close(index, message_item(item_id, text, status), frames)

    def _function_call(self, call: ToolCall, frames: list[bytes]) -> None:
        item_id = self._ids("fc")
        index = self._add(function_call_item(item_id, call, "in_progress", ""), frames)
        where = {"item_id": item_id, "output_index": index}
        event = self._events.event
        if call.arguments:
            frames.append(event("response.function_call_arguments.delta",
                                {**where, "delta": call.arguments}))
        frames.append(event("response.function_call_arguments.done",
                            {**where, "arguments": call.arguments}))
        self._close(index, function_call_item(item_id, call, "completed"), frames)

    # ------------------------------------------------------------------------ the end

    def _finish(self, output: Finished | Failed, completion: Completion,
                frames: list[bytes]) -> None:
        self._done = True
        status = status_of(completion)
        if isinstance(output, Finished):
            if self._message_id is None and not completion.calls and not any(
                item["type"] == "message" for item in self._items
            ):
                self._open_message(frames)  # an empty answer is still an (empty) message
            kind = {"completed": "response.completed", "incomplete": "response.incomplete"}[
                status.status]
        else:
            kind = "response.failed"
        self._close_message(completion, status.item_status, frames)
        body = self._head.body(status, self._items, completion.usage())
        frames.append(self._events.event(kind, {"response": body}))
