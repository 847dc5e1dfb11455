"""The floors: the same work as the proxy does, done directly, without the proxy.

* proto: spawn the stand-in child, write the submission, read to ``task_complete`` (or the
  first delta), SIGTERM, reap — the physical cost of one request with one process per request;
* app-server: a minimal JSON-RPC client on the stand-in worker's pipes (``thread/start`` →
  ``turn/start`` → deltas → ``turn/completed``, ``thread/delete`` sent without waiting) — what
  any client of a worker must do, so what the proxy adds is what remains.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio

HERE = Path(__file__).resolve().parent
SUBMISSION = b'{"id":"1","op":{"type":"user_input","items":[{"type":"text","text":"hi"}]}}\n'


def build(workdir: Path, name: str) -> Path:
    """Compile ``benchmarks/<name>.c`` with the system C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit(f"bench: a C compiler (cc/gcc) is needed to build benchmarks/{name}.c")
    out = workdir / name
    subprocess.run([compiler, "-O2", "-o", str(out), str(HERE / f"{name}.c")], check=True)
    return out


# ------------------------------------------------------------------------------------ proto


async def child_turn(child: Path, env: dict[str, str], *, first_only: bool = False) -> float:
    """Spawn, submit, read to task_complete (or the first delta), SIGTERM, reap."""
    start = time.perf_counter()
    proc = await trio.lowlevel.open_process(
        [str(child), "proto"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    await proc.stdin.send_all(SUBMISSION)
    buf = b""
    target = b"agent_message_delta" if first_only else b"task_complete"
    while target not in buf:
        chunk = await proc.stdout.receive_some(65536)
        if not chunk:
            break
        buf = buf[-4096:] + chunk
    elapsed = time.perf_counter() - start
    proc.send_signal(signal.SIGTERM)
    await proc.wait()
    await proc.stdin.aclose()
    await proc.stdout.aclose()
    return elapsed


async def spawn_rate(child: Path, total: int, concurrency: int) -> tuple[float, list[float]]:
    """Requests/s and per-request seconds of the spawn floor at ``concurrency``."""
    env = {**os.environ, "FASTCHILD_DELTAS": "10"}
    remaining = total
    times: list[float] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            times.append(await child_turn(child, env))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return total / (time.perf_counter() - start), times


async def spawn_first(child: Path, count: int) -> list[float]:
    env = {**os.environ, "FASTCHILD_DELTAS": "10"}
    return [await child_turn(child, env, first_only=True) for _ in range(count)]


async def lines_per_s(child: Path, deltas: int) -> float:
    """Read and parse a child's delta lines as fast as they come: any reader's floor."""
    env = {**os.environ, "FASTCHILD_DELTAS": str(deltas)}
    proc = await trio.lowlevel.open_process(
        [str(child), "proto"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    await proc.stdin.send_all(SUBMISSION)
    start = time.perf_counter()
    lines = 0
    pending = b""
    done = False
    while not done:
        chunk = await proc.stdout.receive_some(65536)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            if b"agent_message_delta" in line:
                orjson.loads(line)
                lines += 1
            elif b"task_complete" in line:
                done = True
    elapsed = time.perf_counter() - start
    proc.send_signal(signal.SIGTERM)
    await proc.wait()
    return lines / elapsed


# ------------------------------------------------------------------------------------ app-server


@dataclass
class _Thread:
    first_at: float | None = None  # perf_counter() at the first delta
    first_ns: int | None = None  # monotonic_ns() at the first delta
    stamp_ns: int | None = None  # the worker's own monotonic time of it (FAST_STAMP)
    first: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)


class DirectClient:
    """A JSON-RPC client on one worker's pipes: one reader routes answers by id and
    notifications by threadId, like the proxy's worker does."""

    def __init__(self, argv: list[str], env: dict[str, str], *, cwd: str = "/") -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.proc: trio.Process | None = None
        self._next = 0
        self._pending: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._threads: dict[str, _Thread] = {}
        self._out: list[bytes] = []
        self._wake = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[DirectClient]) -> None:
        self.proc = proc = await trio.lowlevel.open_process(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env,
            stderr=subprocess.DEVNULL, start_new_session=True, cwd=self.cwd,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read)
                nursery.start_soon(self._write)
                await self.call("initialize", {"clientInfo": {
                    "name": "bench", "title": None, "version": "0"}})
                await self.send({"method": "initialized"})
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                assert proc.stdin is not None
                await proc.stdin.aclose()
                with trio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()

    async def send(self, obj: dict[str, Any]) -> None:
        self._out.append(orjson.dumps(obj) + b"\n")
        self._wake.set()

    async def _write(self) -> None:
        """One writer: whatever is queued goes out in one write."""
        assert self.proc is not None and self.proc.stdin is not None
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            data, self._out = b"".join(self._out), []
            await self.proc.stdin.send_all(data)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        self._next += 1
        ident = self._next
        waiter: tuple[trio.Event, list[Any]] = (trio.Event(), [])
        self._pending[ident] = waiter
        await self.send({"id": ident, "method": method, "params": params})
        await waiter[0].wait()
        return waiter[1][0]

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        stdout = self.proc.stdout
        pending = b""
        while chunk := await stdout.receive_some(262144):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line:
                    self._route(orjson.loads(line))

    def _route(self, msg: dict[str, Any]) -> None:
        if "method" not in msg:
            waiter = self._pending.pop(msg["id"], None)
            if waiter is not None:
                waiter[1].append(msg.get("result", msg.get("error")))
                waiter[0].set()
            return
        params = msg.get("params") or {}
        thread = self._threads.get(params.get("threadId", ""))
        if thread is None:
            return
        method = msg["method"]
        if method == "item/agentMessage/delta" and thread.first_at is None:
            thread.first_at = time.perf_counter()
            thread.first_ns = time.monotonic_ns()
            delta = params.get("delta", "")
            if delta.startswith("@"):
                thread.stamp_ns = int(delta[1:].split()[0])
            thread.first.set()
        elif method == "turn/completed":
            thread.done.set()

    async def turn(self, *, wait: Callable[[_Thread], trio.Event]) -> _Thread:
        """thread/start → turn/start → ``wait`` → thread/delete (not awaited, as the proxy)."""
        result = await self.call("thread/start", {"cwd": self.cwd, "model": "gpt-5",
                                                   "approvalPolicy": "never",
                                                   "sandbox": "read-only"})
        thread_id = result["thread"]["id"]
        thread = self._threads[thread_id] = _Thread()
        await self.call("turn/start", {"threadId": thread_id,
                                       "input": [{"type": "text", "text": "hi"}]})
        await wait(thread).wait()
        del self._threads[thread_id]
        self._next += 1
        await self.send({"id": self._next, "method": "thread/delete",
                         "params": {"threadId": thread_id}})
        return thread


async def direct_first(worker: Path, count: int) -> tuple[list[float], list[float]]:
    """Sequential turns on a warm worker: seconds from thread/start to the first delta, and
    seconds from the worker's write of that delta to its arrival here."""
    env = {**os.environ, "FAST_DELTAS": "10", "FAST_STAMP": "1"}
    firsts: list[float] = []
    held: list[float] = []
    async with trio.open_nursery() as nursery:
        client: DirectClient = await nursery.start(DirectClient([str(worker)], env).run)
        for _ in range(count + 3):
            start = time.perf_counter()
            thread = await client.turn(wait=lambda t: t.done)
            assert thread.first_at is not None and thread.first_ns is not None
            firsts.append(thread.first_at - start)
            if thread.stamp_ns is not None:
                held.append((thread.first_ns - thread.stamp_ns) / 1e9)
        nursery.cancel_scope.cancel()
    return firsts[3:], held[3:]  # the first turns warm the client up


async def direct_rate(worker: Path, total: int, concurrency: int) -> float:
    """Turns/s through one worker with ``concurrency`` turns in flight, no proxy."""
    env = {**os.environ, "FAST_DELTAS": "10"}
    remaining = total
    async with trio.open_nursery() as nursery:
        client: DirectClient = await nursery.start(DirectClient([str(worker)], env).run)

        async def loop() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await client.turn(wait=lambda t: t.done)

        start = time.perf_counter()
        async with trio.open_nursery() as inner:
            for _ in range(concurrency):
                inner.start_soon(loop)
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return total / elapsed if elapsed > 0 else math.inf
