"""Cross-cutting HTTP concerns: request ids, CORS, authorisation, error envelopes.

Every response — successes, errors raised by routes, Quart's own 404/405/413 — leaves through
here, so every one carries CORS headers and ``X-Request-Id``, and every error is an OpenAI-style
envelope that SDKs can parse. Routes call :func:`authorise` and :func:`read_json` explicitly,
in the order the spec gives (auth before the body is read).
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Any

import orjson
from quart import Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from . import errors
from .asgi import current_exchange
from .config import Settings
from .errors import ApiError

if TYPE_CHECKING:
    from .app import AppState, ProxyApp

log = logging.getLogger("quartproxy.http")

JSON_TYPE = "application/json"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
DEFAULT_ALLOW_HEADERS = (
    "Authorization, Content-Type, Accept, OpenAI-Organization, OpenAI-Project, OpenAI-Beta, "
    "X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, "
    "X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Retry-Count, "
    "X-Stainless-Timeout, X-Stainless-Async, X-Stainless-Helper-Method, X-Request-Id, "
    "X-No-Keepalive"
)
EXPOSE_HEADERS = "X-Request-Id, Retry-After, X-Conc-Before, X-Conc-After, X-Conc-Limit"
KEEPALIVE_OPT_OUT_AGENTS = ("obsidian", "electron")


def state() -> AppState:
    app: ProxyApp = current_app  # type: ignore[assignment]
    return app.state


def json_response(payload: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status=status, headers=headers,
                    content_type=JSON_TYPE)


def error_response(error: ApiError) -> Response:
    return Response(
        error.body(), status=error.status, headers=error.headers, content_type=JSON_TYPE
    )


def authorise() -> str:
    """The caller's key if it matches a configured key (constant time), else 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    exchange = current_exchange()
    exchange.auth = "present" if header else "none"
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.unauthorized()
    supplied = token.strip().encode()
    matched = False
    for key in state().api_keys:
        matched |= hmac.compare_digest(supplied, key)
    if not matched:
        raise errors.unauthorized()
    return token.strip()


async def read_json() -> Any:
    data = await request.get_data(cache=False, as_text=False)
    if not data:
        raise errors.invalid_json("The request body is empty; send a JSON object.")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise errors.invalid_json(f"The request body is not valid JSON: {exc}.") from None


def keepalive_seconds(settings: Settings) -> float:
    """The SSE keepalive interval for this request (0 when a client opted out)."""
    if settings.sse_keepalive_ms <= 0:
        return 0.0
    agent = request.headers.get("User-Agent", "").lower()
    if any(marker in agent for marker in KEEPALIVE_OPT_OUT_AGENTS):
        return 0.0
    if request.headers.get("X-No-Keepalive", "").strip() in ("1", "true"):
        return 0.0
    if request.args.get("no_keepalive", "") in ("1", "true"):
        return 0.0
    return settings.sse_keepalive_ms / 1000


def cors_headers(settings: Settings, origins: list[str]) -> dict[str, str]:
    if not settings.enable_cors:
        return {}
    origin = request.headers.get("Origin")
    headers = {
        "Access-Control-Allow-Methods": "GET, POST, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": request.headers.get(
            "Access-Control-Request-Headers", DEFAULT_ALLOW_HEADERS
        ),
        "Access-Control-Max-Age": "600",
        "Access-Control-Expose-Headers": EXPOSE_HEADERS,
    }
    if origin:
        if "*" in origins or origin in origins:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
    elif "*" in origins:
        headers["Access-Control-Allow-Origin"] = "*"
    return headers


def install(app: ProxyApp, settings: Settings) -> None:
    origins = settings.cors_origins

    @app.before_request
    async def _before() -> Response | None:
        exchange = current_exchange()
        rule = request.url_rule
        exchange.route = rule.rule if rule is not None else None
        if request.method == "OPTIONS":
            return Response(b"", status=204)
        return None

    @app.after_request
    async def _after(response: Response) -> Response:
        for key, value in cors_headers(settings, origins).items():
            response.headers[key] = value
        response.headers["X-Request-Id"] = current_exchange().request_id
        if state().lifecycle.is_draining and request.http_version in ("1.0", "1.1"):
            # Keep-alive clients reconnect, through the load balancer, to a replica that stays.
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(ApiError)
    async def _api_error(error: ApiError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if isinstance(error, MethodNotAllowed):
            return error_response(errors.method_not_allowed(sorted(error.valid_methods or [])))
        if isinstance(error, RequestEntityTooLarge) or status == 413:
            return error_response(errors.too_large(settings.max_body_bytes))
        if status == 404:
            return error_response(errors.not_found(f"Unknown path {request.path}.", "not_found"))
        if status == 400:
            return error_response(errors.invalid(error.description or "Bad request."))
        return error_response(
            ApiError(status, error.description or "HTTP error", "invalid_request_error",
                     (error.name or "error").lower().replace(" ", "_"))
        )

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", extra={"req_id": current_exchange().request_id})
        return error_response(errors.internal())
