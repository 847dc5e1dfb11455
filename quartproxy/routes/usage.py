"""``/v1/usage`` and ``/v1/usage/raw``: what the usage records say, behind the key."""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, Response, request

from .. import accounting, errors
from ..middleware import authorise, json_response, state
from ..observability import read_usage

blueprint = Blueprint("usage", __name__)


@blueprint.route("/v1/usage", methods=["GET"])
async def usage_summary() -> Response:
    authorise()
    group = request.args.get("group", "day")
    if group not in ("hour", "day"):
        raise errors.invalid("'group' must be 'hour' or 'day'.", "group")
    records = await trio.to_thread.run_sync(read_usage, state().settings.token_log_path)
    data: list[dict[str, Any]] = accounting.aggregate(
        records, group=group, start=request.args.get("start"), end=request.args.get("end")
    )
    return json_response({"object": "list", "group": group, "data": data})


@blueprint.route("/v1/usage/raw", methods=["GET"])
async def usage_raw() -> Response:
    authorise()
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise errors.invalid("'limit' must be an integer.", "limit") from None
    limit = max(1, min(limit, 10_000))
    records = await trio.to_thread.run_sync(read_usage, state().settings.token_log_path)
    return json_response({"object": "list", "data": records[-limit:]})
