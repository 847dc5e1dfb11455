"""``/v1/responses``: the OpenAI Responses API over the same turn as chat completions.

The same path as :mod:`.completions` — draining? → auth → body → validate → (service) rate
limit → slot → turn — with the Responses request parser and renderer. Registered only when
``PROXY_ENABLE_RESPONSES`` is on; otherwise the path is an ordinary 404 envelope.
"""

from __future__ import annotations

import time

from quart import Blueprint, Response

from .. import errors
from ..asgi import current_exchange
from ..middleware import (
    JSON_TYPE,
    SSE_HEADERS,
    authorise,
    error_response,
    json_response,
    keepalive_seconds,
    read_json,
    state,
)
from ..render_responses import ResponseHead, ResponsesStreamRenderer, new_id, response_json
from ..responses_request import parse_responses

blueprint = Blueprint("responses", __name__)


@blueprint.route("/v1/responses", methods=["HEAD"])
async def responses_probe() -> Response:
    return Response(b"", status=200, content_type=JSON_TYPE)


@blueprint.route("/v1/responses", methods=["POST"])
async def create_response() -> Response:
    app_state = state()
    settings = app_state.settings
    exchange = current_exchange()
    if app_state.lifecycle.is_draining:
        exchange.outcome = "shutdown"
        raise errors.shutting_down()
    key = authorise()
    body = await read_json()
    parsed = parse_responses(
        body, app_state.catalog, max_prompt_tokens=settings.max_prompt_tokens,
        structured_output=app_state.backend.capabilities.output_schema,
    )
    req = parsed.request
    exchange.stream = req.stream
    exchange.model = req.model
    head = ResponseHead(new_id("resp"), int(time.time()), req.model, parsed.echo)
    renderer = ResponsesStreamRenderer(head) if req.stream else None
    relay = await app_state.service.start(
        req, exchange, key=key, renderer=renderer, keepalive_s=keepalive_seconds(settings)
    )
    if relay.outbox is not None:
        response = Response(relay.outbox, status=200, headers=SSE_HEADERS)
        response.timeout = None
        return response
    await relay.decided.wait()
    completion = relay.completion
    if completion.error is not None:
        return error_response(completion.error)
    return json_response(response_json(completion, head))
