"""Liveness, readiness and metrics: what load balancers and Prometheus poll."""

from __future__ import annotations

from quart import Blueprint, Response

from ..middleware import authorise, json_response, state

blueprint = Blueprint("probes", __name__)


@blueprint.route("/healthz", methods=["GET"])
async def healthz() -> Response:
    return json_response({"ok": True, "sandbox_mode": state().settings.sandbox_mode})


@blueprint.route("/readyz", methods=["GET"])
async def readyz() -> Response:
    app_state = state()
    reasons: list[str] = []
    if app_state.lifecycle.is_draining:
        reasons.append("draining")
    reasons += app_state.backend.readiness()
    if reasons:
        return json_response({"ok": False, "reasons": reasons}, 503)
    capabilities = app_state.backend.capabilities
    return json_response({"ok": True, "backend": capabilities.name,
                          "codex_version": capabilities.version})


@blueprint.route("/metrics", methods=["GET"])
async def metrics_text() -> Response:
    if state().settings.metrics_require_key:
        authorise()
    return Response(
        state().metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8"
    )
