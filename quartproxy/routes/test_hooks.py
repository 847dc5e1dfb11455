"""Test-only endpoints and headers, registered only with ``PROXY_TEST_ENDPOINTS=true``.

``GET /__test/conc`` reports admission's counts; every response gets ``X-Conc-Before``,
``X-Conc-After`` and ``X-Conc-Limit`` when admission decided something for it. Keeping them in
their own blueprint keeps the completion routes free of test plumbing.

Every ``/__test/*`` route needs the API key, like the routes it reports on: a test build
exposed on a network must not hand out its occupancy (or whatever later hooks do) to anyone.
"""

from __future__ import annotations

from quart import Blueprint, Response

from ..asgi import current_exchange
from ..httpio import conc_headers
from ..middleware import authorise, json_response, state

blueprint = Blueprint("test_hooks", __name__)


@blueprint.before_request
async def require_key() -> None:
    authorise()


@blueprint.route("/__test/conc", methods=["GET"])
async def test_conc() -> Response:
    admission = state().admission
    shared = await admission.shared_counts()
    local = admission.occupancy
    return json_response({
        "streams": shared.streams, "turns": shared.turns,
        "local_streams": local.streams, "local_turns": local.turns,
        "stream_limit": admission.stream_limit,
        "turn_limit": admission.turn_limit,
        "redis": admission.redis is not None,
        "redis_degraded": admission.degraded,
    })


@blueprint.after_app_request
async def add_conc_headers(response: Response) -> Response:
    for key, value in conc_headers(current_exchange()):
        response.headers[key] = value
    return response
