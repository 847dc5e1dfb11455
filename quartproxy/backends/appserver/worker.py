"""One ``codex app-server`` process: its reader, its writer, its calls and its threads' routes.

A worker carries many requests at once over one stdin/stdout pair, so its I/O follows three
rules that keep one request from hurting the others:

1. **One reader, never blocked.** A single task reads stdout all the time and routes each
   notification by ``threadId`` into that thread's :class:`ThreadRoute` — a buffer it appends to
   without waiting. Translation into events happens later, in the request's own task. A slow
   HTTP client therefore never stalls the reader; its own buffer grows instead, and when that
   passes ``PROXY_TURN_BUFFER_BYTES`` its turn alone is cut (``End.OVERFLOW``; the request ends
   like any other cut: ``length`` with text in hand) and its thread deleted. Notifications for
   threads no request owns (late ones after a request ended) and process-wide ones are dropped.
2. **One writer.** Every line to stdin goes through one queue drained by one task, a whole line
   per write, so lines never interleave and nobody waits on a full pipe while holding anything.
3. **Every call has a timeout.** codex answers nothing to a line it cannot parse, so a call that
   gets no answer fails on its own; two timeouts in a row, or a failed health probe, mark the
   worker unhealthy and it is ended (its requests end as ``End.WORKER_EXIT``) and replaced.

Server requests are answered at once (approvals declined, unknown methods refused), except a
client tool call on a tool thread, which stays unanswered: the request finishes with
``tool_calls`` and deleting the thread cancels the call.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ...completion import End
from ...events import Event
from ..base import TurnDiagnostics
from ..process import StderrTail, end, spawn
from ..proto.codec import LineBuffer
from .rpc import (
    NotAMessage,
    Notification,
    Response,
    RpcError,
    ServerRequest,
    encode_notification,
    encode_request,
    error_message,
    parse_message,
    thread_id_of,
)
from .server_requests import TOOL_CALL, answer_for
from .translate import TurnTranslator

log = logging.getLogger("quartproxy.appserver")

HEALTH_TIMEOUT_S = 5.0
DELETE_TIMEOUT_S = 60.0
CLEANUPS_IN_FLIGHT = 32


class WorkerGone(Exception):
    """The worker died (or was ended) before answering."""


class RpcTimeout(Exception):
    """A call got no answer in time."""


class RpcFailed(Exception):
    def __init__(self, method: str, error: RpcError) -> None:
        super().__init__(f"{method}: {error_message(error)}")
        self.method = method
        self.error = error


@dataclass(eq=False)
class _Pending:
    method: str
    done: trio.Event = field(default_factory=trio.Event)
    response: Response | None = None
    on_result: Callable[[Any], None] | None = None
    on_late: Callable[[Any], None] | None = None  # the caller left before the answer came
    abandoned: bool = False


class ThreadRoute:
    """One request's thread on a worker: the buffer the reader fills, iterated as event batches.

    This object *is* the backend's :class:`~quartproxy.backends.base.Turn` for app-server.
    """

    def __init__(
        self,
        *,
        worker: Worker,
        thread_id: str,
        translator: TurnTranslator,
        tool_thread: bool,
        cap_bytes: int,
    ) -> None:
        self.worker = worker
        self.thread_id = thread_id
        self.translator = translator
        self.tool_thread = tool_thread
        self.cap_bytes = cap_bytes
        self.diagnostics = TurnDiagnostics(worker=worker.name, thread_id=thread_id)
        self.end: End | None = None
        self.peak_bytes = 0
        # A list, swapped whole by the consumer: an empty deque is most of a kilobyte, and an
        # open stream keeps one between batches.
        self._queue: list[Notification] = []
        self._bytes = 0
        self._closed = False
        self._wake = trio.Event()

    # ------------------------------------------------------------------ reader side (sync)

    def push(self, note: Notification, size: int) -> None:
        if self._closed:
            return
        self._queue.append(note)
        self._bytes += size
        if self._bytes > self.peak_bytes:
            self.peak_bytes = self._bytes
        if self._bytes > self.cap_bytes:
            log.warning(
                "turn buffer passed %d bytes (client too slow): cutting the turn",
                self.cap_bytes, extra={"req_id": self.diagnostics.extra.get("req_id"),
                                       "thread_id": self.thread_id},
            )
            self._queue.clear()
            self._bytes = 0
            self.close(End.OVERFLOW)

    def wake(self) -> None:
        self._wake.set()

    def close(self, why: End | None) -> None:
        if not self._closed:
            self._closed = True
            if why is not None:
                self.end = why
            self._wake.set()

    # ------------------------------------------------------------------ consumer side

    def __aiter__(self) -> ThreadRoute:
        return self

    async def __anext__(self) -> list[Event]:
        while True:
            if self._queue:
                notes = self._queue
                self._queue = []
                self._bytes = 0
                translate = self.translator.feed
                events: list[Event] = []
                for note in notes:
                    events += translate(note)
                if events:
                    return events
                continue
            if self._closed:
                raise StopAsyncIteration
            self._wake = trio.Event()
            await self._wake.wait()


class Worker:
    """A ``codex app-server`` process and everything that talks to it.

    Started with ``await nursery.start(worker.run)``; ``run`` returns when the process is gone.
    """

    def __init__(
        self,
        *,
        name: str,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        initialize: dict[str, Any],
        handshake_timeout_s: float,
        rpc_timeout_s: float,
        health_interval_s: float,
        shutdown_grace_s: float,
        cleanup_method: str,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.initialize_params = initialize
        self.handshake_timeout_s = handshake_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        self.health_interval_s = health_interval_s
        self.shutdown_grace_s = shutdown_grace_s
        self.cleanup_method = cleanup_method  # thread/delete (0.140+) or thread/archive
        self.process: trio.Process | None = None
        self.ready = trio.Event()  # the initialize result arrived
        self.gone = trio.Event()  # the process is gone (run() is returning)
        self.retiring = trio.Event()  # no new turns: draining for a recycle, or dying
        self.user_agent: str | None = None
        self.routes: dict[str, ThreadRoute] = {}
        self.active = 0  # turns leased on this worker (starting or running)
        # Threads whose request ended but which codex has not deleted yet. They still take
        # codex's memory (and disk), so they count against the worker's capacity: when codex
        # deletes more slowly than requests end, new turns wait instead of piling threads up.
        self.cleanups_pending = 0
        self.on_capacity: Callable[[], None] | None = None  # the pool's wake-up
        self.requests = 0  # turns ever leased
        self.failure: str | None = None  # why it was ended, for /readyz and logs
        self.exit_code: int | None = None
        self.stderr = StderrTail()
        self.stats = {"lines": 0, "dropped": 0, "server_requests": 0}
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._timeouts_in_row = 0
        self._send, self._outgoing = trio.open_memory_channel[bytes](math.inf)
        self._cleanups_send, self._cleanups = trio.open_memory_channel[str](math.inf)
        self._cleanups_done = trio.Event()
        self._kill = trio.Event()  # end the process now (unhealthy)
        self._idle = trio.Event()  # set when active drops to 0 while retiring

    # ------------------------------------------------------------------ public

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def accepting(self) -> bool:
        return self.ready.is_set() and not self.retiring.is_set() and not self.gone.is_set()

    def retire(self) -> None:
        """Take no new turns; end the process once the running ones are done."""
        self.retiring.set()
        if self.active == 0:
            self._idle.set()

    def fail(self, why: str) -> None:
        """End the process now: its running turns end as the worker's exit."""
        if self.failure is None:
            self.failure = why
            log.warning("worker %s is unhealthy (%s): ending it", self.name, why)
        self.retiring.set()
        self._kill.set()

    def lease(self) -> None:
        self.active += 1
        self.requests += 1

    @property
    def load(self) -> int:
        """Threads this worker holds: running turns plus threads waiting to be deleted."""
        return self.active + self.cleanups_pending

    def release(self) -> None:
        self.active -= 1
        if self.active == 0 and self.retiring.is_set():
            self._idle.set()

    def send_line(self, line: bytes) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            self._send.send_nowait(line)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self.send_line(encode_notification(method, params))

    async def call(
        self,
        method: str,
        params: dict[str, Any],
        *,
        timeout_s: float | None = None,
        on_result: Callable[[Any], None] | None = None,
        on_late: Callable[[Any], None] | None = None,
        health: bool = True,
    ) -> Any:
        """Send a request and wait for its answer (``on_result`` runs in the reader, before
        any later line is routed). A timeout counts against the worker's health unless
        ``health`` is false (thread deletions: codex does them one by one and slowly, so a long
        queue of them is load, not a hang). ``on_late`` gets a result that arrives after the
        caller stopped waiting (timed out or cancelled): a thread started for a request that is
        already gone must still be deleted."""
        if self.gone.is_set():
            raise WorkerGone(self.failure or "the worker is gone")
        request_id = self._next_id
        self._next_id += 1
        pending = _Pending(method, on_result=on_result, on_late=on_late)
        self._pending[request_id] = pending
        self.send_line(encode_request(request_id, method, params))
        try:
            with trio.move_on_after(self.rpc_timeout_s if timeout_s is None else timeout_s):
                await pending.done.wait()
        finally:
            if pending.done.is_set() or on_late is None:
                self._pending.pop(request_id, None)
            else:
                pending.abandoned = True  # stays until its answer comes, for on_late
        response = pending.response
        if not pending.done.is_set():
            if not health:
                raise RpcTimeout(f"{method} got no answer within {timeout_s or 0:.1f} s")
            self._timeouts_in_row += 1
            if self._timeouts_in_row >= 2:
                self.fail(f"{self._timeouts_in_row} calls in a row got no answer")
            raise RpcTimeout(f"{method} got no answer within "
                             f"{self.rpc_timeout_s if timeout_s is None else timeout_s:.1f} s")
        if health:
            self._timeouts_in_row = 0
        if response is None:
            raise WorkerGone(self.failure or "the worker exited")
        if response.error is not None:
            raise RpcFailed(method, response.error)
        return response.result

    def end_thread(self, thread_id: str) -> None:
        """Forget the thread's route now and delete the thread from the worker's own task."""
        route = self.routes.pop(thread_id, None)
        if route is not None:
            route.close(None)
        try:
            self._cleanups_send.send_nowait(thread_id)
        except trio.ClosedResourceError:
            return
        self.cleanups_pending += 1

    # ------------------------------------------------------------------ lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Spawn, handshake, serve until told to stop or the process dies, then end it."""
        self.process = process = await spawn(self.argv, env=self.env, cwd=self.cwd)
        try:
            task_status.started()
            async with trio.open_nursery() as nursery:
                assert process.stderr is not None
                nursery.start_soon(self.stderr.drain, process.stderr)
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._read_loop, nursery.cancel_scope)
                nursery.start_soon(self._cleanup_loop)
                await self._handshake()
                if self.ready.is_set():
                    if self.health_interval_s > 0:
                        nursery.start_soon(self._health_loop)
                    await self._until_done()
                    if not self._kill.is_set():
                        await self._flush_cleanups()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(process)

    async def _until_done(self) -> None:
        """Return when the process must go: killed, or retired and idle."""
        async with trio.open_nursery() as nursery:

            async def wait_for(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait_for, self._kill)
            nursery.start_soon(wait_for, self._idle)

    async def _flush_cleanups(self) -> None:
        """A retiring worker deletes its last threads before it goes: a thread left behind
        keeps its conversation file in CODEX_HOME."""
        self._cleanups_send.close()
        with trio.move_on_after(DELETE_TIMEOUT_S):
            await self._cleanups_done.wait()

    async def _handshake(self) -> None:
        try:
            result = await self.call(
                "initialize", self.initialize_params, timeout_s=self.handshake_timeout_s
            )
        except (RpcTimeout, RpcFailed, WorkerGone) as exc:
            self.fail(f"initialize failed: {exc}")
            return
        if isinstance(result, dict) and isinstance(result.get("userAgent"), str):
            self.user_agent = result["userAgent"]
        self.notify("initialized")
        self.ready.set()
        log.info("worker %s ready (pid %s)", self.name, self.pid)

    async def _finish(self, process: trio.Process) -> None:
        self.retiring.set()
        for route in list(self.routes.values()):
            route.close(End.WORKER_EXIT)
        self.routes.clear()
        for pending in self._pending.values():
            pending.done.set()  # response None: WorkerGone
        self._send.close()
        self._cleanups_send.close()
        info = await end(process, self.shutdown_grace_s)
        self.exit_code = info.returncode
        self.gone.set()

    # ------------------------------------------------------------------ tasks

    async def _write_loop(self) -> None:
        process = self.process
        assert process is not None and process.stdin is not None
        stdin = process.stdin
        try:
            async for line in self._outgoing:
                lines = [line]
                while True:
                    try:
                        lines.append(self._outgoing.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await stdin.send_all(b"".join(lines) if len(lines) > 1 else line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("worker %s: stdin closed", self.name)

    async def _read_loop(self, scope: trio.CancelScope) -> None:
        process = self.process
        assert process is not None and process.stdout is not None
        stdout = process.stdout
        lines = LineBuffer()
        try:
            while True:
                chunk = await stdout.receive_some(65536)
                if not chunk:
                    break
                self._route(lines.feed(bytes(chunk)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if self.failure is None and not self.retiring.is_set():
            self.failure = "the process exited"
            log.warning("worker %s exited unexpectedly", self.name)
        # Stop taking turns before the running ones learn of the exit: their clients may
        # retry at once, and the pool must not lease the dead process to them.
        self.retiring.set()
        for route in list(self.routes.values()):
            route.close(End.WORKER_EXIT)
        self.routes.clear()
        scope.cancel()

    def _route(self, raw_lines: list[bytes]) -> None:
        woken: list[ThreadRoute] = []
        routes = self.routes
        for line in raw_lines:
            try:
                message = parse_message(line)
            except NotAMessage as exc:
                log.debug("worker %s: skipped stdout line: %s", self.name, exc)
                continue
            if message is None:
                continue
            self.stats["lines"] += 1
            if isinstance(message, Notification):
                thread_id = thread_id_of(message)
                route = routes.get(thread_id) if thread_id is not None else None
                if route is None:
                    self.stats["dropped"] += 1
                    continue
                route.push(message, len(line))
                if not woken or woken[-1] is not route:
                    woken.append(route)
            elif isinstance(message, Response):
                self._resolve(message)
            else:
                self._answer(message)
        for route in woken:
            route.wake()

    def _resolve(self, response: Response) -> None:
        pending = self._pending.pop(response.id, None) if isinstance(response.id, int) else None
        if pending is None:
            log.debug("worker %s: answer to unknown request %r", self.name, response.id)
            return
        pending.response = response
        if pending.abandoned:
            if response.error is None and pending.on_late is not None:
                try:
                    pending.on_late(response.result)
                except Exception:
                    log.exception("worker %s: late %s result", self.name, pending.method)
            return
        if response.error is None and pending.on_result is not None:
            try:
                pending.on_result(response.result)
            except Exception:
                log.exception("worker %s: handling the %s result failed", self.name,
                              pending.method)
        pending.done.set()

    def _answer(self, request: ServerRequest) -> None:
        self.stats["server_requests"] += 1
        thread_id = thread_id_of(request)
        route = self.routes.get(thread_id) if thread_id is not None else None
        # A client tool call only ever comes on a tool thread; one whose route is already gone
        # belongs to a request that finished (its thread is being deleted): leave it pending.
        tool_thread = route.tool_thread if route is not None else request.method == TOOL_CALL
        answer = answer_for(request, tool_thread=tool_thread)
        log.info("worker %s: server request %s for thread %s: %s", self.name, request.method,
                 thread_id, "left pending" if answer is None else "answered",
                 extra={"req_id": route.diagnostics.extra.get("req_id") if route else None})
        if answer is not None:
            self.send_line(answer)

    async def _cleanup_loop(self) -> None:
        """Delete (or archive) the threads of finished requests, off the requests' paths."""
        try:
            await self._cleanup_each()
        finally:
            self._cleanups_done.set()

    async def _cleanup_each(self) -> None:
        # Several at once: codex takes a while over each (on 0.169.0 one delete of an idle
        # thread costs about as much as a short turn), and one at a time falls behind as soon as
        # requests come faster than that — every thread left behind keeps its rollout on disk.
        limiter = trio.CapacityLimiter(CLEANUPS_IN_FLIGHT)
        async with trio.open_nursery() as nursery:
            async for thread_id in self._cleanups:
                await limiter.acquire_on_behalf_of(thread_id)
                nursery.start_soon(self._cleanup_one, thread_id, limiter)

    async def _cleanup_one(self, thread_id: str, limiter: trio.CapacityLimiter) -> None:
        try:
            await self.call(self.cleanup_method, {"threadId": thread_id},
                            timeout_s=DELETE_TIMEOUT_S, health=False)
        except RpcFailed as exc:
            log.debug("worker %s: %s", self.name, exc)
        except (RpcTimeout, WorkerGone) as exc:
            log.warning("worker %s: %s of %s: %s", self.name, self.cleanup_method,
                        thread_id, exc)
        finally:
            limiter.release_on_behalf_of(thread_id)
            self.cleanups_pending -= 1
            if self.on_capacity is not None:
                self.on_capacity()

    async def _health_loop(self) -> None:
        while True:
            await trio.sleep(self.health_interval_s)
            try:
                await self.call("thread/loaded/list", {},
                                timeout_s=min(HEALTH_TIMEOUT_S, self.rpc_timeout_s))
            except RpcFailed:
                pass  # it answered: alive
            except (RpcTimeout, WorkerGone) as exc:
                self.fail(f"health probe: {exc}")
                return
