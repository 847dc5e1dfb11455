"""The app-server backend: a supervised pool of long-lived ``codex app-server`` workers.

Every request gets a fresh thread on the least-loaded ready worker (``thread/start``, history
through ``thread/inject_items``, ``turn/start``), and leaving ``open_turn`` — however the
request ended — forgets the thread's route at once and deletes the thread from the worker's own
task, without making the request wait (0.100–0.139 have no ``thread/delete``: the thread is
archived instead, and the archive is pruned). No process is started per request.

The supervisor keeps ``PROXY_WORKERS`` slots filled:

* a worker is ready when its ``initialize`` result arrives; ``/readyz`` is 200 while at least
  one is, and otherwise says why not;
* a worker that dies is restarted with backoff (``WORKER_BACKOFF_INITIAL_MS`` doubling up to
  ``WORKER_BACKOFF_MAX_MS``); its requests end by the lifecycle rules (``End.WORKER_EXIT``),
  never by hanging, and are never replayed;
* after ``PROXY_WORKER_MAX_REQUESTS`` requests a worker is recycled: a replacement starts at
  once, the old one takes no new turns and ends when its last one does;
* shutdown needs nothing special: requests are finalized by their relays at the drain deadline
  (which deletes their threads), then the pool is cancelled and every worker's process group is
  ended (stdin closed, SIGTERM, SIGKILL after ``WORKER_SHUTDOWN_GRACE_MS``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
import trio_util

from ... import __version__
from ...config import Settings
from ...lifecycle import Lifecycle
from ..base import (
    BackendRejected,
    BackendUnavailable,
    Capabilities,
    TurnRequest,
)
from ..process import SpawnError, child_env, directory_problems, prepare_dirs, resolve_executable
from .params import initialize_params, plan_thread, turn_start_params, worker_argv
from .translate import TurnTranslator
from .version import CodexVersion, Features, features_for
from .worker import RpcFailed, RpcTimeout, ThreadRoute, Worker, WorkerGone

log = logging.getLogger("quartproxy.appserver")

TOOLS_NEED = "Function calling (tools) needs codex 0.169.0 or later"
ARCHIVE_PRUNE_INTERVAL_S = 5.0
ARCHIVE_KEEP_S = 2.0  # a file younger than this may still be being moved into the archive


class BackendBusy(BackendUnavailable):
    """Every ready worker carries as many turns as it may: the client's 429."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="concurrency_exceeded")


class AppServerBackend:
    def __init__(
        self,
        settings: Settings,
        lifecycle: Lifecycle,
        *,
        version: CodexVersion,
        program: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.version = version
        self.features: Features = features_for(version)
        self.program = program
        self.env = child_env(settings)
        self.slots: list[Worker | None] = [None] * settings.workers
        self.restarts: dict[str, int] = {}  # cause -> count
        self.retired: list[Worker] = []  # draining for a recycle
        self._slot_state: list[str] = ["starting"] * settings.workers
        # Requests waiting for room, in arrival order. Room for one turn wakes one of them, a
        # change of the pool wakes all (see _room and _notify).
        self._queue = trio.lowlevel.ParkingLot()
        self._generation = 0
        # Workers accepting turns right now; tests and start-up logs can wait on it.
        self.ready_count: trio_util.AsyncValue[int] = trio_util.AsyncValue(0)
        self._closing = False
        self._slots_done = trio.Event()
        self._capabilities = self._make_capabilities()

    def _make_capabilities(self) -> Capabilities:
        tools = self.features.dynamic_tools
        if self.settings.demo:  # the demo program stands in for codex: say so, not its version
            version = "demo"
            reason = f"{TOOLS_NEED}; this server runs the demo backend, which has none."
        else:
            version = str(self.version)
            reason = f"{TOOLS_NEED}; this server runs codex {version} (app-server backend)."
        return Capabilities(
            name="app-server", version=version, tools=tools, tools_reason="" if tools else reason,
            output_schema=True,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    # ------------------------------------------------------------------ pool

    def workers(self) -> list[Worker]:
        return [worker for worker in self.slots if worker is not None] + self.retired

    def readiness(self) -> list[str]:
        problems = directory_problems(self.settings)
        if any(worker is not None and worker.accepting for worker in self.slots):
            return problems
        states = ", ".join(f"worker {index}: {state}"
                           for index, state in enumerate(self._slot_state))
        return [f"no codex app-server worker is ready ({states})", *problems]

    async def aclose(self) -> None:
        """Shut down gracefully: take no new turns, let every worker delete its threads and
        exit once idle (stdin closed), within ``WORKER_SHUTDOWN_GRACE_MS``; the pool's
        cancellation afterwards ends whatever is left."""
        self._closing = True
        for worker in self.workers():
            worker.retire()
        self._notify()
        with trio.move_on_after(self.settings.worker_shutdown_grace_ms / 1000 + 1):
            for worker in self.workers():
                await worker.gone.wait()

    def _pick(self) -> Worker | None:
        limit = self.settings.worker_max_turns
        best: Worker | None = None
        for worker in self.slots:
            if worker is None or not worker.accepting or worker.load >= limit:
                continue
            if best is None or worker.load < best.load:
                best = worker
        return best

    async def _lease(self) -> Worker:
        if self._closing:
            raise BackendUnavailable("The server is shutting down.", code="shutting_down")
        limit = self.settings.worker_max_turns
        queue_deadline = trio.current_time() + self.settings.queue_timeout_ms / 1000
        # A worker that is full only because codex is still deleting finished threads frees
        # up by itself: waiting for that is not queueing, so it has its own (RPC) bound.
        cleanup_deadline = trio.current_time() + self.settings.worker_rpc_timeout_ms / 1000
        while True:
            worker = self._pick()
            if worker is not None:
                worker.lease()
                if (self.settings.worker_max_requests
                        and worker.requests >= self.settings.worker_max_requests):
                    self._recycle(worker)
                return worker
            ready = [w for w in self.slots if w is not None and w.accepting]
            deleting = any(w.active < limit for w in ready)
            # Workers still starting (or restarting after a crash) will take turns soon.
            starting = not ready and any(
                state in ("starting", "recycling") for state in self._slot_state
            )
            deadline = cleanup_deadline if deleting or starting else queue_deadline
            if trio.current_time() >= deadline:
                if ready:
                    raise BackendBusy(
                        f"Every codex worker is carrying {limit} threads "
                        "(PROXY_WORKER_MAX_TURNS). Retry shortly."
                    )
                raise BackendUnavailable(
                    "No codex worker is ready: " + "; ".join(self.readiness())
                )
            with trio.move_on_at(deadline):
                await self._queue.park()

    def _notify(self) -> None:
        """The pool changed (a worker started, became ready, retired or ended)."""
        self.ready_count.value = sum(
            1 for worker in self.slots if worker is not None and worker.accepting
        )
        self._queue.unpark_all()

    def _room(self, worker: Worker) -> None:
        """A turn of ``worker`` ended or one of its threads was deleted (twice per turn).

        When that leaves room for a turn, it wakes one waiting request, the longest waiting:
        waking them all had each re-check and re-arm its wait, which at 64 in flight cost more
        CPU than the turns themselves. A turn whose thread still waits for deletion leaves no
        room yet (its deletion will), and a recycled worker's old process ending its last
        turns wakes nobody."""
        self.ready_count.value = sum(
            1 for each in self.slots if each is not None and each.accepting
        )  # a crashed worker ends its turns before its slot is cleared: count it out now
        if worker.accepting and worker.load < self.settings.worker_max_turns:
            self._queue.unpark(count=1)

    def _recycle(self, worker: Worker) -> None:
        for index, current in enumerate(self.slots):
            if current is worker:
                log.info("worker %s served %d requests: recycling it", worker.name,
                         worker.requests)
                self.slots[index] = None
                self.retired.append(worker)
                worker.retire()
                self._slot_state[index] = "recycling"
                self._restart_now[index].set()

    # ------------------------------------------------------------------ lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with contextlib.suppress(OSError):
            prepare_dirs(self.settings)
        self._restart_now = [trio.Event() for _ in self.slots]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for index in range(len(self.slots)):
                nursery.start_soon(self._keep_slot, index)
            if not self.features.thread_delete:
                nursery.start_soon(self._prune_archive)
            # "Serving" should mean a request can be answered: wait for the first worker (a
            # broken codex does not hold start-up past the handshake timeout; /readyz says why).
            with trio.move_on_after(self.settings.worker_handshake_timeout_ms / 1000):
                await self.ready_count.wait_value(lambda n: n >= 1)
            task_status.started()

    def _new_worker(self, index: int) -> Worker:
        self._generation += 1
        settings = self.settings
        program = self.program or resolve_executable(settings)
        worker = Worker(
            name=f"w{index}.{self._generation}",
            argv=worker_argv(program, settings),
            env=self.env,
            cwd=settings.codex_workdir,
            initialize=initialize_params(
                __version__, experimental=self.features.dynamic_tools,
                opt_out=self.features.opt_out,
            ),
            handshake_timeout_s=settings.worker_handshake_timeout_ms / 1000,
            rpc_timeout_s=settings.worker_rpc_timeout_ms / 1000,
            health_interval_s=settings.worker_health_interval_ms / 1000,
            shutdown_grace_s=settings.worker_shutdown_grace_ms / 1000,
            cleanup_method="thread/delete" if self.features.thread_delete else "thread/archive",
        )
        worker.on_capacity = partial(self._room, worker)
        return worker

    async def _keep_slot(self, index: int) -> None:
        settings = self.settings
        backoff = settings.worker_backoff_initial_ms / 1000
        while not self._closing:
            self._restart_now[index] = trio.Event()
            try:
                worker = self._new_worker(index)
                self._slot_state[index] = "starting"
                await self._nursery.start(self._run_worker, worker)
            except SpawnError as exc:
                self._slot_state[index] = f"cannot start: {exc}"
                log.error("worker %d cannot start: %s", index, exc)
                await self._backoff(index, backoff, "spawn_failed")
                backoff = min(backoff * 2, settings.worker_backoff_max_ms / 1000)
                continue
            self.slots[index] = worker
            self._notify()
            async with trio.open_nursery() as waiter:

                async def ready_or_gone(w: Worker = worker) -> None:
                    await w.ready.wait()
                    self._slot_state[index] = "ready"
                    self._notify()

                waiter.start_soon(ready_or_gone)
                async with trio.open_nursery() as either:

                    async def gone(w: Worker = worker) -> None:
                        await w.gone.wait()
                        either.cancel_scope.cancel()

                    async def recycle() -> None:
                        await self._restart_now[index].wait()
                        either.cancel_scope.cancel()

                    either.start_soon(gone)
                    either.start_soon(recycle)
                waiter.cancel_scope.cancel()
            if self.slots[index] is worker:
                self.slots[index] = None
            self._notify()
            if self._closing:
                return
            if worker.failure is not None:
                if worker.ready.is_set():
                    backoff = settings.worker_backoff_initial_ms / 1000
                cause = "crashed" if worker.failure == "the process exited" else "unhealthy"
                if not worker.ready.is_set():
                    cause = "handshake_failed" if worker.failure else "crashed"
                self._slot_state[index] = (
                    f"restarting after {worker.failure or 'exit'} (exit code {worker.exit_code})"
                )
                await self._backoff(index, backoff, cause)
                backoff = min(backoff * 2, settings.worker_backoff_max_ms / 1000)
            else:
                self.restarts["recycled"] = self.restarts.get("recycled", 0) + 1

    async def _backoff(self, index: int, delay: float, cause: str) -> None:
        self.restarts[cause] = self.restarts.get(cause, 0) + 1
        log.warning("worker slot %d: restart (%s) in %.1f s", index, cause, delay)
        await trio.sleep(delay)

    async def _run_worker(
        self, worker: Worker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await worker.run(task_status=task_status)
        finally:
            if worker in self.retired:
                self.retired.remove(worker)
            if worker.stderr.total and worker.failure and worker.failure != "recycled":
                log.warning("worker %s ended (%s); stderr tail: %s", worker.name,
                            worker.failure, worker.stderr.text())
            self._notify()

    async def _prune_archive(self) -> None:
        """0.100–0.139 cannot delete threads: the proxy archives them and removes the archived
        conversation files every few seconds (everything in that folder was archived by this
        CODEX_HOME's workers, and none of it is ever read again)."""
        folder = Path(self.settings.codex_home) / "archived_sessions"
        while True:
            await trio.sleep(ARCHIVE_PRUNE_INTERVAL_S)
            await trio.to_thread.run_sync(_prune_older_than, folder, ARCHIVE_KEEP_S)

    # ------------------------------------------------------------------ turns

    @asynccontextmanager
    async def open_turn(self, request: TurnRequest) -> AsyncIterator[ThreadRoute]:
        if request.tools is not None and not self.features.dynamic_tools:
            raise BackendRejected(self._capabilities.tools_reason, param="tools")
        worker = await self._lease()
        route: ThreadRoute | None = None
        try:
            route = await self._start_thread(worker, request)
            yield route
        finally:
            if route is not None:
                worker.end_thread(route.thread_id)
            worker.release()
            self._room(worker)

    async def _start_thread(self, worker: Worker, request: TurnRequest) -> ThreadRoute:
        settings = self.settings
        plan = plan_thread(
            request, cwd=str(settings.codex_workdir), sandbox=settings.sandbox_mode,
            features=self.features, tools_base_instructions=settings.tools_base_instructions,
        )
        translator = TurnTranslator(
            plan.declared, plan.injected_call_ids, self.features.duplicate_v1_events
        )
        routes: list[ThreadRoute] = []

        def register(result: Any) -> None:
            # Runs in the worker's reader, before it routes the next line.
            thread = result.get("thread") if isinstance(result, dict) else None
            thread_id = thread.get("id") if isinstance(thread, dict) else None
            if not isinstance(thread_id, str):
                return
            route = ThreadRoute(
                worker=worker, thread_id=thread_id, translator=translator,
                tool_thread=plan.tool_thread, cap_bytes=settings.turn_buffer_bytes,
            )
            route.diagnostics.extra["req_id"] = request.request_id
            worker.routes[thread_id] = route
            routes.append(route)

        def turn_started(result: Any) -> None:
            turn = result.get("turn") if isinstance(result, dict) else None
            if isinstance(turn, dict) and isinstance(turn.get("id"), str):
                translator.turn_id = turn["id"]

        def orphaned(result: Any) -> None:
            # The request gave up before codex answered: delete the thread it did start.
            thread = result.get("thread") if isinstance(result, dict) else None
            if isinstance(thread, dict) and isinstance(thread.get("id"), str):
                worker.end_thread(thread["id"])

        try:
            try:
                await worker.call("thread/start", plan.thread_start, on_result=register,
                                  on_late=orphaned)
            except BaseException:
                # Cancelled (or failed) after codex answered: the thread exists, delete it.
                for route in routes:
                    worker.end_thread(route.thread_id)
                raise
            if not routes:
                raise BackendUnavailable("codex did not return a thread id for thread/start.")
            route = routes[0]
            try:
                if plan.inject:
                    await worker.call(
                        "thread/inject_items", {"threadId": route.thread_id, "items": plan.inject}
                    )
                await worker.call(
                    "turn/start", turn_start_params(route.thread_id, plan, request),
                    on_result=turn_started,
                )
            except BaseException:
                worker.end_thread(route.thread_id)
                raise
            return route
        except RpcFailed as exc:
            if plan.tool_thread and exc.method == "thread/start" and exc.error.code == -32600:
                # codex refused the client's tool definitions: that is the client's 400.
                raise BackendRejected(str(exc.error.message).splitlines()[0][:500],
                                      param="tools") from None
            raise BackendUnavailable(f"codex refused the turn: {exc}") from None
        except RpcTimeout as exc:
            raise BackendUnavailable(f"The codex worker did not answer: {exc}") from None
        except WorkerGone as exc:
            raise BackendUnavailable(f"The codex worker exited: {exc}") from None


def _prune_older_than(folder: Path, age_s: float) -> None:
    cutoff = time.time() - age_s
    if not folder.is_dir():
        return
    for path in folder.rglob("*.jsonl"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
