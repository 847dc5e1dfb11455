"""``/v1/models``: the ids clients may ask for (open unless PROXY_PROTECT_MODELS)."""

from __future__ import annotations

from quart import Blueprint, Response

from ..middleware import authorise, json_response, state

blueprint = Blueprint("models", __name__)


def _models_auth() -> None:
    if state().settings.protect_models:
        authorise()


@blueprint.route("/v1/models", methods=["GET"], strict_slashes=False)
async def list_models() -> Response:
    _models_auth()
    catalog = state().catalog
    data = [catalog.model_object(model) for model in catalog.listed()]
    return json_response({"object": "list", "data": data})


@blueprint.route("/v1/models/<path:model_id>", methods=["GET"])
async def get_model(model_id: str) -> Response:
    _models_auth()
    return json_response(state().catalog.lookup(model_id))
