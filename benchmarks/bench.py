#!/usr/bin/env python3
"""Proxy benchmarks, each figure beside its floor and as a ratio, measured in one run.

Two backends, each in front of the cheapest stand-in there can be, so that what is measured
beyond the floor is the proxy's own cost:

* **proto** — one child per request; the stand-in is ``fastchild.c`` and the floor is spawning,
  talking to and reaping that child without the proxy (same concurrency);
* **app-server** — long-lived workers (``PROXY_WORKERS=1`` here); the stand-in is
  ``fastappserver.c`` and the floor is a minimal JSON-RPC client on the same stand-in's pipes.
  The stand-in also stamps its first delta with its own monotonic time, so the time the proxy
  holds that delta before the client has it is measured directly.

``--compare URL`` runs the same HTTP load against another OpenAI-compatible server (give it the
same stand-in) and prints its figures in a column of their own; ``--quick`` is a small version
of everything that fails on errors, never on timing; ``--json PATH`` writes every figure;
``--runs N`` repeats the whole set and reports medians; ``--real-codex PATH`` measures the real
``codex`` (see ``realcodex.py``) instead.

Run with ``nox -s bench`` (or ``python benchmarks/bench.py``); the proxy must be importable
(``PYTHONPATH`` pointing at the checkout under test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import floors  # noqa: E402
from loadgen import Connection, Reply, Target, percentile, run_load  # noqa: E402

KEY = "bench-key"
WORD = b'"content":"word'


class BenchError(Exception):
    """A request failed or lost data: the benchmark is wrong, whatever the timing."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python -m quartproxy serve`` as a child, in front of a stand-in."""

    ready_timeout_s = 60.0

    def __init__(self, program: Path, workdir: Path, *, argv: list[str] | None = None,
                 **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.target = Target(self.base, KEY)
        home = workdir / f"home-{self.port}"
        home.mkdir()
        full_env = {
            **os.environ, "PROXY_API_KEY": KEY, "PORT": str(self.port),
            "CODEX_BIN": str(program), "CODEX_HOME": str(home),
            "PROXY_CODEX_WORKDIR": str(workdir / "work"),
            "TOKEN_LOG_PATH": str(workdir / f"usage-{self.port}.ndjson"),
            "PROXY_MAX_CONCURRENCY": "0", "PROXY_SSE_MAX_CONCURRENCY": "0",
            "PROXY_SSE_KEEPALIVE_MS": "0", **env,
        }
        self.log_path = workdir / f"server-{self.port}.log"  # the JSON logs, for a failure
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                # Not `-m quartproxy serve`: a busy shared machine may have scripts that end
                # stray test servers by that name.
                argv or [sys.executable, "-c", "from quartproxy.cli import main; main()",
                         "serve"],
                env=full_env, cwd=workdir,
                stdout=log, stderr=subprocess.PIPE,
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._ready():
                return
            time.sleep(0.05)
        err = self.stop()
        logs = self.log_path.read_text(errors="replace")
        raise BenchError(f"server did not become ready: {err[-2000:]}{logs[-2000:]}")

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def _stat(self, field_index: int) -> int:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[field_index])

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        return (self._stat(11) + self._stat(12)) / ticks

    def children_cpu_s(self) -> float:
        """User + system CPU seconds of the server's children that it has reaped (proto)."""
        ticks = os.sysconf("SC_CLK_TCK")
        return (self._stat(13) + self._stat(14)) / ticks

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace") if err else ""

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------ figures


@dataclass
class Figure:
    """One measured figure beside its floor. ``ratio`` is proxy/floor for rates, and the
    excess (proxy - floor) is given for times."""

    group: str
    name: str
    unit: str
    value: float
    floor: float | None = None
    kind: str = "rate"  # rate: higher is better, ratio = value/floor; time: excess = value-floor
    target: str = ""
    note: str = ""
    compare: float | None = None  # the --compare server's figure under the same load
    runs: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.kind != "rate" or not self.floor:
            return None
        return self.value / self.floor

    @property
    def excess(self) -> float | None:
        if self.floor is None or self.kind != "time":
            return None
        return self.value - self.floor

    def row(self) -> dict[str, object]:
        out = asdict(self)
        out["ratio"] = self.ratio
        out["excess"] = self.excess
        return out


def check(replies: list[Reply], what: str, *, frames: int | None = None) -> None:
    for reply in replies:
        if reply.status != 200:
            raise BenchError(f"{what}: HTTP {reply.status}: {reply.body[:300]!r}")
        if frames is not None and reply.markers != frames:
            raise BenchError(f"{what}: {reply.markers} content frames of {frames}")


def ms(seconds: float) -> float:
    return seconds * 1000


def own_cpu_s() -> float:
    """User + system CPU seconds of this process (the floors' clients run in it)."""
    times = os.times()
    return times.user + times.system


async def first_contents(target: Target, count: int) -> list[Reply]:
    conn = Connection(target)
    raw = target.chat(True)
    replies = [await conn.exchange(raw) for _ in range(count + 2)]
    await conn.aclose()
    check(replies, "first content")
    if any(r.first_content is None for r in replies):
        raise BenchError("a stream carried no content")
    return replies[2:]  # the first two warm the connection and the server's caches


async def chunk_rate(target: Target, frames: int) -> float:
    conn = Connection(target)
    reply = await conn.exchange(target.chat(True), count=WORD)
    await conn.aclose()
    check([reply], "one long stream", frames=frames)
    return frames / reply.seconds


class _Opened(Exception):
    pass


async def memory_per_stream(server: Server, streams: int) -> float:
    """Server RSS growth per open stream (each on its own connection, first content seen)."""
    target = server.target
    raw = target.chat(True)
    conns = [Connection(target) for _ in range(streams)]
    for conn in conns:
        await conn._connect()
    before = server.rss_kib()
    opened = trio.Semaphore(0)
    release = trio.Event()

    async def hold(conn: Connection) -> None:
        async def first(_: Reply) -> None:
            opened.release()
            await release.wait()
            raise _Opened

        with contextlib.suppress(_Opened):
            await conn.exchange(raw, on_first=first)

    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(hold, conn)
        with trio.fail_after(120):
            for _ in range(streams):
                await opened.acquire()
        await trio.sleep(0.2)
        after = server.rss_kib()
        release.set()
    for conn in conns:
        await conn.aclose()
    return (after - before) / streams


# ------------------------------------------------------------------------------------ proto


@dataclass
class Sizes:
    total: int  # requests per rate measurement
    ttfc: int  # sequential first-content samples
    big: int  # deltas in the one long stream
    open_streams: int
    tail: int  # requests at 64 connections (p99)

    @classmethod
    def make(cls, quick: bool) -> Sizes:
        if quick:
            return cls(total=48, ttfc=8, big=5_000, open_streams=16, tail=128)
        return cls(total=800, ttfc=60, big=200_000, open_streams=200, tail=1_280)


async def proto(workdir: Path, sizes: Sizes, compare: Target | None,
                compare_pid: int | None) -> list[Figure]:
    child = floors.build(workdir, "fastchild")
    figures: list[Figure] = []
    conc = 16
    cpu0 = own_cpu_s()
    floor_rate, _ = await floors.spawn_rate(child, sizes.total, conc)
    spawn_cpu = (own_cpu_s() - cpu0) / sizes.total
    floor_first = await floors.spawn_first(child, sizes.ttfc)
    floor_tail_rate, floor_tail = await floors.spawn_rate(child, sizes.tail, 64)
    env = {"PROXY_BACKEND": "proto", "FASTCHILD_DELTAS": "10"}
    with Server(child, workdir, **env) as server:
        target = server.target
        await run_load(target, target.chat(False), total=32, concurrency=4)  # warm up
        cpu0, kids0, client0 = server.cpu_s(), server.children_cpu_s(), own_cpu_s()
        rate, replies = await run_load(target, target.chat(False), total=sizes.total,
                                       concurrency=conc)
        cpu_per_req = (server.cpu_s() - cpu0) / sizes.total
        kids_per_req = (server.children_cpu_s() - kids0) / sizes.total
        client_per_req = (own_cpu_s() - client0) / sizes.total
        check(replies, "proto non-stream")
        cpu0 = server.cpu_s()
        srate, sreplies = await run_load(target, target.chat(True), total=sizes.total,
                                         concurrency=conc, count=WORD)
        stream_cpu = (server.cpu_s() - cpu0) / sizes.total
        check(sreplies, "proto stream", frames=10)
        firsts = await first_contents(target, sizes.ttfc)
        _, tail = await run_load(target, target.chat(True), total=sizes.tail, concurrency=64,
                                 count=WORD)
        check(tail, "proto stream at 64", frames=10)
    first_ms = statistics.median(ms(r.first_content - r.started) for r in firsts
                                 if r.first_content is not None)
    p99 = ms(percentile([r.seconds for r in tail], 0.99))
    figures += [
        Figure("proto", "non-stream requests/s @16 conns", "req/s", rate, floor_rate,
               target=">= 0.6 x floor", note="floor: spawn+answer+reap at 16"),
        Figure("proto", "stream requests/s @16 conns", "req/s", srate, floor_rate,
               target=">= 0.55 x floor"),
        Figure("proto", "first content p50, 1 conn", "ms", first_ms,
               ms(statistics.median(floor_first)), kind="time", target="<= floor + 0.8 ms",
               note="floor: spawn -> first delta"),
        Figure("proto", "stream p99 @64 conns", "ms", p99,
               ms(percentile(floor_tail, 0.99)), kind="time", target="<= 250 ms",
               note=f"floor: spawn floor at 64 ({floor_tail_rate:.0f}/s)"),
        Figure("proto", "server CPU per non-stream request", "ms", ms(cpu_per_req), None,
               kind="time", note="children excluded"),
        Figure("proto", "server CPU per stream request", "ms", ms(stream_cpu), None,
               kind="time", note="children excluded"),
        Figure("proto", "floor's own CPU per spawn @16", "ms", ms(spawn_cpu), None,
               kind="time", note="the floor's process: spawn, pipes, reap (children excluded)"),
        Figure("proto", "children's CPU per non-stream request", "ms", ms(kids_per_req), None,
               kind="time", note="the stand-in processes the server spawned and reaped"),
        Figure("proto", "load client's CPU per non-stream request", "ms", ms(client_per_req),
               None, kind="time", note="loadgen.py, on the same machine"),
    ]
    floor_lines = await floors.lines_per_s(child, sizes.big)
    with Server(child, workdir, PROXY_BACKEND="proto", FASTCHILD_DELTAS=str(sizes.big)) as server:
        chunks = await chunk_rate(server.target, sizes.big)
    figures.append(Figure("proto", "SSE chunks/s through one stream", "chunks/s", chunks,
                          floor_lines, target=">= 0.3 x floor",
                          note="floor: read+parse the child's lines"))
    with Server(child, workdir, PROXY_BACKEND="proto", FASTCHILD_DELTAS="3",
                FASTCHILD_HANG="1") as server:
        per_stream = await memory_per_stream(server, sizes.open_streams)
    figures.append(Figure("proto", f"memory per open stream ({sizes.open_streams} open)", "KiB",
                          per_stream, None, kind="time", target="<= 30 KiB",
                          note="server RSS growth, children excluded"))
    if compare is not None:
        await compare_load(figures, compare, sizes, compare_pid)
    return figures


async def compare_load(figures: list[Figure], target: Target, sizes: Sizes,
                       pid: int | None) -> None:
    """The same HTTP load against another server; its figures go into ``compare``."""
    by_name = {f.name: f for f in figures if f.group == "proto"}
    await run_load(target, target.chat(False), total=32, concurrency=4)
    rate, replies = await run_load(target, target.chat(False), total=sizes.total, concurrency=16)
    check(replies, "compare non-stream")
    by_name["non-stream requests/s @16 conns"].compare = rate
    srate, replies = await run_load(target, target.chat(True), total=sizes.total, concurrency=16)
    check(replies, "compare stream")
    by_name["stream requests/s @16 conns"].compare = srate
    firsts = await first_contents(target, sizes.ttfc)
    by_name["first content p50, 1 conn"].compare = statistics.median(
        ms(r.first_content - r.started) for r in firsts if r.first_content is not None)
    _, tail = await run_load(target, target.chat(True), total=sizes.tail, concurrency=64)
    check(tail, "compare stream at 64")
    by_name["stream p99 @64 conns"].compare = ms(percentile([r.seconds for r in tail], 0.99))
    if pid is not None:

        class Other(Server):
            def __init__(self) -> None:  # an already running server: only its /proc entries
                self.proc = type("P", (), {"pid": pid})()  # type: ignore[assignment]
                self.target = target

        name = f"memory per open stream ({sizes.open_streams} open)"
        by_name[name].compare = await memory_per_stream(Other(), sizes.open_streams)


# ------------------------------------------------------------------------------------ app-server


async def appserver(workdir: Path, sizes: Sizes) -> list[Figure]:
    worker = floors.build(workdir, "fastappserver")
    figures: list[Figure] = []
    direct_firsts, direct_held = await floors.direct_first(worker, sizes.ttfc)
    env = {"PROXY_BACKEND": "app-server", "PROXY_WORKERS": "1", "PROXY_WORKER_MAX_TURNS": "256",
           "FAST_DELTAS": "10"}
    with Server(worker, workdir, FAST_STAMP="1", **env) as server:
        firsts = await first_contents(server.target, sizes.ttfc)
    first = [r.first_content - r.started for r in firsts if r.first_content is not None]
    held = [(r.first_ns - _stamp(r)) / 1e9 for r in firsts if r.first_ns is not None]
    figures += [
        Figure("app-server", "first content p50, warm worker", "ms",
               ms(statistics.median(first)), ms(statistics.median(direct_firsts)),
               kind="time", target="<= floor + 0.5 ms",
               note="floor: direct client thread/start -> first delta"),
        Figure("app-server", "first delta held by the proxy p50", "ms",
               ms(statistics.median(held)), ms(statistics.median(direct_held)), kind="time",
               target="<= floor + 1 ms",
               note="worker's write of its first delta -> client has it (same clock)"),
    ]
    floor64 = math.nan
    with Server(worker, workdir, **env) as server:
        target = server.target
        await run_load(target, target.chat(False), total=64, concurrency=8)  # warm up
        for inflight in (1, 8, 64):
            total = max(sizes.total // (4 if inflight == 1 else 1), 16)
            own0 = own_cpu_s()
            floor = await floors.direct_rate(worker, total, inflight)
            floor_cpu = (own_cpu_s() - own0) / total
            cpu0 = server.cpu_s()
            rate, replies = await run_load(target, target.chat(False), total=total,
                                           concurrency=inflight)
            cpu = (server.cpu_s() - cpu0) / total
            check(replies, f"app-server non-stream at {inflight}")
            figures.append(Figure(
                "app-server", f"turns/s, {inflight} in flight, one worker", "turns/s", rate,
                floor, target=">= 1500/s" if inflight == 64 else "",
                note=f"floor: direct client; proxy CPU {ms(cpu):.2f} ms/turn"))
            if inflight == 64:
                floor64 = floor
                figures += [
                    Figure("app-server", "server CPU per turn @64", "ms", ms(cpu), None,
                           kind="time", note="the proxy process, worker excluded"),
                    Figure("app-server", "floor's own CPU per turn @64", "ms", ms(floor_cpu),
                           None, kind="time", note="the direct JSON-RPC client's process"),
                ]
        rate, replies = await run_load(target, target.chat(True), total=sizes.total,
                                       concurrency=64, count=WORD)
        check(replies, "app-server stream at 64", frames=10)
        figures.append(Figure("app-server", "stream turns/s, 64 in flight, one worker",
                              "turns/s", rate, floor64))
    with Server(worker, workdir, FAST_HANG="1", **{**env, "FAST_DELTAS": "3"}) as server:
        per_stream = await memory_per_stream(server, sizes.open_streams)
    figures.append(Figure("app-server", f"memory per open stream ({sizes.open_streams} open)",
                          "KiB", per_stream, None, kind="time", target="<= 30 KiB"))
    return figures


async def stack(workdir: Path, sizes: Sizes) -> list[Figure]:
    """The HTTP stack alone (``barestack.py``: Hypercorn's trio worker and h11 answering as the
    proxy does, with nothing behind) under the proxy's loads: its share of every figure."""
    argv = [sys.executable, str(HERE / "barestack.py")]
    python = Path(sys.executable)
    with Server(python, workdir, argv=argv) as server:
        target = server.target
        await run_load(target, target.chat(False), total=32, concurrency=4)  # warm up
        cpu0 = server.cpu_s()
        rate, replies = await run_load(target, target.chat(False), total=sizes.total,
                                       concurrency=16)
        cpu16 = (server.cpu_s() - cpu0) / sizes.total
        check(replies, "stack non-stream")
        cpu0 = server.cpu_s()
        srate, sreplies = await run_load(target, target.chat(True), total=sizes.total,
                                         concurrency=16, count=WORD)
        stream_cpu = (server.cpu_s() - cpu0) / sizes.total
        check(sreplies, "stack stream", frames=10)
        firsts = await first_contents(target, sizes.ttfc)
        cpu0 = server.cpu_s()
        rate64, replies64 = await run_load(target, target.chat(False), total=sizes.total,
                                           concurrency=64)
        cpu64 = (server.cpu_s() - cpu0) / sizes.total
        check(replies64, "stack non-stream at 64")
    with Server(python, workdir, argv=argv, BARE_HANG="1") as server:
        per_stream = await memory_per_stream(server, sizes.open_streams)
    first_ms = statistics.median(ms(r.first_content - r.started) for r in firsts
                                 if r.first_content is not None)
    note = "Hypercorn (trio) + h11 answering at once, nothing behind"
    return [
        Figure("stack", "non-stream requests/s @16 conns", "req/s", rate, None, note=note),
        Figure("stack", "stream requests/s @16 conns", "req/s", srate, None),
        Figure("stack", "non-stream requests/s @64 conns", "req/s", rate64, None),
        Figure("stack", "first content p50, 1 conn", "ms", first_ms, None, kind="time"),
        Figure("stack", "server CPU per non-stream request @16", "ms", ms(cpu16), None,
               kind="time"),
        Figure("stack", "server CPU per stream request @16", "ms", ms(stream_cpu), None,
               kind="time"),
        Figure("stack", "server CPU per non-stream request @64", "ms", ms(cpu64), None,
               kind="time"),
        Figure("stack", f"memory per open stream ({sizes.open_streams} open)", "KiB",
               per_stream, None, kind="time"),
    ]


@dataclass
class Headroom:
    """What a target leaves for the proxy's own work, once the HTTP stack and the floor's own
    work (which any proxy must also do) have taken their share, beside what that work costs
    the proxy now. CPU rows are per request in one process (trio runs on one core, so a rate
    needs its whole cost to fit in 1/rate); time rows are latency beyond the floor."""

    target: str
    unit: str
    budget: float
    stack: float
    floor_work: float
    proxy_total: float

    @property
    def left(self) -> float:
        return self.budget - self.stack - self.floor_work

    @property
    def proxy_own(self) -> float:
        return self.proxy_total - self.stack - self.floor_work

    def row(self) -> dict[str, object]:
        return {**asdict(self), "left": self.left, "proxy_own": self.proxy_own}


def headroom(figures: list[Figure], open_streams: int) -> list[Headroom]:
    """Every target whose figures were measured in this run, split as :class:`Headroom` says."""
    by = {(f.group, f.name): f for f in figures}

    def value(group: str, name: str) -> float | None:
        found = by.get((group, name))
        return found.value if found is not None else None

    def floor(group: str, name: str) -> float | None:
        found = by.get((group, name))
        return found.floor if found is not None else None

    rows: list[Headroom] = []
    memory = f"memory per open stream ({open_streams} open)"
    stack_cpu = value("stack", "server CPU per non-stream request @16")
    stack_stream_cpu = value("stack", "server CPU per stream request @16")
    stack_cpu64 = value("stack", "server CPU per non-stream request @64")
    stack_first = value("stack", "first content p50, 1 conn")
    stack_memory = value("stack", memory)
    spawn = value("proto", "floor's own CPU per spawn @16")
    rate_floor = floor("proto", "non-stream requests/s @16 conns")
    proxy_cpu = value("proto", "server CPU per non-stream request")
    proxy_stream_cpu = value("proto", "server CPU per stream request")
    if None not in (stack_cpu, spawn, rate_floor, proxy_cpu):
        assert stack_cpu is not None and spawn is not None and rate_floor is not None
        assert proxy_cpu is not None
        rows.append(Headroom("proto non-stream >= 0.6 x floor", "ms CPU/request",
                             1000 / (0.6 * rate_floor), stack_cpu, spawn, proxy_cpu))
    kids = value("proto", "children's CPU per non-stream request")
    client_cpu = value("proto", "load client's CPU per non-stream request")
    cores = os.cpu_count() or 1
    if None not in (stack_cpu, spawn, rate_floor, proxy_cpu, kids, client_cpu) and cores > 1:
        assert stack_cpu is not None and spawn is not None and rate_floor is not None
        assert proxy_cpu is not None and kids is not None and client_cpu is not None
        # Several proxy processes on one port could use every core, but the children and the
        # load client need CPU too: the whole machine's budget per request.
        rows.append(Headroom(f"  same, any number of processes ({cores} cores)",
                             "ms CPU/request", cores * 1000 / (0.6 * rate_floor), stack_cpu,
                             spawn + kids + client_cpu, proxy_cpu + kids + client_cpu))
    if None not in (stack_stream_cpu, spawn, rate_floor, proxy_stream_cpu):
        assert stack_stream_cpu is not None and spawn is not None and rate_floor is not None
        assert proxy_stream_cpu is not None
        rows.append(Headroom("proto stream >= 0.55 x floor", "ms CPU/request",
                             1000 / (0.55 * rate_floor), stack_stream_cpu, spawn,
                             proxy_stream_cpu))
    client = value("app-server", "floor's own CPU per turn @64")
    proxy_cpu64 = value("app-server", "server CPU per turn @64")
    if None not in (stack_cpu64, client, proxy_cpu64):
        assert stack_cpu64 is not None and client is not None and proxy_cpu64 is not None
        rows.append(Headroom("app-server >= 1,500 turns/s @64", "ms CPU/turn", 1000 / 1500,
                             stack_cpu64, client, proxy_cpu64))
    for group, allowed, name in (("proto", 0.8, "first content p50, 1 conn"),
                                 ("app-server", 0.5, "first content p50, warm worker")):
        total, base = value(group, name), floor(group, name)
        if stack_first is not None and total is not None and base is not None:
            rows.append(Headroom(f"{group} first content <= floor + {allowed} ms", "ms",
                                 allowed, stack_first, 0.0, total - base))
    for group in ("proto", "app-server"):
        total = value(group, memory)
        if stack_memory is not None and total is not None:
            rows.append(Headroom(f"{group} memory per open stream <= 30 KiB", "KiB", 30.0,
                                 stack_memory, 0.0, total))
    return rows


def headroom_table(rows: list[Headroom]) -> str:
    head = ["target", "budget", "stack", "floor's work", "left for the proxy",
            "proxy's own now", "unit"]
    lines = [head] + [[r.target, f"{r.budget:.2f}", f"{r.stack:.2f}", f"{r.floor_work:.2f}",
                       f"{r.left:.2f}", f"{r.proxy_own:.2f}", r.unit] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True)))
                     for line in lines)


def _stamp(reply: Reply) -> int:
    text = reply.first_chunk
    at = text.find(b'"content":"@')
    if at < 0:
        raise BenchError("the first content carries no worker stamp")
    digits = text[at + 12:].split(b" ", 1)[0]
    return int(digits)


# ------------------------------------------------------------------------------------ output


def median_figures(runs: list[list[Figure]]) -> list[Figure]:
    out: list[Figure] = []
    for index, figure in enumerate(runs[0]):
        column = [run[index] for run in runs]
        merged = Figure(**{**asdict(figure), "runs": [f.value for f in column]})
        merged.value = statistics.median(f.value for f in column)
        floors_ = [f.floor for f in column if f.floor is not None]
        merged.floor = statistics.median(floors_) if floors_ else None
        compares = [f.compare for f in column if f.compare is not None]
        merged.compare = statistics.median(compares) if compares else None
        out.append(merged)
    return out


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("ms", "KiB"):
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def table(figures: list[Figure], compare: bool) -> str:
    head = ["figure", "proxy", "floor", "ratio/excess", "target", "unit"]
    if compare:
        head.insert(2, "compare")
    rows = [head]
    for f in figures:
        if f.ratio is not None:
            rel = f"x {f.ratio:.2f}"
        elif f.excess is not None:
            rel = f"+ {f.excess:,.2f}"
        else:
            rel = "-"
        row = [f"{f.group}: {f.name}", fmt(f.value, f.unit), fmt(f.floor, f.unit), rel, f.target,
               f.unit]
        if compare:
            row.insert(2, fmt(f.compare, f.unit))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths, strict=True))) for r in rows]
    notes = [f"  {f.group}: {f.name}: {f.note}" for f in figures if f.note]
    return "\n".join([*lines, "notes:", *notes])


async def one_run(args: argparse.Namespace, workdir: Path) -> list[Figure]:
    sizes = Sizes.make(args.quick)
    compare = Target(args.compare, args.compare_key, args.compare_model) if args.compare else None
    figures: list[Figure] = []
    if args.only in (None, "proto"):
        figures += await proto(workdir, sizes, compare, args.compare_pid)
    if args.only in (None, "app-server"):
        figures += await appserver(workdir, sizes)
    if args.only in (None, "stack"):
        figures += await stack(workdir, sizes)
    return figures


async def main(args: argparse.Namespace) -> int:
    if args.real_codex:
        import realcodex

        return await realcodex.main(args)
    runs: list[list[Figure]] = []
    with tempfile.TemporaryDirectory(prefix="quartproxy-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "work").mkdir()
        for index in range(args.runs):
            started = time.monotonic()
            runs.append(await one_run(args, workdir))
            print(f"run {index + 1}/{args.runs}: {time.monotonic() - started:.0f} s",
                  file=sys.stderr)
    figures = median_figures(runs)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; "
          f"medians of {args.runs} run(s){' (--quick)' if args.quick else ''}")
    print(table(figures, args.compare is not None))
    rows = headroom(figures, Sizes.make(args.quick).open_streams)
    if rows:
        print("what each target leaves for the proxy's own work (same run):")
        print(headroom_table(rows))
    if args.json:
        doc = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0],
                           "load": os.getloadavg()},
               "quick": args.quick, "runs": args.runs, "compare": args.compare,
               "figures": [f.row() for f in figures],
               "headroom": [r.row() for r in rows]}
        await trio.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a small version of everything: fails on errors, never on timing")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--only", choices=["proto", "app-server", "stack"],
                        help="one group only (stack: the HTTP stack alone)")
    parser.add_argument("--compare", metavar="URL",
                        help="also load another OpenAI-compatible server (http://host:port)")
    parser.add_argument("--compare-key", default="x", help="bearer key for --compare")
    parser.add_argument("--compare-model", default="codex-5", help="model for --compare")
    parser.add_argument("--compare-pid", type=int, help="pid of --compare, for its memory")
    parser.add_argument("--real-codex", metavar="PATH",
                        help="measure the real codex (app-server) instead; see realcodex.py")
    parser.add_argument("--caps", default="1,4,8,16,32",
                        help="--real-codex: PROXY_WORKER_MAX_TURNS values to compare")
    parser.add_argument("--workers", default="2",
                        help="--real-codex: PROXY_WORKERS values to compare")
    parser.add_argument("--keep-work", action="store_true",
                        help="--real-codex: keep .bench-work (CODEX_HOME) for inspection")
    parser.add_argument("--requests", type=int, default=1000,
                        help="--real-codex: requests for the RSS/CODEX_HOME growth check")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        sys.exit(trio.run(main, parse_args()))
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
