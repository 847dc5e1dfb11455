"""``/v1/usage`` and ``/v1/usage/raw``: what the usage records say, behind the key.

``start``/``end`` take what the old product took: epoch milliseconds or ISO 8601 (UTC when no
offset is given); ``start`` is inclusive and defaults to the beginning, ``end`` is exclusive and
defaults to now (``0`` also means "no end", as it did). Both are echoed back in epoch ms. The
reading runs in a worker thread (:mod:`quartproxy.usage_store`), so a large log never stalls
the event loop.
"""

from __future__ import annotations

import time

import trio
from quart import Blueprint, Response, request

from .. import errors
from ..accounting import parse_time
from ..middleware import authorise, json_response, state

blueprint = Blueprint("usage", __name__)

RAW_DEFAULT = 100
RAW_MAX = 10_000


def _time_arg(name: str) -> int:
    value = request.args.get(name)
    if value is None or not value.strip():
        return 0
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        raise errors.invalid(
            f"'{name}' must be epoch milliseconds or an ISO 8601 timestamp.", name
        ) from None


@blueprint.route("/v1/usage", methods=["GET"])
async def usage_summary() -> Response:
    authorise()
    group = request.args.get("group", "day")
    if group not in ("hour", "day"):
        raise errors.invalid("'group' must be 'hour' or 'day'.", "group")
    start = _time_arg("start")
    end = _time_arg("end") or int(time.time() * 1000) + 1
    summary = await trio.to_thread.run_sync(state().usage_store.query, start, end, group)
    return json_response(summary.payload(start=start, end=end))


@blueprint.route("/v1/usage/raw", methods=["GET"])
async def usage_raw() -> Response:
    authorise()
    try:
        limit = int(request.args.get("limit", str(RAW_DEFAULT)))
    except ValueError:
        raise errors.invalid("'limit' must be an integer.", "limit") from None
    limit = max(1, min(limit, RAW_MAX))
    records = await trio.to_thread.run_sync(state().usage_store.tail, limit)
    return json_response({"object": "list", "count": len(records), "data": records})
