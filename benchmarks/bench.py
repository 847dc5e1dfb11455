#!/usr/bin/env python3
"""Proxy benchmarks, each beside its physical floor, measured in one run on this machine.

The floor of this product is spawning, talking to and reaping one child per request, so every
figure is printed next to the same work done without the proxy (same child, same concurrency)
and as a ratio. The child is ``fastchild.c`` (compiled here with the system C compiler): the
cheapest possible codex stand-in, so that what remains is the proxy's own cost.

Run with ``nox -s bench`` (or ``python benchmarks/bench.py [--quick]``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import trio

HERE = Path(__file__).resolve().parent
KEY = "bench-key"
SUBMISSION = b'{"id":"1","op":{"type":"user_input","items":[{"type":"text","text":"hi"}]}}\n'


def build_child(workdir: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("bench: a C compiler (cc/gcc) is needed to build benchmarks/fastchild.c")
    out = workdir / "fastchild"
    subprocess.run([compiler, "-O2", "-o", str(out), str(HERE / "fastchild.c")], check=True)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, child: Path, workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ, "PROXY_API_KEY": KEY, "PORT": str(self.port), "CODEX_BIN": str(child),
            "CODEX_HOME": str(workdir / "home"), "PROXY_CODEX_WORKDIR": str(workdir / "work"),
            "TOKEN_LOG_PATH": str(workdir / "usage.ndjson"), "PROXY_MAX_CONCURRENCY": "0",
            "PROXY_SSE_MAX_CONCURRENCY": "0", "PROXY_SSE_KEEPALIVE_MS": "0", "PROXY_BACKEND": "proto", **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quartproxy", "serve"], env=full_env, cwd=workdir,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        sys.exit("bench: server did not start")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------------------ floors


async def child_turn(child: Path, env: dict[str, str], *, first_only: bool = False) -> float:
    """Spawn, submit, read to task_complete (or the first delta), SIGTERM, reap: the floor."""
    start = time.perf_counter()
    proc = await trio.lowlevel.open_process(
        [str(child), "proto"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    await proc.stdin.send_all(SUBMISSION)
    buf = b""
    first_at = 0.0
    target = b"agent_message_delta" if first_only else b"task_complete"
    while target not in buf:
        chunk = await proc.stdout.receive_some(65536)
        if not chunk:
            break
        buf = buf[-4096:] + chunk
    first_at = time.perf_counter() - start
    proc.send_signal(signal.SIGTERM)
    await proc.wait()
    await proc.stdin.aclose()
    await proc.stdout.aclose()
    return first_at


async def floor_rate(child: Path, total: int, concurrency: int) -> float:
    env = {**os.environ, "FASTCHILD_DELTAS": "10"}
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await child_turn(child, env)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return total / (time.perf_counter() - start)


async def floor_lines_per_s(child: Path, deltas: int) -> float:
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
                orjson.loads(line)  # parsing is part of any reader's floor
                lines += 1
            elif b"task_complete" in line:
                done = True
    elapsed = time.perf_counter() - start
    proc.send_signal(signal.SIGTERM)
    await proc.wait()
    return lines / elapsed


# ------------------------------------------------------------------------------------ proxy


def chat(stream: bool) -> dict[str, object]:
    return {"model": "codex-5", "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def proxy_rate(server: Server, total: int, concurrency: int) -> float:
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {KEY}"}) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                resp = await client.post("/v1/chat/completions", json=chat(False))
                assert resp.status_code == 200, resp.text

        await client.get("/healthz")
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return total / (time.perf_counter() - start)


async def proxy_first_chunk(server: Server, count: int) -> list[float]:
    times: list[float] = []
    async with httpx.AsyncClient(base_url=server.base, timeout=60,
                                 headers={"Authorization": f"Bearer {KEY}"}) as client:
        await client.get("/healthz")
        for _ in range(count):
            start = time.perf_counter()
            async with client.stream("POST", "/v1/chat/completions", json=chat(True)) as resp:
                async for chunk in resp.aiter_raw():
                    if b'"content":"word' in chunk:
                        times.append(time.perf_counter() - start)
                        break
    return times


async def proxy_chunks_per_s(server: Server) -> tuple[float, int]:
    async with httpx.AsyncClient(base_url=server.base, timeout=600,
                                 headers={"Authorization": f"Bearer {KEY}"}) as client:
        start = time.perf_counter()
        frames = 0
        marker = b'"content":"word'
        tail = b""
        async with client.stream("POST", "/v1/chat/completions", json=chat(True)) as resp:
            async for chunk in resp.aiter_raw():
                data = tail + chunk
                frames += data.count(marker)
                tail = data[-(len(marker) - 1):]  # too short to hold a whole marker
        return frames / (time.perf_counter() - start), frames


async def memory_per_stream(server: Server, streams: int) -> float:
    before = server.rss_kib()
    opened = trio.Semaphore(0)
    release = trio.Event()
    limits = httpx.Limits(max_connections=streams + 5)
    async with httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {KEY}"}) as client:

        async def hold() -> None:
            async with client.stream("POST", "/v1/chat/completions", json=chat(True)) as resp:
                async for chunk in resp.aiter_raw():
                    if b'"content":"word' in chunk:
                        opened.release()
                        await release.wait()
                        return

        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(hold)
            for _ in range(streams):
                await opened.acquire()
            after = server.rss_kib()
            release.set()
    return (after - before) / streams


# ------------------------------------------------------------------------------------ main


async def main(quick: bool) -> None:
    total, conc, ttfb_n, big, open_streams = (
        (60, 4, 15, 20_000, 20) if quick else (300, 8, 50, 200_000, 100)
    )
    with tempfile.TemporaryDirectory(prefix="quartproxy-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "home").mkdir()
        (workdir / "work").mkdir()
        child = build_child(workdir)
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")

        floor = await floor_rate(child, total, conc)
        floor_first = [await child_turn(child, {**os.environ}, first_only=True)
                       for _ in range(ttfb_n)]
        server = Server(child, workdir, FASTCHILD_DELTAS="10")
        try:
            rate = await proxy_rate(server, total, conc)
            firsts = await proxy_first_chunk(server, ttfb_n)
        finally:
            server.stop()

        floor_lines = await floor_lines_per_s(child, big)
        server = Server(child, workdir, FASTCHILD_DELTAS=str(big))
        try:
            chunk_rate, frames = await proxy_chunks_per_s(server)
        finally:
            server.stop()
        assert frames == big, f"lost frames: {frames} of {big}"

        server = Server(child, workdir, FASTCHILD_DELTAS="3", FASTCHILD_HANG="1")
        try:
            per_stream_kib = await memory_per_stream(server, open_streams)
        finally:
            server.stop()

    ms = 1000
    f_med, p_med = statistics.median(floor_first) * ms, statistics.median(firsts) * ms
    p95 = statistics.quantiles(firsts, n=20)[-1] * ms
    print(f"non-stream requests/s (concurrency {conc}, {total} requests): proxy {rate:.1f}, "
          f"floor spawn+answer+reap {floor:.1f}, ratio {rate / floor:.2f}")
    print(f"time to first content chunk (median of {ttfb_n}): proxy {p_med:.1f} ms "
          f"(p95 {p95:.1f} ms), floor spawn->first delta {f_med:.1f} ms, "
          f"proxy overhead {p_med - f_med:.1f} ms")
    print(f"SSE content chunks/s through one stream ({big} deltas): proxy {chunk_rate:,.0f}, "
          f"floor read+parse child stdout {floor_lines:,.0f}, ratio {chunk_rate / floor_lines:.2f}")
    print(f"memory per open stream ({open_streams} streams): {per_stream_kib:.1f} KiB of "
          "server RSS (children excluded)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    trio.run(main, parser.parse_args().quick)
