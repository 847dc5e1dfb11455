"""``/v1/chat/completions`` and ``/v1/completions``: the OpenAI surface over one turn.

Order, as the spec gives it: draining? → auth → body → validate → (service) rate limit → slot
→ turn. A stream answers from the relay's outbox; a non-stream request waits until the
completion has decided and renders that state.
"""

from __future__ import annotations

import secrets
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
from ..render import StreamRenderer, json_body
from ..validation import parse_chat, parse_legacy

blueprint = Blueprint("completions", __name__)


@blueprint.route("/v1/chat/completions", methods=["HEAD"])
@blueprint.route("/v1/completions", methods=["HEAD"])
async def completion_probe() -> Response:
    return Response(b"", status=200, content_type=JSON_TYPE)


@blueprint.route("/v1/chat/completions", methods=["POST"])
async def chat_completions() -> Response:
    return await _complete(legacy=False)


@blueprint.route("/v1/completions", methods=["POST"])
async def legacy_completions() -> Response:
    return await _complete(legacy=True)


async def _complete(*, legacy: bool) -> Response:
    app_state = state()
    settings = app_state.settings
    exchange = current_exchange()
    if app_state.lifecycle.is_draining:
        exchange.outcome = "shutdown"
        raise errors.shutting_down()
    key = authorise()
    body = await read_json()
    parse = parse_legacy if legacy else parse_chat
    req = parse(body, app_state.catalog, max_prompt_tokens=settings.max_prompt_tokens)
    exchange.stream = req.stream
    exchange.model = req.model
    completion_id = ("cmpl-" if legacy else "chatcmpl-") + secrets.token_hex(12)
    created = int(time.time())
    renderer = (
        StreamRenderer(legacy=legacy, completion_id=completion_id, created=created,
                       model=req.model, include_usage=req.include_usage)
        if req.stream else None
    )
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
    return json_response(json_body(
        completion, legacy=legacy, completion_id=completion_id, created=created, model=req.model,
    ))
