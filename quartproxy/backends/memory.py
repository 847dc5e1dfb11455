"""A scripted backend, the counterpart of httpx's ``MockTransport``.

Each turn plays a script: batches of events, pauses, and how it ends (the backend falls
silent, goes away, or hangs until cancelled). Pauses are ``trio.sleep``, so under trio's
``MockClock`` with ``autojump_threshold=0`` every timer of the relay — idle, total, early
finalize, tool burst, keepalive, shutdown — is tested deterministically in zero wall time,
with no process and no socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ..completion import End
from ..events import Event
from .base import BackendUnavailable, Capabilities, TurnDiagnostics, TurnRequest


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class Hang:
    """The backend stays silent until the turn is ended from outside."""


Step = Event | list[Event] | Pause | Hang
Script = Sequence[Step] | Callable[[TurnRequest], Sequence[Step]]


class MemoryTurn:
    def __init__(self, steps: Sequence[Step], end: End | None) -> None:
        self._steps = list(steps)
        self._index = 0
        self.diagnostics = TurnDiagnostics()
        self.end = end
        self.closed = False

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self

    async def __anext__(self) -> list[Event]:
        # Every step is a checkpoint, as reading a pipe or a channel is: a turn whose scope is
        # already cancelled (shutdown before the first event) gets no event through.
        await trio.lowlevel.checkpoint()
        while self._index < len(self._steps):
            step = self._steps[self._index]
            self._index += 1
            if isinstance(step, Pause):
                await trio.sleep(step.seconds)
            elif isinstance(step, Hang):
                await trio.sleep_forever()
            elif isinstance(step, list):
                return step
            else:
                return [step]
        raise StopAsyncIteration


@dataclass
class MemoryBackend:
    script: Script
    end: End | None = None  # what iteration's end means (None: End.EOF)
    unavailable: str | None = None  # open_turn raises BackendUnavailable with this
    capabilities: Capabilities = field(default_factory=lambda: Capabilities(name="memory"))
    opened: list[TurnRequest] = field(default_factory=list)
    turns: list[MemoryTurn] = field(default_factory=list)
    open_now: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def aclose(self) -> None:
        """Nothing long-lived to end."""

    def readiness(self) -> list[str]:
        return [self.unavailable] if self.unavailable else []

    @asynccontextmanager
    async def open_turn(self, request: TurnRequest) -> AsyncIterator[MemoryTurn]:
        if self.unavailable:
            raise BackendUnavailable(self.unavailable)
        await trio.lowlevel.checkpoint()
        steps = self.script(request) if callable(self.script) else self.script
        turn = MemoryTurn(steps, self.end)
        self.opened.append(request)
        self.turns.append(turn)
        self.open_now += 1
        try:
            yield turn
        finally:
            self.open_now -= 1
            turn.closed = True
