"""What a backend tells the completion state machine, whatever wire it came from.

Both backends translate their own wire format into these events: the proto codec
(:mod:`quartproxy.backends.proto.codec`) from ``codex proto`` lines, the app-server codec
(:mod:`quartproxy.backends.appserver.codec`) from JSON-RPC notifications routed to one thread.
:class:`~quartproxy.completion.Completion` consumes only these, so every rule about content,
retries, finish_reason and usage is written once and holds on every backend.

Events are small frozen values; a backend hands them over in *batches* (every event that was
ready at once), which is what lets the relay answer a burst with one socket write.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Counts:
    """Token counts as codex reported them; ``None`` means codex did not say."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None


class ErrorKind(enum.Enum):
    """What kind of failure codex reported; decides the HTTP answer when no text was sent."""

    OTHER = "other"  # 502 backend_error
    USAGE_LIMIT = "usage_limit"  # 429 insufficient_quota
    RATE_LIMIT = "rate_limit"  # 429 rate_limit_exceeded
    CONTEXT_WINDOW = "context_window"  # 400 context_length_exceeded


@dataclass(frozen=True, slots=True)
class SessionConfigured:
    pass


@dataclass(frozen=True, slots=True, init=False)
class Delta:
    """Answer text of the current attempt.

    Made once per streamed word, so its ``__init__`` writes the slot through its descriptor:
    a frozen dataclass's own ``__init__`` goes through ``object.__setattr__`` and costs about
    half as much again. It stays frozen to everyone else.
    """

    text: str

    def __init__(self, text: str) -> None:
        _set_delta_text(self, text)


_set_delta_text: Callable[[Delta, str], None] = Delta.__dict__["text"].__set__


@dataclass(frozen=True, slots=True)
class Message:
    """The full text of one assistant message (normally its deltas joined)."""

    text: str


@dataclass(frozen=True, slots=True)
class TokenCount:
    counts: Counts | None
    # True for totals of the whole turn (proto 0.34+ ``total_token_usage``, app-server
    # ``tokenUsage.total``), which replace earlier counts; False for one model response's usage
    # (flat proto 0.8–0.29), which add up when a tool call makes a turn span several responses.
    cumulative: bool = True


@dataclass(frozen=True, slots=True)
class Retry:
    """codex abandoned the current model attempt and starts again from the beginning."""

    message: str


@dataclass(frozen=True, slots=True)
class Error:
    message: str
    kind: ErrorKind = ErrorKind.OTHER


@dataclass(frozen=True, slots=True)
class TaskComplete:
    last_message: str | None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class TurnAborted:
    reason: str


@dataclass(frozen=True, slots=True)
class ReasoningPart:
    """A new reasoning summary part starts (proto section break, app-server part added)."""


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Reasoning summary text: shown as a reasoning item by the Responses API, never as answer
    text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete function call to one of the client's declared tools, from *this* turn.

    ``arguments`` is the model's own argument string, byte for byte.
    """

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """One model response ended (app-server ``rawResponse/completed``), with its own usage.

    With client tool calls collected, this is where the turn finishes (``tool_calls``): codex
    waits for their answers and sends nothing else.
    """

    counts: Counts | None


@dataclass(frozen=True, slots=True)
class Other:
    """Any event that is not answer text: tool activity, bookkeeping, unknown types."""

    type: str


Event = (
    SessionConfigured
    | Delta
    | Message
    | TokenCount
    | Retry
    | Error
    | TaskComplete
    | TurnAborted
    | ReasoningPart
    | ReasoningDelta
    | ToolCall
    | ResponseDone
    | Other
)
