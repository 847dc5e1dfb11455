"""When a turn must be cut, sans-io: the one place that knows every per-request deadline.

The relay asks :meth:`TurnClock.deadline` after every batch of events and sleeps (a trio cancel
scope deadline) until then; when the scope expires it asks :meth:`TurnClock.expired` *why*. No
timer runs on its own, so the rules are plain code, tested with numbers instead of sleeps:

1. ``total``: the whole request (``PROXY_TIMEOUT_MS``), from the start of the turn.
2. ``idle``: no backend event for that long (stream and non-stream have their own settings).
   Only events count as activity: not stderr, not keepalives.
3. ``early_finalize`` (``PROXY_NONSTREAM_TRUNCATE_AFTER_MS``) applies to non-stream requests
   only, and not once the client has gone (nobody is waiting for the early answer).
4. Stop-after-tools in ``burst`` mode: every newly completed tool block restarts a grace; when it
   runs out the turn is cut (``End.TOOL_CUT``).
5. When several deadlines passed at once, the earliest one is the cause.
"""

from __future__ import annotations

from dataclasses import dataclass

from .completion import End
from .toolblocks import ToolPolicy

NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class Timing:
    """Per-request timer settings in seconds (0 = off)."""

    total: float
    idle: float
    early_finalize: float
    keepalive: float


class TurnClock:
    def __init__(
        self, timing: Timing, *, stream: bool, started_at: float, tools: ToolPolicy | None = None
    ) -> None:
        self.timing = timing
        self.stream = stream
        self.started_at = started_at
        self.last_activity = started_at
        self.tools = tools if tools is not None and tools.stop_after else None
        self.client_gone = False
        self._tool_deadline = NEVER
        self._tool_blocks = 0

    def activity(self, now: float, tool_blocks: int = 0) -> None:
        """Events arrived at ``now``; ``tool_blocks`` is the completion's complete-block count."""
        self.last_activity = now
        if self.tools is not None and tool_blocks > self._tool_blocks:
            self._tool_blocks = tool_blocks
            if self.tools.mode == "burst":
                self._tool_deadline = now + self.tools.grace_s

    def client_left(self) -> None:
        self.client_gone = True

    def request_deadline(self) -> float:
        total = self.timing.total
        return self.started_at + total if total > 0 else NEVER

    def _deadlines(self) -> list[tuple[float, End]]:
        deadlines = [(self.request_deadline(), End.TIMEOUT), (self._tool_deadline, End.TOOL_CUT)]
        if self.timing.idle > 0:
            deadlines.append((self.last_activity + self.timing.idle, End.IDLE))
        if self.timing.early_finalize > 0 and not self.stream and not self.client_gone:
            deadlines.append((self.started_at + self.timing.early_finalize, End.EARLY_FINALIZE))
        return deadlines

    def deadline(self) -> float:
        return min(deadline for deadline, _ in self._deadlines())

    def expired(self, now: float) -> End | None:
        """The cause of the earliest deadline that has passed at ``now``, if any."""
        passed = [(deadline, cause) for deadline, cause in self._deadlines() if deadline <= now]
        return min(passed, key=lambda item: item[0])[1] if passed else None
