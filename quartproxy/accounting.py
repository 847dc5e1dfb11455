"""What one request cost: its usage record, its outcome, and the /v1/usage aggregation.

Pure functions over finished, plain state (a :class:`TurnRecord`), so the service that records
them stays a few lines and everything here is tested without a server or a backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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


def aggregate(
    records: Iterable[dict[str, Any]], *, group: str, start: str | None, end: str | None
) -> list[dict[str, Any]]:
    """Sum usage per hour or day; ``start``/``end`` are ISO timestamps (end exclusive)."""
    width = 13 if group == "hour" else 10  # "2026-11-24T05" / "2026-11-24"
    buckets: dict[str, dict[str, int]] = {}
    for record in records:
        ts = str(record.get("ts", ""))
        if (start and ts < start) or (end and ts >= end):
            continue
        bucket = buckets.setdefault(
            ts[:width],
            {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        )
        bucket["requests"] += 1
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = record.get(key)
            if isinstance(value, int):
                bucket[key] += value
    return [{"period": key, **value} for key, value in sorted(buckets.items())]
