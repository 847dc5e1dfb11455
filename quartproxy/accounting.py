"""What one request cost: its usage record, its outcome, and the /v1/usage aggregation.

Pure functions over finished, plain state (a :class:`TurnRecord`), so the service that records
them stays a few lines and everything here is tested without a server or a backend. Reading
the records back from disk quickly is :mod:`quartproxy.usage_store`'s job; the sums it hands
back are this module's :class:`Summary`, so both paths render ``/v1/usage`` the same way.

``/v1/usage`` keeps the shape of the product this proxy replaces — ``total_requests``,
``prompt_tokens_est``, ``completion_tokens_est``, ``total_tokens_est``, ``buckets`` of
``{ts, requests, …}``, ``start``/``end`` in epoch milliseconds — next to this proxy's own
``data`` list of ``{period, …}``. The ``_est`` names are aliases: the values are codex's counts
where codex reported them (each record's ``counts_source`` says which). Records the old product
wrote (numeric ``ts``, ``*_est`` token fields) are read too.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .backends.base import TurnDiagnostics
from .completion import Completion, End
from .observability import utc_now_iso
from .validation import CompletionRequest

TIMEOUT_ENDS = frozenset({End.TIMEOUT, End.IDLE, End.EARLY_FINALIZE})


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One finished turn, as the service hands it to accounting."""

    request_id: str
    route: str | None
    user_agent: str
    request: CompletionRequest
    completion: Completion
    client_gone: bool
    duration_s: float
    ttft_s: float | None
    diagnostics: TurnDiagnostics


def outcome_of(completion: Completion, *, client_gone: bool) -> str:
    """ok | client_disconnect | timeout | shutdown | error, as the access log and records say."""
    cause = completion.end_cause
    if client_gone:
        return "client_disconnect"
    if cause in TIMEOUT_ENDS:
        return "timeout"
    if cause is End.SHUTDOWN:
        return "shutdown"
    if completion.error is not None:
        return "error"
    return "ok"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def usage_record(turn: TurnRecord) -> dict[str, Any]:
    completion = turn.completion
    usage = completion.usage()
    error = completion.error
    req = turn.request
    diag = turn.diagnostics
    record: dict[str, Any] = {
        "ts": utc_now_iso(),
        "req_id": turn.request_id,
        "route": turn.route,
        "model": req.model,
        "effective_model": req.effective_model,
        "stream": req.stream,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "counts_source": usage.source,
        "finish_reason": completion.finish_reason,
        "outcome": outcome_of(completion, client_gone=turn.client_gone),
        "duration_ms": _ms(turn.duration_s),
        "ttft_ms": _ms(turn.ttft_s) if turn.ttft_s is not None else None,
        "status": error.status if error is not None else 200,
        "user_agent": turn.user_agent,
        "child_exit": diag.exit_cause,
    }
    if diag.worker is not None:
        record["worker"] = diag.worker
    if completion.calls:
        record["tool_calls"] = len(completion.calls)
    return record


# ----------------------------------------------------------------------------- /v1/usage

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DIGITS = re.compile(r"^[0-9]{1,16}$")
_minute_base: dict[str, int] = {}  # "2026-11-24T05:10" -> epoch ms of that minute (a cache)


def _to_ms(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)  # no offset: UTC, as the records are written
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


def parse_time(value: str) -> int:
    """A window bound as the old product took it: epoch milliseconds (digits only) or an ISO
    8601 date or timestamp (without an offset: UTC). Raises ``ValueError`` otherwise."""
    text = value.strip()
    if _DIGITS.match(text):
        return int(text)
    return _to_ms(dt.datetime.fromisoformat(text))


def iso_ms(text: str) -> int:
    """Epoch milliseconds of a record's ``ts``; fast for the ``2026-11-24T05:10:00.000Z`` form
    this proxy writes, any ISO 8601 form otherwise. Raises ``ValueError``."""
    if len(text) == 24 and text[23] == "Z" and text[19] == ".":
        prefix = text[:16]
        base = _minute_base.get(prefix)
        if base is None:
            try:
                base = _to_ms(dt.datetime.fromisoformat(prefix + ":00+00:00"))
            except ValueError:
                base = -1
            if len(_minute_base) > 100_000:
                _minute_base.clear()
            _minute_base[prefix] = base
        if base >= 0:  # a minute boundary is never -1: the sentinel of an unreadable prefix
            try:
                return base + int(text[17:19]) * 1000 + int(text[20:23])
            except ValueError:
                pass
    return _to_ms(dt.datetime.fromisoformat(text))


def iso_of(ms: int) -> str:
    moment = _EPOCH + dt.timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_fields(record: Any) -> tuple[int, int, int, int] | None:
    """``(ts_ms, prompt, completion, total)`` of one usage record, ``None`` if it has no usable
    time. Missing counts are 0; a missing total is prompt + completion. (On the hot path of
    every usage query: exact type checks, no helper calls.)"""
    if type(record) is not dict:
        return None
    get = record.get
    ts = get("ts")
    try:
        if type(ts) is str:
            ts_ms = iso_ms(ts)
        elif type(ts) is int or type(ts) is float:
            ts_ms = int(ts)
        else:
            return None
    except (ValueError, OverflowError):
        return None
    prompt = get("prompt_tokens")
    if type(prompt) is not int:
        prompt = get("prompt_tokens_est")
        if type(prompt) is not int:
            prompt = 0
    completion = get("completion_tokens")
    if type(completion) is not int:
        completion = get("completion_tokens_est")
        if type(completion) is not int:
            completion = 0
    total = get("total_tokens")
    if type(total) is not int:
        total = get("total_tokens_est")
        if type(total) is not int:
            total = prompt + completion
    return ts_ms, prompt, completion, total


@dataclass(slots=True)
class Tally:
    requests: int = 0
    prompt: int = 0
    completion: int = 0
    total: int = 0

    def add(self, prompt: int, completion: int, total: int) -> None:
        self.requests += 1
        self.prompt += prompt
        self.completion += completion
        self.total += total

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.prompt += other.prompt
        self.completion += other.completion
        self.total += other.total

    def fields(self) -> dict[str, int]:
        return {"requests": self.requests, "prompt_tokens": self.prompt,
                "completion_tokens": self.completion, "total_tokens": self.total}


@dataclass
class Summary:
    """Usage summed per hour or per day (UTC) over a window; the totals are the buckets'."""

    group: str  # "hour" | "day"
    buckets: dict[int, Tally] = field(default_factory=dict)  # bucket start (epoch ms) -> sums

    def __post_init__(self) -> None:
        self.width = HOUR_MS if self.group == "hour" else DAY_MS

    @property
    def totals(self) -> Tally:
        totals = Tally()
        for tally in self.buckets.values():
            totals.merge(tally)
        return totals

    def add(self, ts_ms: int, prompt: int, completion: int, total: int) -> None:
        # Once per record a query reads: kept to a dict lookup and four additions.
        key = ts_ms - ts_ms % self.width
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Tally()
        bucket.requests += 1
        bucket.prompt += prompt
        bucket.completion += completion
        bucket.total += total

    def add_hour(self, hour: int, tally: Tally) -> None:
        """A whole hour's sums (``hour`` = epoch ms // HOUR_MS), from an index."""
        start = hour * HOUR_MS
        key = start - start % self.width
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Tally()
        bucket.merge(tally)

    def payload(self, *, start: int, end: int) -> dict[str, Any]:
        label = 13 if self.group == "hour" else 10  # "2026-11-24T05" / "2026-11-24"
        data: list[dict[str, Any]] = []
        buckets: list[dict[str, Any]] = []
        for key in sorted(self.buckets):
            tally = self.buckets[key]
            iso = iso_of(key)
            data.append({"period": iso[:label], **tally.fields()})
            buckets.append({"ts": iso, **tally.fields(), **_est(tally)})
        totals = self.totals
        return {
            "object": "list",
            "group": self.group,
            "start": start,
            "end": end,
            "total_requests": totals.requests,
            "prompt_tokens": totals.prompt,
            "completion_tokens": totals.completion,
            "total_tokens": totals.total,
            **_est(totals),
            "data": data,
            "buckets": buckets,
        }


def _est(tally: Tally) -> dict[str, int]:
    return {"prompt_tokens_est": tally.prompt, "completion_tokens_est": tally.completion,
            "total_tokens_est": tally.total}


def aggregate(records: Iterable[Any], *, group: str, start: int, end: int) -> Summary:
    """Sum ``records`` with ``start <= ts < end`` (epoch ms): the plain, whole-scan way."""
    summary = Summary(group)
    for record in records:
        fields = record_fields(record)
        if fields is not None and start <= fields[0] < end:
            summary.add(*fields)
    return summary
