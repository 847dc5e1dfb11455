"""Renderings of a :class:`~quartproxy.completion.Completion`: SSE frames and JSON bodies.

Chunk envelopes are built once per stream as byte prefixes/suffixes, so a content frame costs one
``orjson.dumps`` of the text and a join — the hot path of a long stream. All frames produced for
one batch of outputs are returned as one ``bytes`` so the caller makes one socket write per batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from .completion import CallOut, Completion, Content, Failed, Finished, Output

DONE = b"data: [DONE]\n\n"


class Renderer(Protocol):
    """Turns completion outputs into the bytes of one SSE response (chat, legacy, Responses)."""

    def opening(self) -> bytes:
        """What is sent as soon as the turn has started (fast first byte)."""

    def render(self, outputs: Iterable[Output], completion: Completion) -> bytes:
        """All frames for one batch of outputs, as one piece (one socket write)."""

    def keepalive(self, now_ms: int) -> bytes:
        """An SSE comment that keeps idle connections alive; never an event."""


class StreamRenderer:
    """SSE frames for one chat (``legacy=False``) or legacy text-completion stream."""

    __slots__ = ("_content_close", "_content_open", "_end", "_prefix", "include_usage", "legacy")

    def __init__(
        self, *, legacy: bool, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self.legacy = legacy
        self.include_usage = include_usage
        obj = "text_completion" if legacy else "chat.completion.chunk"
        self._prefix = (
            b'data: {"id":' + orjson.dumps(completion_id)
            + b',"object":"' + obj.encode() + b'","created":' + str(created).encode()
            + b',"model":' + orjson.dumps(model) + b',"system_fingerprint":null,"choices":['
        )
        self._end = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        if legacy:
            self._content_open = self._prefix + b'{"index":0,"text":'
        else:
            self._content_open = self._prefix + b'{"index":0,"delta":{"content":'
        self._content_close = (
            b',"logprobs":null,"finish_reason":null}' if legacy
            else b'},"logprobs":null,"finish_reason":null}'
        ) + self._end

    def opening(self) -> bytes:
        """The role chunk a chat stream starts with; legacy streams have none."""
        if self.legacy:
            return b""
        return (
            self._prefix
            + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
            b'"finish_reason":null}'
            + self._end
        )

    def render(self, outputs: Iterable[Output], completion: Completion) -> bytes:
        frames: list[bytes] = []
        for output in outputs:
            if isinstance(output, Content):
                frames.append(self._content_open + orjson.dumps(output.text) + self._content_close)
            elif isinstance(output, CallOut):
                if not self.legacy:
                    frames.append(self._tool_call(output))
            elif isinstance(output, Finished):
                frames.append(self._finish(output.reason))
                if self.include_usage:
                    frames.append(
                        self._prefix + b'],"usage":' + orjson.dumps(completion.usage().openai())
                        + b"}\n\n"
                    )
                frames.append(DONE)
            elif isinstance(output, Failed):
                frames.append(b"data: " + output.error.body() + b"\n\n")
                frames.append(DONE)
        return b"".join(frames)

    def _finish(self, reason: str) -> bytes:
        reason_json = orjson.dumps(reason)
        if self.legacy:
            choice = b'{"index":0,"text":"","logprobs":null,"finish_reason":' + reason_json + b"}"
        else:
            choice = b'{"index":0,"delta":{},"logprobs":null,"finish_reason":' + reason_json + b"}"
        return self._prefix + choice + self._end

    def _tool_call(self, output: CallOut) -> bytes:
        """A call as OpenAI streams it: a header chunk (id, type, name, empty arguments), then
        the arguments (codex hands over complete calls, so they come in one piece)."""
        call = output.call
        index = str(output.index).encode()
        head = {"index": output.index, "id": call.call_id, "type": "function",
                "function": {"name": call.name, "arguments": ""}}
        return (
            self._prefix + b'{"index":0,"delta":{"tool_calls":[' + orjson.dumps(head)
            + b']},"logprobs":null,"finish_reason":null}' + self._end
            + self._prefix + b'{"index":0,"delta":{"tool_calls":[{"index":' + index
            + b',"function":{"arguments":' + orjson.dumps(call.arguments)
            + b'}}]},"logprobs":null,"finish_reason":null}' + self._end
        )

    def keepalive(self, now_ms: int) -> bytes:
        return keepalive_comment(now_ms)


def keepalive_comment(now_ms: int) -> bytes:
    return b": keepalive " + str(now_ms).encode() + b"\n\n"


def tool_calls_json(completion: Completion) -> list[dict[str, Any]]:
    return [
        {"id": call.call_id, "type": "function",
         "function": {"name": call.name, "arguments": call.arguments}}
        for call in completion.calls
    ]


def json_body(
    completion: Completion, *, legacy: bool, completion_id: str, created: int, model: str
) -> dict[str, Any]:
    """The non-stream answer; only valid once the completion has a :class:`Finished` outcome."""
    reason = completion.finish_reason or "stop"
    text = completion.text()
    choice: dict[str, Any]
    if legacy:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    else:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if completion.calls:
            message["content"] = text or None
            message["tool_calls"] = tool_calls_json(completion)
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
    return {
        "id": completion_id,
        "object": "text_completion" if legacy else "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [choice],
        "usage": completion.usage().openai(),
    }
