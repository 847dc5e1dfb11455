#!/usr/bin/env python3
"""How long ``/v1/usage`` takes over a large usage log (the store behind it, without HTTP).

Writes N usage records (default 1,000,000, spread over 30 days, shaped like the proxy's own)
through the real writer with its default size rotation, then times queries the way the route
runs them (:meth:`UsageStore.query`, :meth:`UsageStore.tail`):

* cold: a fresh store with no index (what a just-started replica answers with): one-hour
  windows, on the hour and across two hours;
* the background index build over all files;
* warm: the same windows, a day by hour, and everything by day;
* ``/v1/usage/raw`` tails;
* for comparison, the whole-scan way (read every file, parse every line, sum).

Each figure is the median of several runs (the files are in the page cache after the first).
Run with ``nox -s bench_usage`` or ``python benchmarks/usage_query.py [--records N]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from quartproxy.accounting import HOUR_MS, aggregate, iso_of  # noqa: E402
from quartproxy.logfiles import log_files  # noqa: E402
from quartproxy.observability import NdjsonLog  # noqa: E402
from quartproxy.usage_store import UsageStore  # noqa: E402

START_MS = 1_795_478_400_000  # 2026-11-24T00:00:00Z
GOAL_MS = 300.0


def records(count: int, days: float, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    step = days * 86_400_000 / count
    now = float(START_MS)
    out: list[bytes] = []
    for index in range(count):
        now += rng.expovariate(1 / step)
        prompt = rng.randint(200, 6000)
        completion = rng.randint(5, 900)
        out.append(orjson.dumps({
            "ts": iso_of(int(now)), "req_id": f"{index:032x}", "route": "/v1/chat/completions",
            "model": "codex-5", "effective_model": "gpt-5", "stream": index % 3 != 0,
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "cached_tokens": prompt // 2,
            "reasoning_tokens": completion // 4, "counts_source": "codex",
            "finish_reason": "stop", "outcome": "ok", "duration_ms": 812.4, "ttft_ms": 301.2,
            "status": 200, "user_agent": "OpenAI/Python 1.99.9", "child_exit": None,
        }) + b"\n")
    return out


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times: list[float] = []
    result: Any = None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-bytes", type=int, default=64 * 1024 * 1024,
                        help="PROXY_USAGE_LOG_MAX_BYTES for the generated log")
    parser.add_argument("--skip-whole-scan", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="usage-bench-") as tmp:
        path = Path(tmp) / "usage.ndjson"
        lines = records(args.records, args.days)
        size = sum(len(line) for line in lines)
        log = NdjsonLog(path, max_bytes=args.max_bytes, keep=size // max(1, args.max_bytes) + 2)
        started = time.perf_counter()
        for index in range(0, len(lines), 500):
            log._append(b"".join(lines[index:index + 500]))
        write_s = time.perf_counter() - started
        files = log_files(path)
        print(f"usage log: {args.records:,} records over {args.days:g} days, "
              f"{size / 2**20:.0f} MiB in {len(files)} files "
              f"(rotation at {args.max_bytes / 2**20:.0f} MiB); written in {write_s:.2f} s")
        del lines

        middle = START_MS + int(args.days * 86_400_000 / 2)
        hour = middle - middle % HOUR_MS
        windows = {
            "one hour, on the hour": (hour, hour + HOUR_MS, "hour"),
            "one hour, across two hours": (hour + 17 * 60_000, hour + 77 * 60_000, "hour"),
        }
        everything = (0, 1 << 62, "day")

        print("\ncold (no index yet: bisection):")
        for name, (start, end, group) in windows.items():
            ms, summary = timed(lambda s=start, e=end, g=group: UsageStore(path).query(s, e, g),
                                args.runs)
            print(f"  {name:<34} {ms:8.1f} ms  ({summary.totals.requests:,} records)")
        cold_hour = timed(lambda: UsageStore(path).query(*windows["one hour, on the hour"]),
                          args.runs)[0]

        store = UsageStore(path)
        started = time.perf_counter()
        while store.refresh():
            pass
        print(f"\nindex build (background task, all files): "
              f"{(time.perf_counter() - started) * 1000:.0f} ms")

        print("\nwarm (indexed):")
        day = (hour - hour % 86_400_000, hour - hour % 86_400_000 + 86_400_000, "hour")
        warm = {**windows, "one day by hour": day, "everything by day": everything}
        for name, (start, end, group) in warm.items():
            ms, summary = timed(lambda s=start, e=end, g=group: store.query(s, e, g), args.runs)
            print(f"  {name:<34} {ms:8.1f} ms  ({summary.totals.requests:,} records)")

        print("\n/v1/usage/raw:")
        for limit in (100, 10_000):
            ms, _ = timed(lambda n=limit: store.tail(n), args.runs)
            print(f"  limit={limit:<28} {ms:8.1f} ms")

        if not args.skip_whole_scan:
            def whole_scan() -> int:
                parsed = [orjson.loads(line) for file in log_files(path)
                          for line in file.read_bytes().splitlines()]
                return aggregate(parsed, group="day", start=0, end=1 << 62).totals.requests

            ms, count = timed(whole_scan, 1)
            print(f"\nwhole scan (read and parse every record, then sum): {ms:8.0f} ms "
                  f"({count:,} records)")

        verdict = "meets" if cold_hour < GOAL_MS else "MISSES"
        print(f"\none-hour window over {args.records:,} records: {cold_hour:.1f} ms cold "
              f"({verdict} the {GOAL_MS:.0f} ms goal)")
        return 0 if cold_hour < GOAL_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
