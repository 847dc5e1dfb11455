"""``/v1/responses``: the OpenAI Responses API over the same turn as chat completions.

The same path as :mod:`.completions` — draining? → auth → body → validate → (service) rate
limit → slot → turn — with the Responses request parser and renderer. Registered only when
``PROXY_ENABLE_RESPONSES`` is on; otherwise the path is an ordinary 404 envelope.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from quart import Blueprint, Response

from .. import errors
from ..asgi import Exchange, current_exchange
from ..httpio import (
    JSON_TYPE,
    Answer,
    Inbound,
    authorise,
    error_answer,
    json_answer,
    keepalive_seconds,
    parse_json,
    stream_answer,
)
from ..middleware import QUART_INBOUND, answer_response, state
from ..render_responses import ResponseHead, ResponsesStreamRenderer, new_id, response_json
from ..responses_request import parse_responses

if TYPE_CHECKING:
    from ..app import AppState

blueprint = Blueprint("responses", __name__)


@blueprint.route("/v1/responses", methods=["HEAD"])
async def responses_probe() -> Response:
    return Response(b"", status=200, content_type=JSON_TYPE)


@blueprint.route("/v1/responses", methods=["POST"])
async def create_response() -> Response:
    return answer_response(await respond(state(), current_exchange(), QUART_INBOUND))


async def respond(app_state: AppState, exchange: Exchange, http: Inbound) -> Answer:
    settings = app_state.settings
    if app_state.lifecycle.is_draining:
        exchange.outcome = "shutdown"
        raise errors.shutting_down()
    key = authorise(http, app_state.api_keys, exchange)
    body = parse_json(await http.body())
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
        req, exchange, key=key, renderer=renderer,
        keepalive_s=keepalive_seconds(settings, http),
    )
    if relay.outbox is not None:
        return stream_answer(relay.outbox)
    await relay.decided.wait()
    completion = relay.completion
    if completion.error is not None:
        return error_answer(completion.error)
    return json_answer(response_json(completion, head))
