"""``/v1/chat/completions`` and ``/v1/completions``: the OpenAI surface over one turn.

Order, as the spec gives it: draining? → auth → body → validate → (service) rate limit → slot
→ turn. A stream answers from the relay's outbox; a non-stream request waits until the
completion has decided and renders that state.

:func:`chat` and :func:`legacy` are written against :mod:`quartproxy.httpio`, so the same code
serves a ``POST`` straight off the ASGI scope (:mod:`quartproxy.direct`, the request path) and
as a Quart view.
"""

from __future__ import annotations

import secrets
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
from ..render import StreamRenderer, json_body
from ..validation import parse_chat, parse_legacy

if TYPE_CHECKING:
    from ..app import AppState

blueprint = Blueprint("completions", __name__)


@blueprint.route("/v1/chat/completions", methods=["HEAD"])
@blueprint.route("/v1/completions", methods=["HEAD"])
async def completion_probe() -> Response:
    return Response(b"", status=200, content_type=JSON_TYPE)


@blueprint.route("/v1/chat/completions", methods=["POST"])
async def chat_completions() -> Response:
    return answer_response(await chat(state(), current_exchange(), QUART_INBOUND))


@blueprint.route("/v1/completions", methods=["POST"])
async def legacy_completions() -> Response:
    return answer_response(await legacy(state(), current_exchange(), QUART_INBOUND))


async def chat(app_state: AppState, exchange: Exchange, http: Inbound) -> Answer:
    return await _complete(app_state, exchange, http, legacy=False)


async def legacy(app_state: AppState, exchange: Exchange, http: Inbound) -> Answer:
    return await _complete(app_state, exchange, http, legacy=True)


async def _complete(app_state: AppState, exchange: Exchange, http: Inbound, *,
                    legacy: bool) -> Answer:
    settings = app_state.settings
    if app_state.lifecycle.is_draining:
        exchange.outcome = "shutdown"
        raise errors.shutting_down()
    key = authorise(http, app_state.api_keys, exchange)
    body = parse_json(await http.body())
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
        req, exchange, key=key, renderer=renderer,
        keepalive_s=keepalive_seconds(settings, http),
    )
    if relay.outbox is not None:
        return stream_answer(relay.outbox)
    await relay.decided.wait()
    completion = relay.completion
    if completion.error is not None:
        return error_answer(completion.error)
    return json_answer(json_body(
        completion, legacy=legacy, completion_id=completion_id, created=created, model=req.model,
    ))
