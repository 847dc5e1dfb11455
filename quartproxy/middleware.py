"""Cross-cutting HTTP concerns: request ids, CORS, authorisation, error envelopes.

Every response — successes, errors raised by routes, Quart's own 404/405/413 — leaves through
here, so every one carries CORS headers and ``X-Request-Id``, and every error is an OpenAI-style
envelope that SDKs can parse. Routes call :func:`authorise` and :func:`read_json` explicitly,
in the order the spec gives (auth before the body is read).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from quart import Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from . import errors, httpio
from .asgi import current_exchange
from .config import Settings
from .errors import ApiError
from .httpio import JSON_TYPE, SSE_HEADERS, Answer

__all__ = ["JSON_TYPE", "SSE_HEADERS", "QuartInbound", "answer_response", "authorise",
           "error_response", "http_error", "install", "json_response", "keepalive_seconds",
           "read_json", "state"]

if TYPE_CHECKING:
    from .app import AppState, ProxyApp

log = logging.getLogger("quartproxy.http")


class QuartInbound:
    """The current Quart request as an :class:`~quartproxy.httpio.Inbound`."""

    __slots__ = ()

    def header(self, name: str) -> str:
        return str(request.headers.get(name, ""))

    def has_header(self, name: str) -> bool:
        return name in request.headers

    def arg(self, name: str) -> str:
        return str(request.args.get(name, ""))

    async def body(self) -> bytes:
        data = await request.get_data(cache=False, as_text=False)
        return data if isinstance(data, bytes) else data.encode()


QUART_INBOUND = QuartInbound()


def state() -> AppState:
    app: ProxyApp = current_app  # type: ignore[assignment]
    return app.state


def answer_response(answer: Answer) -> Response:
    """An :class:`~quartproxy.httpio.Answer` as a Quart response (same headers, same order)."""
    response = Response(answer.body, status=answer.status)
    response.headers.clear()
    for key, value in answer.headers:
        response.headers.add(key, value)
    response.timeout = None
    return response


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
    return httpio.authorise(QUART_INBOUND, state().api_keys, current_exchange())


async def read_json() -> Any:
    return httpio.parse_json(await QUART_INBOUND.body())


def keepalive_seconds(settings: Settings) -> float:
    """The SSE keepalive interval for this request (0 when a client opted out)."""
    return httpio.keepalive_seconds(settings, QUART_INBOUND)


def http_error(error: HTTPException, settings: Settings, path: str) -> ApiError:
    """Quart's and werkzeug's HTTP errors (404, 405, 413, 408, ...) as envelopes."""
    status = error.code or 500
    if isinstance(error, MethodNotAllowed):
        return errors.method_not_allowed(sorted(error.valid_methods or []))
    if isinstance(error, RequestEntityTooLarge) or status == 413:
        return errors.too_large(settings.max_body_bytes)
    if status == 404:
        return errors.not_found(f"Unknown path {path}.", "not_found")
    if status == 400:
        return errors.invalid(error.description or "Bad request.")
    return ApiError(status, error.description or "HTTP error", "invalid_request_error",
                    (error.name or "error").lower().replace(" ", "_"))


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
        for key, value in httpio.cors_headers(settings, origins, QUART_INBOUND):
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
        return error_response(http_error(error, settings, request.path))

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", extra={"req_id": current_exchange().request_id})
        return error_response(errors.internal())
