"""Reading usage records back for ``/v1/usage`` and ``/v1/usage/raw``, fast over large logs.

The records are NDJSON lines appended in time order to ``TOKEN_LOG_PATH`` and its rotated
predecessors (``.1`` newest … ``.N`` oldest, see :mod:`quartproxy.logfiles`). Reading a whole
log per request is what the old product did; at a million records that is seconds of JSON
parsing per query. Two facts make it cheap instead:

1. **Hourly index, built once, extended incrementally.** For every file (keyed by device and
   inode, so a rename by rotation keeps its index) the store keeps, per UTC hour, the sums
   (requests, prompt/completion/total tokens) and the byte range holding that hour's lines, plus
   how far the file has been indexed. A query takes every hour that lies wholly inside the
   window from the index — no file access — and reads records only in the (at most two) hours
   cut by the window's edges, from just before the window's start (found by bisection, below)
   to just past its end. Memory: one small entry per hour of history (~9k a year). The index is
   filled by a background task (a worker thread, 8 MiB per step so queries interleave) at
   start-up and then every few seconds; queries never index, so their cost does not depend on
   how far behind the index is.

2. **Binary search where the index does not help.** Records are appended in time order, so in
   the unindexed tail of a file (all of it, on a cold start) the first line of the window is
   found by bisecting byte offsets, reading one line per probe, and the scan stops at the first
   line past the window; a file whose first and last records lie outside the window is not
   read at all. A cold one-hour query therefore reads about one hour of records, however large
   the log. Appends from several replicas, or a clock step, can put a record slightly out of
   order; the search starts 5 minutes before the window and the scan ends 5 minutes after it,
   so records up to 5 minutes out of place are still counted (whole indexed hours are exact
   whatever the order).

A file that shrank, or whose first bytes changed (a new file reusing an inode number), is
indexed afresh. If rotation renames files during a query, the query is retried (up to three
times), so a rename does not make it read a file twice or miss one. Everything here is
blocking file I/O: the routes call it through ``trio.to_thread``, and a lock serialises
queries and index steps (both are short).

``/v1/usage/raw`` reads backwards from the end of the newest files until it has ``limit``
records, so its cost follows ``limit``, not the size of the log.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio
import trio_util

from .accounting import HOUR_MS, Summary, Tally, record_fields
from .logfiles import log_files

log = logging.getLogger("quartproxy.usage")

SLACK_MS = 5 * 60_000  # how far out of order a record may be and still be found by bisection
READ_BLOCK = 1 << 20
INDEX_STEP_BYTES = 8 << 20  # one background index step
REFRESH_INTERVAL_S = 5.0
HEAD_BYTES = 64
PROBE_BYTES = 16 << 10  # one bisection probe reads this much, and parses one line of it
BISECT_STOP = 64 << 10  # bisection stops when the range is this small; the scan does the rest
FOREVER = 1 << 62

FileKey = tuple[int, int]  # (st_dev, st_ino)


def _parse(line: bytes) -> tuple[int, int, int, int] | None:
    try:
        return record_fields(orjson.loads(line))
    except orjson.JSONDecodeError:
        return None


@dataclass(slots=True)
class HourSpan:
    tally: Tally
    first: int  # offset of the first line of this hour
    end: int  # offset just past the last line of this hour


@dataclass(slots=True)
class FileIndex:
    head: bytes  # the file's first bytes when indexed: tells a reused inode apart
    scanned: int = 0  # bytes [0, scanned) are indexed, whole lines only
    hours: dict[int, HourSpan] = field(default_factory=dict)  # epoch ms // HOUR_MS -> span


@dataclass(slots=True)
class _Open:
    path: Path
    fd: int
    key: FileKey
    size: int


class UsageStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._index: dict[FileKey, FileIndex] = {}
        # Background passes that caught up with every file (start-up warm-up done: >= 1).
        self.caught_up: trio_util.AsyncValue[int] = trio_util.AsyncValue(0)

    # ------------------------------------------------------------------ files

    def _open_all(self) -> list[_Open]:
        opened: list[_Open] = []
        seen: set[FileKey] = set()
        for path in log_files(self.path):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                os.close(fd)
                continue
            seen.add(key)
            opened.append(_Open(path, fd, key, st.st_size))
        return opened

    def _same_files(self, opened: list[_Open]) -> bool:
        keys: list[FileKey] = []
        for path in log_files(self.path):
            try:
                st = os.stat(path)
            except OSError:
                continue
            keys.append((st.st_dev, st.st_ino))
        return keys == [item.key for item in opened]

    def indexed_bytes(self) -> int:
        """How many bytes of the log the index covers (for tests and diagnostics)."""
        with self._lock:
            return sum(index.scanned for index in self._index.values())

    def _index_of(self, item: _Open) -> FileIndex:
        head = os.pread(item.fd, HEAD_BYTES, 0)
        index = self._index.get(item.key)
        if index is None or item.size < index.scanned or not head.startswith(index.head):
            index = self._index[item.key] = FileIndex(head=head)
        elif len(head) > len(index.head):
            index.head = head
        return index

    # ------------------------------------------------------------------ index

    def refresh(self, budget: int = INDEX_STEP_BYTES) -> bool:
        """Index up to ``budget`` more bytes (oldest files first); True if more is waiting."""
        step = min(budget, INDEX_STEP_BYTES)
        with self._lock:
            opened = self._open_all()
            try:
                for item in opened:
                    index = self._index_of(item)
                    while index.scanned < item.size:
                        if budget <= 0:
                            return True
                        used = self._index_step(item, index, step)
                        if used == 0:
                            break  # only a line still being written is left
                        budget -= used
                live = {item.key for item in opened}
                for key in [key for key in self._index if key not in live]:
                    del self._index[key]
                return False
            finally:
                for item in opened:
                    os.close(item.fd)

    @staticmethod
    def _index_step(item: _Open, index: FileIndex, limit: int) -> int:
        start = index.scanned
        data = os.pread(item.fd, min(limit, item.size - start), start)
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) == limit:
                index.scanned += len(data)  # a runaway line longer than a step: skipped
                return len(data)
            return 0
        hours = index.hours
        offset = start
        for line in data[:cut].split(b"\n"):
            end = offset + len(line) + 1
            fields = _parse(line)
            if fields is not None:
                ts_ms, prompt, completion, total = fields
                hour = ts_ms // HOUR_MS
                span = hours.get(hour)
                if span is None:
                    span = hours[hour] = HourSpan(Tally(), offset, end)
                span.end = end
                span.tally.add(prompt, completion, total)
            offset = end
        index.scanned = start + cut + 1
        return cut + 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the index warm: everything at start-up, then what was appended since."""
        task_status.started()
        while True:
            try:
                more = await trio.to_thread.run_sync(self.refresh)
            except OSError as exc:
                log.warning("cannot index usage records: %s", exc)
                more = False
            if not more:
                self.caught_up.value += 1
                await trio.sleep(REFRESH_INTERVAL_S)

    # ------------------------------------------------------------------ queries

    def query(self, start: int, end: int, group: str) -> Summary:
        """Usage with ``start <= ts < end`` (epoch ms), summed per ``group`` (hour|day)."""
        for _ in range(3):
            with self._lock:
                opened = self._open_all()
                try:
                    summary = Summary(group)
                    for item in opened:
                        index = self._index_of(item)
                        self._from_index(item, index, start, end, summary)
                        if item.size > index.scanned:
                            self._from_range(item, index.scanned, start, end, summary)
                    if self._same_files(opened):
                        return summary
                finally:
                    for item in opened:
                        os.close(item.fd)
        return summary  # files kept rotating under us: the last reading is still a fair one

    def _from_index(
        self, item: _Open, index: FileIndex, start: int, end: int, summary: Summary
    ) -> None:
        for hour, span in index.hours.items():
            low = hour * HOUR_MS
            high = low + HOUR_MS
            if high <= start or low >= end:
                continue
            if start <= low and high <= end:
                summary.add_hour(hour, span.tally)
                continue
            # An hour cut by the window: only its lines near the window are read.
            offset = span.first
            if start > low:
                offset = self._bisect(item.fd, span.first, span.end, start - SLACK_MS)
            stop = min(end, high) + SLACK_MS
            for fields in _records(item.fd, offset, span.end):
                ts_ms = fields[0]
                if ts_ms >= stop:
                    break
                if ts_ms // HOUR_MS == hour and start <= ts_ms < end:
                    summary.add(*fields)

    def _from_range(self, item: _Open, low: int, start: int, end: int, summary: Summary) -> None:
        stop = end + SLACK_MS if end < FOREVER else FOREVER
        first = _probe(item.fd, low, item.size) if low > 0 else _probe_start(item.fd, item.size)
        if first is not None and first[1] >= stop:
            return  # the whole range is later than the window
        last = _last_time(item.fd, item.size)
        if last is not None and last < start - SLACK_MS:
            return  # the whole range is earlier than the window
        offset = self._bisect(item.fd, low, item.size, start - SLACK_MS) if start > 0 else low
        for fields in _records(item.fd, offset, item.size):
            ts_ms = fields[0]
            if ts_ms >= stop:
                return
            if start <= ts_ms < end:
                summary.add(*fields)

    @staticmethod
    def _bisect(fd: int, low: int, high: int, target: int) -> int:
        """A line start in ``[low, high)`` before which every record is older than ``target``
        (records being in time order)."""
        while high - low > BISECT_STOP:
            mid = (low + high) // 2
            probe = _probe(fd, mid, high)
            if probe is None:
                high = mid
                continue
            line_start, ts_ms = probe
            if ts_ms < target:
                low = line_start
            else:
                high = mid
        return low

    def tail(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` records, oldest first."""
        found: list[dict[str, Any]] = []  # newest first
        for path in reversed(log_files(self.path)):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                _last_records(fd, os.fstat(fd).st_size, limit - len(found), found)
            finally:
                os.close(fd)
            if len(found) >= limit:
                break
        found.reverse()
        return found


def _records(fd: int, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Parsed records of the whole lines in ``[start, end)``, in blocks of READ_BLOCK."""
    offset = start
    carry = b""
    while offset < end:
        block = os.pread(fd, min(READ_BLOCK, end - offset), offset)
        if not block:
            return
        offset += len(block)
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        for line in lines:
            fields = _parse(line)
            if fields is not None:
                yield fields


def _probe(fd: int, pos: int, high: int) -> tuple[int, int] | None:
    """``(line start, ts)`` of the first parseable record starting at or after ``pos``."""
    data = os.pread(fd, min(PROBE_BYTES, high - pos + 1), pos - 1)
    newline = data.find(b"\n")
    if newline < 0:
        return None
    offset = pos + newline  # data[0] is at pos - 1
    lines = data[newline + 1:].split(b"\n")
    lines.pop()  # cut off by the probe (or empty)
    for line in lines:
        fields = _parse(line)
        if fields is not None:
            return offset, fields[0]
        offset += len(line) + 1
    return None


def _probe_start(fd: int, high: int) -> tuple[int, int] | None:
    """Like :func:`_probe` for the file's first line (offset 0)."""
    data = os.pread(fd, min(PROBE_BYTES, high), 0)
    offset = 0
    lines = data.split(b"\n")
    lines.pop()
    for line in lines:
        fields = _parse(line)
        if fields is not None:
            return offset, fields[0]
        offset += len(line) + 1
    return None


def _last_time(fd: int, size: int) -> int | None:
    """The ``ts`` of the last parseable whole line within the file's last PROBE_BYTES."""
    low = max(0, size - PROBE_BYTES)
    lines = os.pread(fd, size - low, low).split(b"\n")
    lines.pop()  # after the last newline
    if low > 0 and lines:
        lines.pop(0)  # cut by the probe
    for line in reversed(lines):
        fields = _parse(line)
        if fields is not None:
            return fields[0]
    return None


def _last_records(fd: int, size: int, need: int, found: list[dict[str, Any]]) -> None:
    """Append up to ``need`` records from the end of the file to ``found``, newest first."""
    if need <= 0:
        return
    pos = size
    carry = b""
    partial = True  # the bytes after the last newline: empty, or a line still being written
    want = len(found) + need
    while pos > 0:
        low = max(0, pos - READ_BLOCK)
        buffer = os.pread(fd, pos - low, low) + carry
        pos = low
        lines = buffer.split(b"\n")
        if partial:
            if len(lines) == 1 and pos > 0:
                carry = b""  # all of it still belongs to the unfinished last line
                continue
            lines.pop()
            partial = False
        carry = lines.pop(0) if pos > 0 else b""
        for line in reversed(lines):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                found.append(record)
                if len(found) >= want:
                    return
