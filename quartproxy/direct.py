"""The completion routes served straight off the ASGI scope: the request path without Quart.

Measured on the request path (see benchmarks/README.md), Quart's per-request machinery — the
request object and its werkzeug headers, request and app contexts, URL matching, the session,
hooks, the response object — cost about as much CPU as the proxy's own work for a turn. Every
``POST`` to a completion route is therefore handled here, by the same route functions
(:mod:`quartproxy.httpio`), with what Quart would have added done by hand, in the same order:

* the body is read with Quart's limits: ``Content-Length`` over ``PROXY_MAX_BODY_BYTES`` or a
  longer body is a 413 envelope, a body slower than the body timeout a 408;
* an :class:`~quartproxy.errors.ApiError` becomes its envelope, anything unexpected is logged
  and becomes the 500 envelope;
* every response gets the test-only ``X-Conc-*`` headers (``PROXY_TEST_ENDPOINTS``), the CORS
  headers, ``X-Request-Id`` and, while the server drains, ``Connection: close`` on HTTP/1 —
  the order Quart's after-request hooks gave them;
* once the body has been read, a disconnect cancels the request's nursery (as quart-trio does),
  and after the last byte is sent the nursery is cancelled too, so helpers waiting for a
  disconnect do not hold the request open.

Every other method and path (HEAD probes, OPTIONS, 404s, 405s) still goes through Quart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from . import errors
from .asgi import Exchange
from .errors import ApiError
from .httpio import Answer, Handler, conc_headers, cors_headers, error_answer
from .middleware import http_error

if TYPE_CHECKING:
    from .app import AppState

log = logging.getLogger("quartproxy.http")


class Disconnected(Exception):
    """The client went away while its body was being read."""


class AsgiInbound:
    """An :class:`~quartproxy.httpio.Inbound` over an ASGI scope and ``receive``."""

    __slots__ = ("_args", "_headers", "_nursery", "_receive", "_scope", "max_bytes",
                 "timeout_s")

    def __init__(self, scope: Any, receive: ASGIReceiveCallable, nursery: trio.Nursery,
                 max_bytes: int, timeout_s: float) -> None:
        self._scope = scope
        self._receive = receive
        self._nursery = nursery
        self._headers: dict[str, str] | None = None
        self._args: dict[str, str] | None = None
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    @property
    def http_version(self) -> str:
        return str(self._scope.get("http_version", "1.1"))

    def _header_map(self) -> dict[str, str]:
        if self._headers is None:
            headers: dict[str, str] = {}
            for key, value in self._scope["headers"]:
                name = bytes(key).decode("latin-1").lower()
                if name not in headers:  # the first value, as werkzeug's get() gives
                    headers[name] = bytes(value).decode("latin-1")
            self._headers = headers
        return self._headers

    def header(self, name: str) -> str:
        return self._header_map().get(name.lower(), "")

    def has_header(self, name: str) -> bool:
        return name.lower() in self._header_map()

    def arg(self, name: str) -> str:
        if self._args is None:
            args: dict[str, str] = {}
            query = bytes(self._scope.get("query_string", b"")).decode("latin-1")
            for key, value in parse_qsl(query, keep_blank_values=True):
                args.setdefault(key, value)
            self._args = args
        return self._args.get(name, "")

    async def body(self) -> bytes:
        length = self.header("Content-Length")
        if length.isdigit() and int(length) > self.max_bytes:
            raise RequestEntityTooLarge()
        parts: list[bytes] = []
        size = 0
        try:
            with trio.fail_after(self.timeout_s):
                while True:
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        raise Disconnected
                    chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
                    if chunk:
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise RequestEntityTooLarge()
                        parts.append(chunk)
                    if not message.get("more_body", False):
                        break
        except trio.TooSlowError:
            raise RequestTimeout() from None
        self._nursery.start_soon(_watch_disconnect, self._receive, self._nursery)
        return parts[0] if len(parts) == 1 else b"".join(parts)


async def _watch_disconnect(receive: ASGIReceiveCallable, nursery: trio.Nursery) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    nursery.cancel_scope.cancel()


class DirectRoutes:
    """``POST`` path → route function, for the routes the request path goes through."""

    def __init__(self, state: AppState, routes: dict[str, Handler]) -> None:
        self.state = state
        self.routes = routes
        settings = state.settings
        self.origins = settings.cors_origins
        self.max_bytes = settings.max_body_bytes
        self.body_timeout_s = max(60, settings.timeout_ms / 1000)  # as Quart's BODY_TIMEOUT
        self.conc_headers = settings.test_endpoints

    def match(self, scope: Any) -> Callable[..., Any] | None:
        """The ASGI handler for this scope, or ``None`` to let Quart serve it."""
        if scope.get("method") != "POST" or scope.get("root_path"):
            return None
        handler = self.routes.get(scope.get("path", ""))
        return None if handler is None else self.serve

    async def serve(self, exchange: Exchange, scope: Any, receive: ASGIReceiveCallable,
                    send: ASGISendCallable) -> None:
        nursery = exchange.nursery
        assert nursery is not None
        path = scope["path"]
        exchange.route = path
        http = AsgiInbound(scope, receive, nursery, self.max_bytes, self.body_timeout_s)
        try:
            answer = await self.routes[path](self.state, exchange, http)
        except Disconnected:
            nursery.cancel_scope.cancel()
            return
        except Exception as exc:
            answer = self._failure(exc, path, exchange)
        except BaseExceptionGroup as group:
            _, rest = group.split(trio.Cancelled)
            if rest is None:
                raise
            answer = self._failure(rest, path, exchange)
        await self._send(answer, http, exchange, send)
        nursery.cancel_scope.cancel()

    def _failure(self, exc: BaseException, path: str, exchange: Exchange) -> Answer:
        """The envelope Quart's error handlers would have given (a group: its first error
        that has one, as Quart tries them in order)."""
        for error in _leaves(exc):
            if isinstance(error, ApiError):
                return error_answer(error)
            if isinstance(error, HTTPException):
                return error_answer(http_error(error, self.state.settings, path))
        log.error("unhandled error", exc_info=exc, extra={"req_id": exchange.request_id})
        return error_answer(errors.internal())

    async def _send(self, answer: Answer, http: AsgiInbound, exchange: Exchange,
                    send: ASGISendCallable) -> None:
        headers = answer.headers
        if self.conc_headers:
            headers = headers + conc_headers(exchange)
        headers = headers + cors_headers(self.state.settings, self.origins, http)
        headers.append(("X-Request-Id", exchange.request_id))
        if self.state.lifecycle.is_draining and http.http_version in ("1.0", "1.1"):
            # As the Quart path's after-request hook: keep-alive clients reconnect elsewhere.
            headers.append(("Connection", "close"))
        await send({
            "type": "http.response.start",
            "status": answer.status,
            "headers": [_encoded(key, value) for key, value in headers],
        })
        body = answer.body
        if isinstance(body, bytes):
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        async for data in body:
            await send({"type": "http.response.body", "body": data, "more_body": True})
            del data  # an open stream waits for its next piece without holding the last one
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# Encoded header pairs, shared: Hypercorn keeps a response's header list for as long as the
# response lasts, so an open stream holds one list of references instead of its own copies.
# Bounded, because some values come from the request (an allowed Origin) or are unique (the
# request id): past the bound, pairs are encoded per response as before.
_ENCODED: dict[tuple[str, str], tuple[bytes, bytes]] = {}
_ENCODED_MAX = 256


def _encoded(key: str, value: str) -> tuple[bytes, bytes]:
    """A header as Quart encodes it: the name lower-cased, both as UTF-8."""
    pair = _ENCODED.get((key, value))
    if pair is None:
        pair = (key.lower().encode(), value.encode())
        if len(_ENCODED) < _ENCODED_MAX and key != "X-Request-Id":
            _ENCODED[(key, value)] = pair
    return pair


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
