"""The trio layer around one turn: backend events in, SSE bytes (or a decision) out.

A :class:`Relay` is started with ``await nursery.start(relay.run)``. ``start`` returns once the
backend has started the turn — or raises :class:`~quartproxy.backends.base.BackendUnavailable`
before any response byte exists, so an unusable codex is a clean 503. From then on the relay
feeds every batch of events to the :class:`~quartproxy.completion.Completion` and pushes what
that produced, rendered, to the :class:`Outbox` as one piece, which the response body sends as
one write. Its keepalive timer lives in a nursery inside :meth:`run`; the drain deadline reaches
it as a callback (:meth:`~quartproxy.lifecycle.Lifecycle.on_finalize`), not a task.

Nothing here decides what the client gets: the completion decides content and endings, the
:class:`~quartproxy.timers.TurnClock` decides when a turn is cut, the renderer decides bytes.
However the request ends — answer, deadline, shutdown, the client gone (the nursery is
cancelled) — leaving the backend's ``open_turn`` ends the turn under a shield, and ``on_done``
reports it exactly once, after that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import trio
import trio_util

from . import errors
from .backends.base import Backend, Turn, TurnRequest
from .completion import CallOut, Completion, Content, End, Output
from .lifecycle import Lifecycle
from .render import Renderer
from .timers import TurnClock

log = logging.getLogger("quartproxy.relay")

OUTBOX_HIGH_WATER = 1 << 20


class Outbox:
    """Bytes waiting for the client. Iterating yields everything pending as one chunk.

    The producer never waits for the socket unless more than ``high_water`` bytes are queued,
    and then only before taking the next batch from the backend, so a slow client slows its
    own turn (proto: its own child; app-server: the turn's buffer, which has its own cap)
    instead of growing memory without bound.
    """

    __slots__ = ("_closed", "_high_water", "_parts", "_readable", "_size", "_writable")

    def __init__(self, high_water: int = OUTBOX_HIGH_WATER) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._closed = False
        self._high_water = high_water
        self._readable = trio.Event()
        self._writable = trio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, data: bytes) -> None:
        if data and not self._closed:
            self._parts.append(data)
            self._size += len(data)
            self._readable.set()

    def close(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()

    async def wait_writable(self) -> None:
        while self._size > self._high_water and not self._closed:
            self._writable = trio.Event()
            await self._writable.wait()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while not self._parts:
            if self._closed:
                raise StopAsyncIteration
            self._readable = trio.Event()
            await self._readable.wait()
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        self._size = 0
        self._writable.set()
        return data


def _only_cancellations(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False


class Relay:
    def __init__(
        self,
        *,
        backend: Backend,
        request: TurnRequest,
        completion: Completion,
        clock: TurnClock,
        lifecycle: Lifecycle,
        renderer: Renderer | None,
        on_open: Callable[[Relay], None] | None = None,
        on_done: Callable[[Relay], Awaitable[None]] | None = None,
        on_keepalive: Callable[[], None] | None = None,
    ) -> None:
        self.backend = backend
        self.request = request
        self.completion = completion
        self.clock = clock
        self.lifecycle = lifecycle
        self.renderer = renderer
        self.outbox: Outbox | None = Outbox() if renderer is not None else None
        self.on_open = on_open
        self.on_done = on_done
        self.on_keepalive = on_keepalive
        self.decided = trio.Event()  # the completion has its outcome (or the client left)
        self.finished = trio.Event()  # the turn is over and on_done has run
        self.turn: Turn | None = None
        self.client_gone = False
        self.started_at = clock.started_at
        self.first_text_at: float | None = None
        self.batches = 0  # batches taken from the backend; each makes at most one outbox piece
        self._scope: trio.CancelScope | None = None
        self._shutdown_hit = False

    # ------------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        opened = False
        try:
            async with self.backend.open_turn(self.request) as turn:
                self.turn = turn
                opened = True
                if self.on_open is not None:
                    self.on_open(self)
                task_status.started()
                if self.outbox is not None and self.renderer is not None:
                    self.outbox.push(self.renderer.opening())
                try:
                    await self._pump(turn)
                except BaseException as exc:
                    if _only_cancellations(exc) or not isinstance(exc, Exception):
                        raise
                    log.exception("relay failed", extra={"req_id": self.request.request_id})
                    self._deliver(self.completion.abort(errors.internal()))
        finally:
            if opened:
                with trio.CancelScope(shield=True):
                    await self._finish()

    async def _finish(self) -> None:
        if not self.completion.done:
            self.client_gone = True
            self.completion.end(End.DISCONNECT)
        self._close_outbox()
        try:
            if self.on_done is not None:
                await self.on_done(self)
        except Exception:
            log.exception("on_done failed", extra={"req_id": self.request.request_id})
        finally:
            self.finished.set()

    def client_left(self) -> None:
        """The HTTP side went away but the turn goes on (``PROXY_KILL_ON_DISCONNECT=false``)."""
        if self.completion.done or self.client_gone:
            return
        self.client_gone = True
        self.clock.client_left()
        self._close_outbox()
        if self._scope is not None:
            self._scope.deadline = self.clock.deadline()

    def _close_outbox(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
        self.decided.set()

    # ------------------------------------------------------------------------ the pump

    async def _pump(self, turn: Turn) -> None:
        unregister = self.lifecycle.on_finalize(self._finalize_now)
        try:
            if self.outbox is not None and self.clock.timing.keepalive > 0:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keepalive)
                    await self._read_and_end(turn)
                    nursery.cancel_scope.cancel()
            else:  # no helper task: no nursery (the request path's common case)
                await self._read_and_end(turn)
        finally:
            unregister()

    async def _read_and_end(self, turn: Turn) -> None:
        cause = await self._read(turn)
        if cause is not None and not self.completion.done:
            self._deliver(self.completion.end(cause))

    async def _read(self, turn: Turn) -> End | None:
        """Feed the turn's events to the completion until it is done (``None``) or a reason to
        stop.

        trio can hand a read its data and notice the passed deadline in the same scheduling
        round (a stalled process: both happened while it did not run). That batch is still
        activity and moves the deadline, so a cancellation after which no deadline has passed
        is stale: reading goes on under a fresh scope. Turns are cancel-safe iterators (a
        cancelled read loses nothing), so this is the same iteration continued.
        """
        completion = self.completion
        clock = self.clock
        while True:
            self._scope = scope = trio.CancelScope(deadline=clock.deadline())
            if self.lifecycle.finalize_now.is_set():
                self._shutdown_hit = True
                scope.cancel()
            with scope:
                async for batch in turn:
                    self.batches += 1
                    outputs = completion.feed_batch(batch)
                    if batch:
                        clock.activity(trio.current_time(), completion.tool_blocks)
                        scope.deadline = clock.deadline()
                    if outputs:
                        self._deliver(outputs)
                    if completion.done:
                        return None
                    if self.outbox is not None:
                        await self.outbox.wait_writable()
                return turn.end or End.EOF
            if self._shutdown_hit:
                return End.SHUTDOWN
            cause = clock.expired(trio.current_time())
            if cause is not None:
                return cause

    def _deliver(self, outputs: list[Output]) -> None:
        if not outputs:
            return
        if self.first_text_at is None and any(
            isinstance(output, Content | CallOut) for output in outputs
        ):
            self.first_text_at = trio.current_time()
        if self.outbox is not None and self.renderer is not None and not self.client_gone:
            self.outbox.push(self.renderer.render(outputs, self.completion))
        if self.completion.done:
            self._close_outbox()

    # ------------------------------------------------------------------------ timers

    async def _keepalive(self) -> None:
        assert self.outbox is not None and self.renderer is not None
        first = True
        async for _ in trio_util.periodic(self.clock.timing.keepalive):
            if first:
                first = False
                continue
            if not self.client_gone:
                self.outbox.push(self.renderer.keepalive(int(time.time() * 1000)))
                if self.on_keepalive is not None:
                    self.on_keepalive()

    def _finalize_now(self) -> None:
        """The drain deadline passed (a :meth:`Lifecycle.on_finalize` callback): stop reading."""
        self._shutdown_hit = True
        if self._scope is not None:
            self._scope.cancel()
