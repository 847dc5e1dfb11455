"""The backend seam: one small interface between the request path and codex.

The request path (:mod:`quartproxy.relay`, :mod:`quartproxy.service`) talks only to this:

* :meth:`Backend.open_turn` starts one turn for one request and is an async context manager.
  Entering it either yields a :class:`Turn` or raises :class:`BackendUnavailable` before any
  response byte exists (the route answers 503). Leaving it always ends the turn — the proto
  child is ended and reaped, the app-server thread is deleted — under a shield and within a
  bound, however the request ended.
* Iterating a :class:`Turn` yields *batches* of :mod:`~quartproxy.events`: every event that was
  ready at once. Iteration ends when the backend has nothing more to say for this turn (the
  child's stdout closed, the worker died): the relay's ``End.EOF``.

Three implementations, as httpx has transports: :mod:`.proto` (one ``codex proto`` child per
turn), :mod:`.appserver` (threads on long-lived ``codex app-server`` workers) and
:mod:`.memory` (scripted, for tests under trio's ``MockClock``). Nothing above this seam knows
which one it talks to; what differs is declared in :class:`Capabilities`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ..completion import End
from ..conversation import Conversation, ToolRequest
from ..events import Event


class BackendUnavailable(Exception):
    """Nothing was started; ``str(exc)`` tells the client (503) and the operator why."""

    def __init__(self, message: str, *, code: str = "backend_unavailable") -> None:
        super().__init__(message)
        self.code = code


class BackendRejected(Exception):
    """codex refused the request itself (e.g. a tool definition): the client's 400."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """Everything a backend needs for one turn; every value is already validated."""

    request_id: str
    conversation: Conversation
    model: str  # the effective model codex gets (whitelisted)
    effort: str | None = None
    tools: ToolRequest | None = None  # native function calling (app-server 0.169+ only)
    output_schema: dict[str, Any] | None = None  # structured output (app-server only)

    @property
    def prompt(self) -> str:
        """The conversation flattened to one text prompt (proto, reduced app-server)."""
        return self.conversation.flatten()


@dataclass(slots=True)
class TurnDiagnostics:
    """Facts for logs and metrics only; never shown to clients."""

    exit_cause: str | None = None  # proto: exited | sigterm | sigkill | spawn_failed
    returncode: int | None = None
    stderr_tail: str = ""
    died_early: bool = False  # the process ended on its own before the turn finished
    worker: str | None = None  # app-server: worker id
    thread_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do beyond plain text turns, and why not when it cannot."""

    name: str  # "proto" | "app-server" | "memory"
    version: str | None = None  # codex version when known
    tools: bool = False
    tools_reason: str = ""  # the 400 message when tools are asked for and not supported
    output_schema: bool = False


class Turn(Protocol):
    diagnostics: TurnDiagnostics
    # Why iteration stopped when the backend knows better than "it stopped talking" (End.EOF):
    # the app-server worker died (End.WORKER_EXIT), or a slow client overflowed the turn's
    # buffer (End.OVERFLOW). None otherwise.
    end: End | None

    def __aiter__(self) -> AsyncIterator[list[Event]]: ...


class Backend(Protocol):
    @property
    def capabilities(self) -> Capabilities: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the long-lived parts (directories, the worker pool) for the server's lifetime;
        ``task_status.started()`` once requests may be served."""

    def open_turn(self, request: TurnRequest) -> AbstractAsyncContextManager[Turn]:
        """Start one turn (see the module docstring for the contract)."""

    def readiness(self) -> list[str]:
        """Why the backend cannot take a turn now; ``[]`` when it can."""

    async def aclose(self) -> None:
        """After the last request: end the long-lived parts gracefully, within a bound."""
