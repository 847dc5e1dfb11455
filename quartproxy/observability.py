"""Logs, usage records and metrics.

* Access log: one line per finished or aborted HTTP request on stdout (JSON by default), never
  the key, never the prompt.
* One record is one line, whatever a client puts in a path, a header or a model id: every
  formatter escapes what could end a line or fake one (see :func:`escape_text` and
  :func:`json_line`). A forged line in an access log is how attacks are hidden.
* Usage records (and, in dev, the proto event log): NDJSON lines (escaped like the logs, see
  :func:`json_line`) appended by a single writer task in a worker thread, so a slow disk never
  stalls the event loop and concurrent requests never interleave half lines (each line is one
  ``write`` on an ``O_APPEND`` descriptor, which also keeps lines whole when several processes
  share the file).
* Metrics: prometheus_client, because its text exposition format and histogram maths are not
  ours to reinvent; each app gets its own registry so tests can run several apps in one process.
  Every label has a bounded set of values: routes are the app's rules, models are the ids the
  catalog accepts (anything else is ``other``; a client's string never becomes a label),
  workers are slot indexes (not their per-restart names), causes and codes are the proxy's own.
  Worker figures (readiness, restarts, turns in flight, RSS from ``/proc``) are read from the
  pool at scrape time by :class:`WorkerCollector`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import orjson
import trio
import trio_util
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .logfiles import rotate_if_needed

log = logging.getLogger("quartproxy")
access_logger = logging.getLogger("quartproxy.access")

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def escape_text(value: str, *, quoted: bool = False) -> str:
    """``value`` for a plain-text log line: every character that is not printable (controls,
    line and paragraph separators, bidi overrides) becomes an escape, so what a client sent
    cannot break the line or visually reorder it. ``quoted`` also escapes backslash and double
    quote, for values shown inside a quoted field."""
    specials = '\\"' if quoted else ""
    if value.isprintable() and not any(char in value for char in specials):
        return value
    out: list[str] = []
    for char in value:
        if char in specials:
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def json_line(payload: Any) -> str:
    """One JSON record on one line. orjson escapes C0 controls; DEL, C1 controls (NEL), the
    line and paragraph separators and bidi overrides are legal raw in JSON but break
    line-oriented readers (``str.splitlines``, some shippers) or reorder what a terminal shows,
    so every non-printable character is escaped as ``\\uXXXX`` too. The decoded values are
    unchanged: this only picks another spelling inside JSON strings."""
    text = orjson.dumps(payload, default=str).decode()
    if text.isprintable():
        return text
    out: list[str] = []
    for char in text:
        code = ord(char)
        if char.isprintable():
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:  # a surrogate pair, as JSON spells characters beyond the BMP
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out)


_iso_second: tuple[int, str] = (-1, "")


def utc_now_iso() -> str:
    """Now as ``2025-01-31T12:00:00.123Z``. Every request stamps two or three records (access
    log, usage record, log lines), so the formatted second is kept and only the milliseconds
    are added (a quarter of ``datetime.isoformat``'s cost)."""
    global _iso_second
    now = time.time()
    second = int(now)
    cached, text = _iso_second
    if cached != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _iso_second = (second, text)
    return f"{text}.{int((now - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": utc_now_iso(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json_line(payload)


class TextFormatter(logging.Formatter):
    """The app log in text form: the message is escaped to one line; a traceback keeps its
    lines, each indented, so no line of it can pass for a record of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_text(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + escape_text(line) for line in text.splitlines())


class AccessJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json_line(getattr(record, "fields", {}))


class AccessTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        f: Mapping[str, Any] = {
            key: escape_text(value, quoted=True) if isinstance(value, str) else value
            for key, value in getattr(record, "fields", {}).items()
        }
        return (
            f'{f.get("ts")} {f.get("req_id")} "{f.get("method")} {f.get("route")}" '
            f'{f.get("status")} {f.get("dur_ms")}ms stream={f.get("stream")} '
            f'model={f.get("model")} outcome={f.get("outcome")}'
        )


def configure_logging(*, fmt: str, verbose: bool) -> None:
    """App logs to stderr, the access log to stdout; both JSON unless ``fmt == "text"``."""
    root = logging.getLogger("quartproxy")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(err)
    access_logger.handlers.clear()
    access_logger.propagate = False
    access_logger.setLevel(logging.INFO)
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(AccessJsonFormatter() if fmt == "json" else AccessTextFormatter())
    access_logger.addHandler(out)


def write_access(fields: dict[str, Any]) -> None:
    access_logger.info("access", extra={"fields": fields})


# Records reach the file at most this long after they were made; a burst in between is one write.
WRITE_INTERVAL_S = 0.02


class NdjsonLog:
    """Appends records (usage, proto events) from one writer task; :meth:`record` never
    blocks. With ``max_bytes`` the file rotates by size (see :mod:`quartproxy.logfiles`),
    in the writer's own thread call, so no append of this process races a rotation."""

    def __init__(self, path: Path, *, max_bytes: int = 0, keep: int = 0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._send, self._receive = trio.open_memory_channel[bytes](10_000)
        self.dropped = 0
        self.written: trio_util.AsyncValue[int] = trio_util.AsyncValue(0)  # records on disk

    def record(self, fields: dict[str, Any]) -> None:
        try:
            self._send.send_nowait(json_line(fields).encode() + b"\n")
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        task_status.started()
        last_write = -math.inf
        async with self._receive:
            while True:
                try:
                    first = await self._receive.receive()
                except trio.EndOfChannel:
                    return
                # At most one write per WRITE_INTERVAL_S: each is a trip to a worker thread,
                # which under load cost more than the records' own work. Shielded, so that a
                # record already taken is written even if the server is cancelled meanwhile.
                wait = last_write + WRITE_INTERVAL_S - trio.current_time()
                if wait > 0:
                    with trio.CancelScope(shield=True):
                        await trio.sleep(wait)
                batch = [first]
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await trio.to_thread.run_sync(self._append, b"".join(batch))
                last_write = trio.current_time()
                self.written.value += len(batch)

    def record_line(self, request_id: str, line: bytes) -> None:
        """One raw line a backend read (the proto event log)."""
        self.record({"ts": utc_now_iso(), "req_id": request_id,
                     "line": line.decode("utf-8", "replace")})

    def close(self) -> None:
        self._send.close()

    def _append(self, data: bytes) -> None:
        if self.max_bytes:
            try:
                rotate_if_needed(self.path, incoming=len(data), max_bytes=self.max_bytes,
                                 keep=self.keep)
            except OSError as exc:
                log.warning("cannot rotate %s: %s", self.path, exc)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            log.warning("cannot open usage log %s: %s", self.path, exc)
            return
        try:
            os.write(fd, data)
        except OSError as exc:
            log.warning("cannot write usage log %s: %s", self.path, exc)
        finally:
            os.close(fd)


def read_usage(path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return records
    for line in data.splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records


class WorkerView(Protocol):
    """What the collector reads from one app-server worker."""

    @property
    def name(self) -> str: ...
    @property
    def active(self) -> int: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def accepting(self) -> bool: ...


class PoolView(Protocol):
    """What the collector reads from the app-server worker pool."""

    @property
    def slots(self) -> Sequence[WorkerView | None]: ...
    @property
    def retired(self) -> Sequence[WorkerView]: ...
    @property
    def restarts(self) -> Mapping[str, int]: ...


RESTART_CAUSES = ("crashed", "unhealthy", "handshake_failed", "spawn_failed", "recycled")


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process (``VmRSS`` in ``/proc/<pid>/status``), if readable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _slot_of(name: str) -> int | None:
    """The slot index in a worker name ``w<slot>.<generation>``."""
    head, _, _ = name.partition(".")
    return int(head[1:]) if head[:1] == "w" and head[1:].isdigit() else None


class WorkerCollector:
    """Worker pool figures, read at scrape time. Without a pool (proto backend) the families
    are declared with no samples, so dashboards and rules see the names and alerts stay
    quiet."""

    def __init__(self, pool: PoolView | None) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        configured = GaugeMetricFamily(
            "quartproxy_workers_configured", "app-server worker slots (PROXY_WORKERS)")
        ready = GaugeMetricFamily(
            "quartproxy_workers_ready", "app-server workers ready to take turns")
        restarts = CounterMetricFamily(
            "quartproxy_worker_restarts", "app-server worker restarts by cause", labels=["cause"])
        in_flight = GaugeMetricFamily(
            "quartproxy_worker_turns_in_flight",
            "Turns running on the workers of a slot (a recycled worker's last turns included)",
            labels=["slot"])
        rss = GaugeMetricFamily(
            "quartproxy_worker_rss_bytes", "Resident memory of the worker processes of a slot",
            labels=["slot"])
        pool = self.pool
        if pool is not None:
            slots = list(pool.slots)
            configured.add_metric([], len(slots))
            ready.add_metric([], sum(1 for w in slots if w is not None and w.accepting))
            counts = {cause: 0 for cause in RESTART_CAUSES}
            counts.update(pool.restarts)
            for cause, count in sorted(counts.items()):
                restarts.add_metric([cause], count)
            turns: dict[int, int] = {index: 0 for index in range(len(slots))}
            memory: dict[int, int] = {}
            placed = [(index, w) for index, w in enumerate(slots) if w is not None]
            placed += [(index, w) for w in pool.retired
                       if (index := _slot_of(w.name)) is not None]
            for index, worker in placed:
                turns[index] = turns.get(index, 0) + worker.active
                pid = worker.pid
                size = rss_bytes(pid) if pid is not None else None
                if size is not None:
                    memory[index] = memory.get(index, 0) + size
            for index in sorted(turns):
                in_flight.add_metric([str(index)], turns[index])
            for index in sorted(memory):
                rss.add_metric([str(index)], memory[index])
        yield from (configured, ready, restarts, in_flight, rss)


TOKEN_TYPES = ("prompt", "completion", "cached", "reasoning")

_M = TypeVar("_M", Counter, Histogram)


class Children(Generic[_M]):
    """``metric.labels(*values)``, memoised.

    prometheus_client validates the values and takes a lock on every ``labels()`` call (about
    2 µs); a request makes about eight of them, always for one of a handful of label sets.
    The cache holds exactly the children the metric itself keeps for ever.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric: _M = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self, models: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        self._models = {model.lower(): model for model in models}
        r = self.registry
        self.requests = Counter(
            "quartproxy_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "quartproxy_request_duration_seconds", "Request duration", ["route"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.ttft = Histogram(
            "quartproxy_time_to_first_token_seconds", "Spawn to first answer text", registry=r,
            buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
        )
        self.active_streams = Gauge("quartproxy_active_streams", "Open streams", registry=r)
        self.turns_running = Gauge(
            "quartproxy_turns_running", "Turns running now (any backend)", registry=r
        )
        self.live_children = Gauge(
            "quartproxy_live_children", "Turns running now (older name of turns_running)",
            registry=r,
        )
        self.turns_limit = Gauge(
            "quartproxy_turns_limit", "PROXY_MAX_CONCURRENCY (0 = no cap)", registry=r
        )
        self.streams_limit = Gauge(
            "quartproxy_streams_limit", "PROXY_SSE_MAX_CONCURRENCY (0 = no cap)", registry=r
        )
        self.rejections = Counter(
            "quartproxy_admission_rejections", "Admission rejections", ["reason"], registry=r
        )
        self.admission_wait = Histogram(
            "quartproxy_admission_wait_seconds",
            "Time a request waited for a concurrency slot, by outcome (admitted|rejected)",
            ["outcome"], registry=r,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.child_exits = Counter(
            "quartproxy_child_exits", "Child exits by cause", ["cause"], registry=r
        )
        self.redis_fallback = Gauge(
            "quartproxy_redis_fallback", "1 while limits are per-process because Redis is down",
            registry=r,
        )
        self.tokens = Counter(
            "quartproxy_tokens",
            "Tokens by model, type (prompt|completion|cached|reasoning) and source "
            "(codex|estimate)",
            ["model", "type", "source"], registry=r,
        )
        self.turns = Counter(
            "quartproxy_turns", "Finished turns by finish_reason and outcome",
            ["finish_reason", "outcome"], registry=r,
        )
        self.turn_errors = Counter(
            "quartproxy_turn_errors", "Turns that ended with an error, by error code", ["code"],
            registry=r,
        )
        self.keepalives = Counter(
            "quartproxy_sse_keepalives", "SSE keepalive comments sent", registry=r
        )
        self.workers = WorkerCollector(None)
        r.register(self.workers)
        # The labelled children the request path uses, memoised (see Children).
        self.requests_by = Children(self.requests)
        self.latency_by = Children(self.latency)
        self.rejections_by = Children(self.rejections)
        self.admission_wait_by = Children(self.admission_wait)
        self.child_exits_by = Children(self.child_exits)
        self.tokens_by = Children(self.tokens)
        self.turns_by = Children(self.turns)
        self.turn_errors_by = Children(self.turn_errors)
        for reason in ("concurrency_exceeded", "rate_limited"):
            self.rejections_by(reason)

    def model_label(self, model: str) -> str:
        """The metric label for a requested model: a catalog id, or ``other``."""
        return self._models.get(model.lower(), "other")

    def watch_workers(self, pool: PoolView | None) -> None:
        self.workers.pool = pool

    def turn_finished(self, record: Mapping[str, Any], error_code: str | None) -> None:
        """Token, finish_reason and error counts of one finished turn (its usage record)."""
        model = self.model_label(str(record.get("model") or ""))
        source = "codex" if record.get("counts_source") == "codex" else "estimate"
        for kind in TOKEN_TYPES:
            value = record.get(f"{kind}_tokens")
            self.tokens_by(model, kind, source).inc(
                value if isinstance(value, int) and value > 0 else 0)
        finish = record.get("finish_reason")
        if not isinstance(finish, str):
            finish = "error" if error_code is not None or record.get("outcome") == "error" \
                else "none"
        self.turns_by(finish, str(record.get("outcome"))).inc()
        if error_code is not None:
            self.turn_errors_by(error_code).inc()

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
