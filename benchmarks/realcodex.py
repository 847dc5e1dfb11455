"""``bench.py --real-codex PATH``: the proxy in front of the real ``codex app-server``.

Everything is real except the model: ``fixtures/fake_responses_upstream.py`` answers codex's
Responses calls through a ``[model_providers.fake]`` entry in a private ``CODEX_HOME`` (kept
outside the system temp dir, where codex refuses to create its helper aliases). Measured:

* first content p50 on warm workers, through the proxy, one request at a time;
* the same with a process per request, without the proxy: a small client spawns
  ``codex app-server``, sends initialize, thread/start, turn/start and waits for the first delta
  and the turn's end — the floor of any design that starts codex per request;
* worker RSS (every process under the proxy) and the size of CODEX_HOME after 10 requests and
  after ``--requests`` (default 1,000): threads are deleted, so neither may keep growing;
* turns/s and first content under load for each ``PROXY_WORKER_MAX_TURNS`` in ``--caps``
  (``PROXY_WORKERS`` from ``--workers``), with as many streams in flight as the pool admits.

Not part of CI: it needs a codex install (``npm install @openai/codex@0.169.0``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import floors
import trio
from bench import Figure, Server, check, first_contents, ms, table
from loadgen import run_load

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "fixtures" / "fake_responses_upstream.py"
UPSTREAM_KEY = "bench-upstream-key"
OVERRIDES = [
    'model_provider="fake"', 'model="gpt-5"', 'sandbox_mode="read-only"',
    'approval_policy="never"', "project_doc_max_bytes=0", 'history.persistence="none"',
    "features.shell_snapshot=false", "features.unbounded_connection_retries=false",
    'web_search="disabled"',
]


def start_upstream() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(UPSTREAM), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening "):
        proc.kill()
        raise RuntimeError(f"fake upstream did not start: {line!r}")
    return proc, "http://" + line.split()[1]


def codex_home(base: Path, upstream: str) -> Path:
    home = base / uuid.uuid4().hex[:10] / "codex-home"
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        "[model_providers.fake]\n" 'name = "fake"\n' f'base_url = "{upstream}/v1"\n'
        'wire_api = "responses"\n' 'env_key = "FAKE_UPSTREAM_KEY"\n' "stream_max_retries = 2\n"
    )
    return home


def tree_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(folder) / name).lstat().st_size
    return total


def descendants_rss_kib(pid: int) -> int:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    total = 0
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        todo += children.get(child, [])
        try:
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


async def per_process(codex: Path, home: Path, work: Path, count: int) -> tuple[list[float],
                                                                                  list[float]]:
    """Spawn, initialize, thread/start, turn/start, first delta, done: a process per request."""
    argv = [str(codex), "app-server"]
    for item in OVERRIDES:
        argv += ["-c", item]
    env = {**os.environ, "CODEX_HOME": str(home), "FAKE_UPSTREAM_KEY": UPSTREAM_KEY,
           "RUST_LOG": "error"}
    firsts: list[float] = []
    dones: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            client: floors.DirectClient = await nursery.start(
                floors.DirectClient(argv, env, cwd=str(work)).run)
            thread = await client.turn(wait=lambda t: t.done)
            done = time.perf_counter()
            nursery.cancel_scope.cancel()
        assert thread.first_at is not None
        firsts.append(thread.first_at - start)
        dones.append(done - start)
    return firsts, dones


async def main(args: argparse.Namespace) -> int:
    Server.ready_timeout_s = 300.0  # real workers start slowly on a busy machine
    codex = await trio.Path(args.real_codex).absolute()
    base = ROOT / ".bench-work"
    upstream, upstream_url = start_upstream()
    figures: list[Figure] = []
    notes: dict[str, object] = {}
    try:
        home = codex_home(base, upstream_url)
        work = home.parent / "work"
        work.mkdir()
        env = {"CODEX_FORCE_PROVIDER": "fake", "CODEX_MODEL": "gpt-5",
               "FAKE_UPSTREAM_KEY": UPSTREAM_KEY, "PROXY_BACKEND": "app-server",
               "CODEX_HOME": str(home), "PROXY_CODEX_WORKDIR": str(work),
               # At exactly the pool's capacity a client's next request can arrive before its
               # last turn's thread is released: let it wait for the slot, not get a 429.
               "PROXY_QUEUE_TIMEOUT_MS": "30000"}
        samples = 8 if args.quick else 30
        spawn_first, spawn_done = await per_process(codex, home, work, max(3, samples // 4))
        with Server(codex, home.parent, **env) as server:
            firsts = await first_contents(server.target, samples)
            warm = [ms(r.first_content - r.started) for r in firsts if r.first_content]
            warm_done = [ms(r.seconds) for r in firsts]
            figures += [
                Figure("real codex", "first content p50, warm workers", "ms",
                       statistics.median(warm), statistics.median(ms(s) for s in spawn_first),
                       kind="time", target="<= 60 ms (process per request >= 220 ms)",
                       note="floor column: a process per request (spawn -> first delta), "
                            "no proxy"),
                Figure("real codex", "whole turn p50, warm workers", "ms",
                       statistics.median(warm_done),
                       statistics.median(ms(s) for s in spawn_done), kind="time",
                       note="floor column: a process per request, spawn -> turn/completed"),
            ]
            print(f"first content warm {statistics.median(warm):.1f} ms, per process "
                  f"{ms(statistics.median(spawn_first)):.1f} ms", file=sys.stderr)
            raw = server.target.chat(False)
            _, replies = await run_load(server.target, raw, total=10, concurrency=2)
            check(replies, "real codex x10")
            rss10, home10 = descendants_rss_kib(server.proc.pid), tree_size(home)
            total = 40 if args.quick else args.requests
            _, replies = await run_load(server.target, raw, total=total, concurrency=8)
            check(replies, f"real codex x{total}")
            await trio.sleep(1)  # the last thread deletions
            rss_n, home_n = descendants_rss_kib(server.proc.pid), tree_size(home)
            print(f"rss {rss10} -> {rss_n} KiB, home {home10} -> {home_n} B", file=sys.stderr)
            figures += [
                Figure("real codex", f"worker RSS after 10 / after {total + 10} requests",
                       "KiB", rss_n, rss10, kind="time", target="within a few MB"),
                Figure("real codex", f"CODEX_HOME size after 10 / after {total + 10}",
                       "KiB", home_n / 1024, home10 / 1024, kind="time",
                       target="within a few MB"),
            ]
        for workers in [int(w) for w in args.workers.split(",")]:
            for cap in [int(c) for c in args.caps.split(",")]:
                inflight = workers * cap
                env_cap = {**env, "PROXY_WORKERS": str(workers),
                           "PROXY_WORKER_MAX_TURNS": str(cap)}
                try:
                    server = Server(codex, home.parent, **env_cap)
                except Exception as exc:  # report it, and go on with the other sizes
                    print(f"{workers}x{cap}: {exc}", file=sys.stderr)
                    continue
                with server:
                    target = server.target
                    await run_load(target, target.chat(True), total=inflight, concurrency=inflight)
                    count = max(inflight * (2 if args.quick else 6), 12)
                    rate, replies = await run_load(target, target.chat(True), total=count,
                                                   concurrency=inflight)
                    check(replies, f"real codex cap {cap}")
                    first = [ms(r.first_content - r.started) for r in replies if r.first_content]
                    figures.append(Figure(
                        "real codex", f"{workers} worker(s) x cap {cap}: turns/s "
                        f"({inflight} in flight)", "turns/s", rate, None,
                        note=f"first content p50 {statistics.median(first):.0f} ms, "
                             f"p95 {statistics.quantiles(first, n=20)[-1]:.0f} ms"))
                    print(figures[-1].name, f"{rate:.1f}", figures[-1].note, file=sys.stderr)
                    notes[f"{workers}x{cap}"] = {"turns_s": rate,
                                                 "first_p50_ms": statistics.median(first),
                                                 "first_p95_ms":
                                                     statistics.quantiles(first, n=20)[-1]}
    finally:
        upstream.terminate()
        upstream.wait()
        if not args.keep_work:
            shutil.rmtree(base, ignore_errors=True)
    print(f"codex: {codex}")
    print(table(figures, False))
    if args.json:
        doc = {"codex": str(codex), "figures": [f.row() for f in figures], "caps": notes}
        await trio.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0
