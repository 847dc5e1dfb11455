"""The trio layer around one completion: child process, stdout reader, timers, outbox.

A :class:`Relay` is started with ``await nursery.start(relay.run)`` in the request's own nursery
(see :mod:`quartproxy.asgi`). ``start`` returns once the child is spawned — or raises
:class:`~quartproxy.child.SpawnError` before any response byte exists, so a missing codex is a
clean 503. From then on everything this request owns lives in that nursery: the stdout reader,
the stderr drain, the keepalive ticker, the deadline scope and the shutdown watcher. However the
request ends — answer, deadline, shutdown, client gone (the nursery is cancelled) — ``run``'s
``finally`` ends and reaps the child under a shield and reports once through ``on_done``.

Protocol decisions are not made here: every stdout read is split into lines, parsed, fed to the
:class:`~quartproxy.completion.Completion`, and whatever frames that produced are rendered and
pushed to the :class:`Outbox` as one piece, which the response body sends as one write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import trio
import trio_util

from . import child, errors
from .child import ExitInfo, Launch, StderrTail
from .completion import Completion, End, Failed, Output
from .lifecycle import Lifecycle
from .protocol import LineBuffer, NotAnEvent, parse_line, submission
from .render import StreamRenderer

log = logging.getLogger("quartproxy.relay")

OUTBOX_HIGH_WATER = 1 << 20
# Once the shutdown deadline has passed, a child that ignores SIGTERM gets this long, not the
# full PROXY_CHILD_KILL_GRACE_MS: the process must exit within grace + 2 s.
SHUTDOWN_KILL_GRACE_S = 0.5


def _is_cancellation(exc: BaseException) -> bool:
    """A trio cancellation, bare or grouped by a nursery (strict exception groups)."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(inner) for inner in exc.exceptions)
    return False


class Outbox:
    """Bytes waiting for the client. Iterating yields everything pending as one chunk.

    The producer never waits for the socket unless more than ``high_water`` bytes are queued,
    and then only before reading more from the child, so a slow client slows the child instead
    of growing memory without bound.
    """

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


@dataclass(frozen=True, slots=True)
class Timing:
    """Per-request timer settings in seconds (0 = off)."""

    total: float
    idle: float
    early_finalize: float
    keepalive: float
    kill_grace: float


class Relay:
    def __init__(
        self,
        *,
        request_id: str,
        prompt: str,
        completion: Completion,
        launch: Launch,
        timing: Timing,
        lifecycle: Lifecycle,
        renderer: StreamRenderer | None,
        on_done: Callable[[Relay], Awaitable[None]],
        background: trio.Nursery | None = None,
        on_line: Callable[[bytes], None] | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.completion = completion
        self.launch = launch
        self.timing = timing
        self.lifecycle = lifecycle
        self.renderer = renderer
        self.outbox: Outbox | None = Outbox() if renderer is not None else None
        self.on_done = on_done
        self.background = background  # set only when a disconnect should not kill the child
        self.on_line = on_line  # proto event log (dev / PROXY_LOG_PROTO)
        self.decided = trio.Event()
        self.stderr = StderrTail()
        self.exit: ExitInfo | None = None
        self.client_gone = False
        self.started_at = trio.current_time()
        self.first_text_at: float | None = None
        self.reads = 0  # stdout reads; each produces at most one outbox piece
        self._lines = LineBuffer()
        self._scope: trio.CancelScope | None = None
        self._last_activity = self.started_at
        self._shutdown_hit = False
        self._tool_deadline = float("inf")  # stop-after-tools burst grace
        self._tool_blocks_seen = 0

    # ------------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        process = await child.spawn(self.launch)
        detached = False
        try:
            task_status.started()
            if self.outbox is not None and self.renderer is not None:
                self.outbox.push(self.renderer.opening())
            await self._drive(process)
        except BaseException as exc:
            if not _is_cancellation(exc):
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt, SystemExit: not ours to swallow
                log.exception("relay failed", extra={"req_id": self.request_id})
                self._deliver(self.completion.abort(errors.internal()))
            elif self.background is not None and not self.completion.done:
                # PROXY_KILL_ON_DISCONNECT=false: let the turn finish so its usage is known.
                detached = True
                self.client_gone = True
                self._close_outbox()
                self.background.start_soon(self._run_detached, process)
                raise
            else:
                raise
        finally:
            if not detached:
                await self._finalize(process)

    async def _run_detached(self, process: trio.Process) -> None:
        try:
            with trio.move_on_at(self._request_deadline()):
                await self._drive(process)
        finally:
            await self._finalize(process)

    async def _finalize(self, process: trio.Process) -> None:
        if not self.completion.done:
            self.client_gone = True
            self.completion.end(End.DISCONNECT)
        self._close_outbox()
        grace = self.timing.kill_grace
        if self.lifecycle.finalize_now.is_set():
            grace = min(grace, SHUTDOWN_KILL_GRACE_S)
        with trio.CancelScope(shield=True):
            self.exit = await child.end(process, grace)
            try:
                await self.on_done(self)
            except Exception:
                log.exception("on_done failed", extra={"req_id": self.request_id})

    def _close_outbox(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
        self.decided.set()

    # ------------------------------------------------------------------------ the pump

    async def _drive(self, process: trio.Process) -> None:
        assert process.stdout is not None and process.stderr is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.stderr.drain, process.stderr)
            if process.stdin is not None and not self.client_gone:
                nursery.start_soon(self._write_submission, process.stdin)
            if self.outbox is not None and self.timing.keepalive > 0 and not self.client_gone:
                nursery.start_soon(self._keepalive)
            nursery.start_soon(self._watch_shutdown)
            cause = await self._read(process.stdout)
            if cause is not None and not self.completion.done:
                self._deliver(self.completion.end(cause))
            nursery.cancel_scope.cancel()

    async def _write_submission(self, stdin: trio.abc.SendStream) -> None:
        try:
            await stdin.send_all(submission(self.request_id, self.prompt))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("child closed stdin early", extra={"req_id": self.request_id})

    async def _read(self, stdout: trio.abc.ReceiveStream) -> End | None:
        """Feed stdout to the completion until it is done (``None``) or a reason to stop."""
        completion = self.completion
        self._scope = scope = trio.CancelScope()
        self._last_activity = trio.current_time()
        self._set_deadline()
        if self.lifecycle.finalize_now.is_set():
            self._shutdown_hit = True
            scope.cancel()
        with scope:
            while True:
                chunk = await stdout.receive_some(65536)
                self.reads += 1
                if not chunk:
                    if self._lines.partial:
                        log.debug("dropped partial last line", extra={"req_id": self.request_id})
                    return End.EOF
                outputs: list[Output] = []
                active = False
                for line in self._lines.feed(bytes(chunk)):
                    if self.on_line is not None:
                        self.on_line(line)
                    try:
                        event = parse_line(line)
                    except NotAnEvent as exc:
                        log.debug("skipped stdout line: %s", exc, extra={"req_id": self.request_id})
                        continue
                    if event is None:
                        continue
                    active = True
                    outputs += completion.feed(event)
                    if completion.done:
                        break
                if active:
                    self._last_activity = trio.current_time()
                    self._arm_tool_grace()
                    self._set_deadline()
                if outputs:
                    self._deliver(outputs)
                if completion.done:
                    return None
                if self.outbox is not None:
                    await self.outbox.wait_writable()
        return self._expired()

    def _deliver(self, outputs: list[Output]) -> None:
        if not outputs:
            return
        if self.first_text_at is None and not isinstance(outputs[0], Failed):
            self.first_text_at = trio.current_time()
        if self.outbox is not None and self.renderer is not None and not self.client_gone:
            self.outbox.push(self.renderer.render(outputs, self.completion))
        if self.completion.done:
            self._close_outbox()

    # ------------------------------------------------------------------------ timers

    def _request_deadline(self) -> float:
        total = self.timing.total
        return self.started_at + total if total > 0 else float("inf")

    def _arm_tool_grace(self) -> None:
        """Burst mode: every newly completed tool block restarts the grace before the cut."""
        tools = self.completion.tools
        blocks = self.completion.tool_blocks
        if tools is not None and tools.stop_after and blocks > self._tool_blocks_seen:
            self._tool_blocks_seen = blocks
            if tools.mode == "burst":
                self._tool_deadline = trio.current_time() + tools.grace_s

    def _deadlines(self) -> list[tuple[float, End]]:
        deadlines = [(self._request_deadline(), End.TIMEOUT), (self._tool_deadline, End.TOOL_CUT)]
        if self.timing.idle > 0:
            deadlines.append((self._last_activity + self.timing.idle, End.IDLE))
        if self.timing.early_finalize > 0 and self.outbox is None and not self.client_gone:
            deadlines.append((self.started_at + self.timing.early_finalize, End.EARLY_FINALIZE))
        return deadlines

    def _set_deadline(self) -> None:
        if self._scope is not None:
            self._scope.deadline = min(deadline for deadline, _ in self._deadlines())

    def _expired(self) -> End:
        if self._shutdown_hit:
            return End.SHUTDOWN
        now = trio.current_time()
        passed = [(deadline, cause) for deadline, cause in self._deadlines() if deadline <= now]
        return min(passed, key=lambda item: item[0])[1] if passed else End.TIMEOUT

    async def _keepalive(self) -> None:
        assert self.outbox is not None
        first = True
        async for _ in trio_util.periodic(self.timing.keepalive):
            if first:
                first = False
                continue
            self.outbox.push(StreamRenderer.keepalive(int(time.time() * 1000)))

    async def _watch_shutdown(self) -> None:
        await self.lifecycle.finalize_now.wait()
        self._shutdown_hit = True
        if self._scope is not None:
            self._scope.cancel()
