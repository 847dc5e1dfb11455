"""The `codex proto` wire format, sans-io.

Bytes from the child's stdout go in; typed events come out. Nothing here touches a process or a
socket, so every quirk of every codex version is unit-tested from captured bytes:

* the envelope is ``{"id": <submission id>, "msg": {"type": ..., ...}}``; the older fake shape
  ``{"type": ..., "msg": {...}}`` is accepted too;
* blank lines are skipped, non-JSON lines are skipped (the caller logs them), a partial last line
  at EOF is dropped (the child died mid-write; half an event is no event);
* ``token_count`` comes in three real shapes (flat in 0.8–0.29, nested under
  ``info.total_token_usage`` from 0.34, plus ``info: null`` announcements in 0.42) and one shape
  from the original product's fakes (``prompt_tokens``/``completion_tokens``); we read all of them
  and never invent a number that is not there;
* ``error`` messages are classified into an :class:`~quartproxy.events.ErrorKind` from their
  text (proto has no structured error info): a usage limit, an exhausted 429 retry budget or a
  rate-limit message, and a context-window overflow each get the HTTP status a client expects.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

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
    Retry,
    SessionConfigured,
    TaskComplete,
    TokenCount,
    TurnAborted,
)

# --------------------------------------------------------------------------------------------
# Line splitting


MAX_LINE_BYTES = 64 * 1024 * 1024


class LineBuffer:
    """Splits a byte stream into complete lines; a trailing partial line waits for more bytes.

    Joining happens only when a line spans reads, so a long stream costs O(bytes), not O(n^2).
    A line longer than ``max_line`` (no real event comes close) is dropped as it streams in,
    so a runaway child cannot grow the buffer without bound.
    """

    __slots__ = ("_max", "_pending", "_size", "_skipping", "dropped")

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._pending: list[bytes] = []
        self._size = 0
        self._max = max_line
        self._skipping = False
        self.dropped = 0  # over-long lines thrown away

    def feed(self, data: bytes) -> list[bytes]:
        if b"\n" not in data:
            if data and not self._skipping:
                self._pending.append(data)
                self._size += len(data)
                if self._size > self._max:
                    self._pending, self._size, self._skipping = [], 0, True
                    self.dropped += 1
            return []
        lines = data.split(b"\n")
        if self._skipping:
            lines[0] = b""  # the end of the over-long line
            self._skipping = False
        elif self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending, self._size = [], 0
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
            self._size = len(tail)
        return lines

    @property
    def partial(self) -> bytes:
        """What is left at EOF: an incomplete line that will be dropped."""
        return b"".join(self._pending)


# --------------------------------------------------------------------------------------------
# Parsing


class NotAnEvent(ValueError):
    """A stdout line that is not a proto event (logged at debug by the caller, then skipped)."""


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _counts_from(fields: dict[str, Any]) -> Counts | None:
    counts = Counts(
        input_tokens=_int(fields.get("input_tokens")),
        output_tokens=_int(fields.get("output_tokens")),
        cached_input_tokens=_int(fields.get("cached_input_tokens")),
        reasoning_output_tokens=_int(fields.get("reasoning_output_tokens")),
    )
    if counts.input_tokens is None and counts.output_tokens is None:
        return None
    return counts


def parse_token_count(msg: dict[str, Any]) -> Counts | None:
    if "info" in msg:
        info = msg["info"]
        if not isinstance(info, dict):
            return None  # 0.42 announces a response with info:null before usage is known
        for key in ("total_token_usage", "last_token_usage"):
            usage = info.get(key)
            if isinstance(usage, dict):
                return _counts_from(usage)
        return None
    flat = _counts_from(msg)
    if flat is not None:
        return flat
    prompt, completion = _int(msg.get("prompt_tokens")), _int(msg.get("completion_tokens"))
    if prompt is None and completion is None:
        return None
    return Counts(input_tokens=prompt, output_tokens=completion)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


_USAGE_LIMIT_RE = re.compile(r"usage limit|usage_limit_reached|insufficient_quota", re.I)
_CONTEXT_RE = re.compile(r"context_length_exceeded|context window", re.I)
_RATE_RE = re.compile(r"\b429\b|rate limit reached|rate_limit_exceeded", re.I)


def classify_error(message: str) -> ErrorKind:
    """The kind of a proto ``error`` message (the captured texts of 0.8–0.42)."""
    if _USAGE_LIMIT_RE.search(message):
        return ErrorKind.USAGE_LIMIT
    if _CONTEXT_RE.search(message):
        return ErrorKind.CONTEXT_WINDOW
    if _RATE_RE.search(message):
        return ErrorKind.RATE_LIMIT
    return ErrorKind.OTHER


def parse_line(line: bytes) -> Event | None:
    """One stdout line to an event; ``None`` for a blank line; :class:`NotAnEvent` for junk."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if not line.strip():  # looked at only here: stripping every line costs a copy each
            return None
        raise NotAnEvent(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise NotAnEvent("not a JSON object")
    msg = obj.get("msg")
    if not isinstance(msg, dict):
        msg = obj
    kind = msg.get("type")
    if kind == "agent_message_delta":  # nearly every line of a stream: answered here
        delta = msg.get("delta")
        return Delta(delta if isinstance(delta, str) else "")
    if not isinstance(kind, str):
        kind = obj.get("type")
    if not isinstance(kind, str):
        raise NotAnEvent("no event type")
    return _event(kind, msg)


def _event(kind: str, msg: dict[str, Any]) -> Event:
    if kind == "agent_message_delta":
        return Delta(_text(msg.get("delta")))
    if kind == "agent_message":
        return Message(_text(msg.get("message")))
    if kind == "token_count":
        counts = parse_token_count(msg)
        flat = "info" not in msg and _int(msg.get("input_tokens")) is not None
        return TokenCount(counts, cumulative=not flat)
    if kind in ("stream_error", "background_event"):
        return Retry(_text(msg.get("message")))
    if kind == "error":
        message = _text(msg.get("message"))
        return Error(message, classify_error(message))
    if kind == "task_complete":
        last = msg.get("last_agent_message")
        reason = msg.get("finish_reason")
        return TaskComplete(
            last if isinstance(last, str) else None,
            reason if isinstance(reason, str) else None,
        )
    if kind == "turn_aborted":
        return TurnAborted(_text(msg.get("reason")))
    if kind == "session_configured":
        return SessionConfigured()
    if kind == "agent_reasoning_section_break":
        return ReasoningPart()
    if kind == "agent_reasoning_delta":
        return ReasoningDelta(_text(msg.get("delta")))
    return Other(kind)


# --------------------------------------------------------------------------------------------
# What we send


def submission(request_id: str, prompt: str) -> bytes:
    """The one ``user_input`` line a child ever gets (a second one corrupts codex's turn)."""
    return orjson.dumps(
        {
            "id": request_id,
            "op": {"type": "user_input", "items": [{"type": "text", "text": prompt}]},
        }
    ) + b"\n"
