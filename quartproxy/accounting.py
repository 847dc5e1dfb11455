"""What one request cost: its usage record, its outcome, and the /v1/usage aggregation.

Pure functions over finished state, so the route that records them stays a few lines and the
aggregation can be tested without a server.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import trio

from .asgi import Exchange
from .completion import End
from .observability import utc_now_iso
from .relay import Relay
from .validation import CompletionRequest

TIMEOUT_ENDS = frozenset({End.TIMEOUT, End.IDLE, End.EARLY_FINALIZE})


def outcome_of(relay: Relay) -> str:
    """ok | client_disconnect | timeout | shutdown | error, as the access log and records say."""
    completion = relay.completion
    cause = completion.end_cause
    if relay.client_gone:
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


def usage_record(exchange: Exchange, req: CompletionRequest, relay: Relay) -> dict[str, Any]:
    completion = relay.completion
    usage = completion.usage()
    error = completion.error
    first = relay.first_text_at
    return {
        "ts": utc_now_iso(),
        "req_id": exchange.request_id,
        "route": exchange.route,
        "model": req.model,
        "effective_model": req.effective_model,
        "stream": req.stream,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "counts_source": usage.source,
        "finish_reason": completion.finish_reason,
        "outcome": outcome_of(relay),
        "duration_ms": _ms(trio.current_time() - relay.started_at),
        "ttft_ms": _ms(first - relay.started_at) if first is not None else None,
        "status": error.status if error is not None else 200,
        "user_agent": exchange.user_agent,
        "child_exit": relay.exit.cause if relay.exit is not None else None,
    }


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
