"""The openai SDK's own Responses models and stream accumulator, as judges for our shapes.

openai-python ships typed models for every Responses object and event, and the accumulator its
``client.responses.stream(...)`` helper runs (which refuses streams whose items, indexes or ids
do not line up). Validating our bodies with them catches a missing or misspelt field that a
lenient client would silently default.
"""

from __future__ import annotations

import copy
from typing import Any, get_args

import orjson
from openai._types import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_error import ResponseError
from pydantic import TypeAdapter

from quartproxy import contract

EVENT = TypeAdapter(ResponseStreamEvent)
# The SDK types ResponseError.code as a closed list, but the API (and codex, which reads it)
# uses other codes there too (context_length_exceeded, insufficient_quota). The proxy sends the
# same codes its chat envelopes carry; only for the SDK's strict validation is an unlisted code
# replaced by a listed one.
SDK_ERROR_CODES = frozenset(get_args(ResponseError.model_fields["code"].annotation))


def _sdk_compatible(doc: dict[str, Any]) -> dict[str, Any]:
    error = doc.get("error")
    if isinstance(error, dict) and error.get("code") not in SDK_ERROR_CODES:
        doc = copy.deepcopy(doc)
        doc["error"]["code"] = "server_error"
    return doc


def sdk_response(doc: dict[str, Any] | bytes) -> Response:
    """Strictly validate a response object with the SDK's model."""
    data = orjson.loads(doc) if isinstance(doc, bytes) else doc
    return Response.model_validate(_sdk_compatible(data))


def sdk_events(raw: bytes) -> list[Any]:
    """Every event of a stream, strictly validated as the SDK's ResponseStreamEvent union."""
    events = []
    for event in contract.parse_responses_sse(raw):
        if isinstance(event.json, dict):
            doc = event.json
            if isinstance(doc.get("response"), dict):
                doc = {**doc, "response": _sdk_compatible(doc["response"])}
            events.append(EVENT.validate_python(doc))
    return events


def sdk_accumulate(raw: bytes) -> tuple[list[str], Response | None]:
    """Run the SDK's stream accumulator over the events: (event types it emitted, the final
    response it built from ``response.completed``, or None for incomplete/failed streams)."""
    state: ResponseStreamState[object] = ResponseStreamState(input_tools=omit, text_format=omit)
    types: list[str] = []
    final: Response | None = None
    for event in sdk_events(raw):
        for emitted in state.handle_event(event):
            types.append(emitted.type)
            if emitted.type == "response.completed":
                final = emitted.response
    return types, final
