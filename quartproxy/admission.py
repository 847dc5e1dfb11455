"""Admission control: concurrency slots (streams and all children) taken before a response starts.

A slot is taken synchronously — no checkpoint between the check and the increment — so two
requests racing for the last slot cannot both win, and the second stream at the limit gets 429
every time. :class:`Slot` releases at most once, so every exit path may call ``release()``
without double counting.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from . import errors
from .config import Settings


@dataclass(slots=True)
class Counts:
    streams: int = 0
    children: int = 0


class Slot:
    __slots__ = ("_admission", "_released", "stream")

    def __init__(self, admission: Admission, stream: bool) -> None:
        self._admission = admission
        self.stream = stream
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self.stream)


class Admission:
    def __init__(self, settings: Settings) -> None:
        self.stream_limit = settings.sse_max_concurrency
        self.child_limit = settings.max_concurrency
        self.queue_timeout_s = settings.queue_timeout_ms / 1000
        self.counts = Counts()
        self.rejections: dict[str, int] = {}
        self._changed = trio.Event()

    def _blocked(self, stream: bool) -> ApiErrorKind | None:
        if self.child_limit and self.counts.children >= self.child_limit:
            return ("children", self.child_limit)
        if stream and self.stream_limit and self.counts.streams >= self.stream_limit:
            return ("streams", self.stream_limit)
        return None

    def try_acquire(self, stream: bool) -> Slot | None:
        if self._blocked(stream) is not None:
            return None
        self.counts.children += 1
        if stream:
            self.counts.streams += 1
        return Slot(self, stream)

    async def acquire(self, stream: bool) -> Slot:
        """A slot now, or after waiting up to PROXY_QUEUE_TIMEOUT_MS, or 429."""
        slot = self.try_acquire(stream)
        if slot is None and self.queue_timeout_s > 0:
            with trio.move_on_after(self.queue_timeout_s):
                while slot is None:
                    await self._changed.wait()
                    slot = self.try_acquire(stream)
        if slot is None:
            blocked = self._blocked(stream) or ("children", self.child_limit)
            self.rejections[blocked[0]] = self.rejections.get(blocked[0], 0) + 1
            raise errors.concurrency_exceeded(*blocked)
        return slot

    def _release(self, stream: bool) -> None:
        self.counts.children -= 1
        if stream:
            self.counts.streams -= 1
        self._changed.set()
        self._changed = trio.Event()


ApiErrorKind = tuple[str, int]
