"""Usage records on disk: size rotation, and the indexed / bisecting reader checked against a
plain whole-file aggregation of the same records."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from quartproxy import usage_store
from quartproxy.accounting import HOUR_MS, aggregate, iso_of
from quartproxy.logfiles import log_files, rotate_if_needed
from quartproxy.observability import NdjsonLog
from quartproxy.usage_store import UsageStore

T0 = 1_795_497_000_000  # 2026-11-24T05:10:00Z


def make_records(rng: random.Random, count: int, *, disorder_ms: int = 0) -> list[dict[str, Any]]:
    records = []
    now = T0
    for index in range(count):
        now += rng.randint(0, 90_000)
        ts = now - rng.randint(0, disorder_ms) if disorder_ms and rng.random() < 0.2 else now
        prompt, completion = rng.randint(0, 500), rng.randint(0, 80)
        records.append({"ts": iso_of(ts), "req_id": f"r{index}", "prompt_tokens": prompt,
                        "completion_tokens": completion, "total_tokens": prompt + completion})
    return records


def write(log: NdjsonLog, records: list[dict[str, Any]], rng: random.Random) -> None:
    """Append in batches of random size, as the writer task does."""
    index = 0
    while index < len(records):
        size = rng.randint(1, 40)
        log._append(b"".join(orjson.dumps(r) + b"\n" for r in records[index:index + size]))
        index += size


def on_disk(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for file in log_files(path)
            for line in file.read_bytes().splitlines()]


def windows(rng: random.Random, records: list[dict[str, Any]], count: int
            ) -> list[tuple[int, int, str]]:
    last = T0 + len(records) * 90_000
    out: list[tuple[int, int, str]] = [(0, 1 << 62, "day"), (0, 1 << 62, "hour")]
    for _ in range(count):
        start = rng.randint(T0 - HOUR_MS, last)
        if rng.random() < 0.3:
            start -= start % HOUR_MS  # aligned windows take whole hours from the index
        width = rng.choice([HOUR_MS, 3 * HOUR_MS + 17, rng.randint(0, 40 * HOUR_MS)])
        out.append((start, start + width, rng.choice(["hour", "day"])))
    return out


def small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks, probes and the bisection's last range a few lines long, so that small test
    files take many probes and many blocks."""
    monkeypatch.setattr(usage_store, "READ_BLOCK", 4096)
    monkeypatch.setattr(usage_store, "PROBE_BYTES", 1024)
    monkeypatch.setattr(usage_store, "BISECT_STOP", 2048)


def check(store: UsageStore, records: list[dict[str, Any]], cases: list[tuple[int, int, str]]
          ) -> None:
    for start, end, group in cases:
        got = store.query(start, end, group).payload(start=start, end=end)
        want = aggregate(records, group=group, start=start, end=end).payload(start=start, end=end)
        assert got == want, (start, end, group)


# ------------------------------------------------------------------------------ rotation


def test_rotation_keeps_every_line_whole_and_drops_the_oldest(tmp_path: Path) -> None:
    rng = random.Random(1)
    path = tmp_path / "usage.ndjson"
    records = make_records(rng, 3000)
    write(NdjsonLog(path, max_bytes=40_000, keep=1000), records, rng)
    files = log_files(path)
    assert len(files) > 5
    assert all(f.stat().st_size <= 40_000 for f in files)
    assert on_disk(path) == records  # in order, none lost, none torn

    kept = tmp_path / "kept" / "usage.ndjson"
    kept.parent.mkdir()
    write(NdjsonLog(kept, max_bytes=40_000, keep=3), records, rng)
    assert [f.name for f in log_files(kept)] == [
        "usage.ndjson.3", "usage.ndjson.2", "usage.ndjson.1", "usage.ndjson"]
    tail = on_disk(kept)
    assert tail == records[-len(tail):]


def test_max_bytes_zero_never_rotates_and_keep_zero_starts_over(tmp_path: Path) -> None:
    rng = random.Random(2)
    records = make_records(rng, 500)
    never = tmp_path / "never.ndjson"
    write(NdjsonLog(never, max_bytes=0, keep=5), records, rng)
    assert log_files(never) == [never]
    fresh = tmp_path / "fresh.ndjson"
    write(NdjsonLog(fresh, max_bytes=10_000, keep=0), records, rng)
    assert log_files(fresh) == [fresh]
    assert on_disk(fresh) == records[-len(on_disk(fresh)):]


def test_a_smaller_keep_removes_files_left_by_a_larger_one(tmp_path: Path) -> None:
    path = tmp_path / "usage.ndjson"
    for index in range(1, 8):
        (tmp_path / f"usage.ndjson.{index}").write_text('{"ts":1}\n')
    path.write_text('{"ts":2}\n' * 10)
    assert rotate_if_needed(path, incoming=100, max_bytes=100, keep=2)
    assert sorted(p.name for p in tmp_path.glob("usage.ndjson*") if not p.name.endswith("lock")
                  ) == ["usage.ndjson.1", "usage.ndjson.2"]
    assert (tmp_path / "usage.ndjson.1").read_text() == '{"ts":2}\n' * 10


def test_two_writers_on_one_file_rotate_once_per_fill(tmp_path: Path) -> None:
    """Two replicas (two writers) appending to one path: the second one to see a full file
    finds it already rotated under the lock and does not rotate again."""
    path = tmp_path / "usage.ndjson"
    first = NdjsonLog(path, max_bytes=1000, keep=50)
    second = NdjsonLog(path, max_bytes=1000, keep=50)
    path.write_bytes(b"x" * 990 + b"\n")
    line = b'{"ts":"2026-11-24T05:10:00.000Z"}\n'
    # Both decide from the size they saw; only the first rotation happens.
    assert rotate_if_needed(path, incoming=len(line), max_bytes=1000, keep=50)
    first._append(line)
    assert not rotate_if_needed(path, incoming=len(line), max_bytes=1000, keep=50)
    second._append(line)
    assert [f.name for f in log_files(path)] == ["usage.ndjson.1", "usage.ndjson"]
    assert path.read_bytes() == line * 2


async def test_the_writer_task_rotates(tmp_path: Path) -> None:
    path = tmp_path / "usage.ndjson"
    log = NdjsonLog(path, max_bytes=2000, keep=100)
    records = make_records(random.Random(3), 200)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        for index in range(0, len(records), 10):
            for record in records[index:index + 10]:
                log.record(record)
            with trio.fail_after(30):  # a hang guard: one batch at a time, then the next
                await log.written.wait_value(lambda n, want=index + 10: n >= want)
        log.close()
    assert len(log_files(path)) > 3
    assert on_disk(path) == records


# ------------------------------------------------------------------------------ queries


@pytest.mark.parametrize("disorder_ms", [0, 20_000])
def test_queries_match_a_plain_aggregation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disorder_ms: int
) -> None:
    """Cold (bisection only), partly indexed and fully indexed stores all give exactly what a
    whole scan gives, for random windows over rotated files — also with records up to 20 s
    out of order, as several replicas appending to one file produce."""
    rng = random.Random(4 + disorder_ms)
    path = tmp_path / "usage.ndjson"
    records = make_records(rng, 4000, disorder_ms=disorder_ms)
    write(NdjsonLog(path, max_bytes=100_000, keep=1000), records, rng)
    assert len(log_files(path)) > 3
    small_reads(monkeypatch)
    cases = windows(rng, records, 80)
    check(UsageStore(path), records, cases)
    partly = UsageStore(path)
    assert partly.refresh(300_000)  # more is waiting
    check(partly, records, cases)
    indexed = UsageStore(path)
    assert not indexed.refresh(1 << 40)
    check(indexed, records, cases)


def test_bisection_allows_for_records_out_of_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every other record a minute late (two replicas, one with a slow disk): a query still
    finds every record of its window, cold or indexed (the window's edges cut hours), because
    the search starts early enough."""
    small_reads(monkeypatch)
    path = tmp_path / "usage.ndjson"
    records = [{"ts": iso_of(T0 + index * 1000 - (60_000 if index % 2 else 0)),
                "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
               for index in range(10_000)]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    rng = random.Random(9)
    cases = [(start, start + rng.randint(1000, HOUR_MS), "hour")
             for start in (T0 + rng.randint(0, 10_000_000) for _ in range(40))]
    check(UsageStore(path), records, cases)
    indexed = UsageStore(path)
    indexed.refresh(1 << 40)
    check(indexed, records, cases)


def test_index_follows_appends_rotation_and_rewrites(tmp_path: Path) -> None:
    rng = random.Random(5)
    path = tmp_path / "usage.ndjson"
    log = NdjsonLog(path, max_bytes=60_000, keep=1000)
    records = make_records(rng, 1500)
    store = UsageStore(path)
    cases = windows(rng, records, 40)
    written: list[dict[str, Any]] = []
    for part in (records[:400], records[400:410], records[410:1500]):
        write(log, part, rng)
        written += part
        store.refresh(1 << 40)
        check(store, written, cases)
    # A line still being written is not counted until it is whole.
    with open(path, "ab") as fh:
        fh.write(b'{"ts":"2026-11-24T05:10')
    check(store, written, cases)
    # The live file replaced by a different one (a new file reusing the inode, or truncated).
    for file in log_files(path):
        file.unlink()
    again = make_records(rng, 300)
    write(log, again, rng)
    check(store, again, cases)
    path.write_bytes(b"")
    check(store, [], cases)


def test_unreadable_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "usage.ndjson"
    good = make_records(random.Random(6), 50)
    lines = [orjson.dumps(r) for r in good]
    lines[10:10] = [b"not json", b"[1,2]", b'{"ts":"later"}', b""]
    path.write_bytes(b"\n".join(lines) + b"\n")
    store = UsageStore(path)
    check(store, good, [(0, 1 << 62, "hour")])
    store.refresh()
    check(store, good, [(0, 1 << 62, "hour")])
    # /v1/usage/raw shows the objects as they are (only non-objects and broken lines go).
    assert store.tail(1000) == [*good[:10], {"ts": "later"}, *good[10:]]


def test_tail_reads_backwards_across_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setattr(usage_store, "READ_BLOCK", 1000)
    rng = random.Random(7)
    path = tmp_path / "usage.ndjson"
    records = make_records(rng, 800)
    write(NdjsonLog(path, max_bytes=20_000, keep=1000), records, rng)
    store = UsageStore(path)
    for limit in (1, 7, 99, 300, 799, 800, 5000):
        assert store.tail(limit) == records[-limit:]
    with open(path, "ab") as fh:
        fh.write(b'{"ts":"2026-11-24T05:10:00.000Z","req_id":"half')
    assert store.tail(3) == records[-3:]
    assert UsageStore(tmp_path / "missing.ndjson").tail(5) == []


def test_a_line_longer_than_a_read_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_store, "READ_BLOCK", 512)
    monkeypatch.setattr(usage_store, "PROBE_BYTES", 256)
    monkeypatch.setattr(usage_store, "BISECT_STOP", 256)
    path = tmp_path / "usage.ndjson"
    records = make_records(random.Random(8), 300)
    for index in (15, 150, 151, 290):
        records[index]["user_agent"] = "u" * 5000
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    store = UsageStore(path)
    cases = windows(random.Random(9), records, 30)
    check(store, records, cases)
    store.refresh()
    check(store, records, cases)
    assert store.tail(200) == records[-200:]
    assert os.path.getsize(path) > 5000


async def test_records_made_between_writes_go_out_together(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One write (a trip to a worker thread) per WRITE_INTERVAL_S at most: records made in
    between are written together, none is lost, and none waits longer than the interval."""
    from quartproxy import observability

    path = tmp_path / "usage.ndjson"
    log = NdjsonLog(path)
    writes: list[int] = []
    append = log._append

    def counting(data: bytes) -> None:
        writes.append(data.count(b"\n"))
        append(data)

    monkeypatch.setattr(log, "_append", counting)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.record({"n": 0})
        await log.written.wait_value(1)
        started = trio.current_time()
        for n in range(1, 6):
            log.record({"n": n})
            await trio.sleep(observability.WRITE_INTERVAL_S / 10)
        await log.written.wait_value(6)
        assert trio.current_time() - started <= observability.WRITE_INTERVAL_S * 2
        log.close()
    assert writes == [1, 5]
    assert [orjson.loads(line)["n"] for line in path.read_text().splitlines()] == list(range(6))
