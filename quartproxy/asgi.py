"""One nursery per HTTP request, shared by the handler and the response body.

quart-trio already runs a request's handler *and* the sending of its response inside one nursery
that it cancels when the client disconnects. :class:`ExchangeConnection` keeps that structure and
exposes the nursery to the handler through :class:`Exchange`, so the handler can start the child
and its helpers in it with ``nursery.start``. Consequences, all deliberate:

* the child outlives the handler's ``return`` (a stream's body is sent after it) but never the
  request: the nursery cannot exit before the child is reaped;
* a disconnect cancels the child's tasks exactly like it cancels the body — no "request body
  finished" heuristics;
* the access log is written once, after the nursery has exited, with the real final status;
* the last send of a response is shielded: Hypercorn closes or recycles the connection inside
  it, and must not be cancelled half-way by the disconnect that this very close announces
  (a half-done close leaves the socket open until the graceful timeout of a draining server;
  a half-done recycle leaves a keep-alive connection without its idle timeout). Completing
  the recycle means a keep-alive connection now waits for its next request; when the client
  closes it instead, :mod:`quartproxy.connections` ends it at once.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent
from quart_trio.asgi import TrioASGIHTTPConnection

from .observability import utc_now_iso
from .tracing import NO_SPAN, Span

log = logging.getLogger("quartproxy.asgi")

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")  # whole value: fullmatch only
# Upper bound for the shielded last send of a response (see ExchangeConnection).
FINAL_SEND_TIMEOUT_S = 5.0


@dataclass
class Exchange:
    """What one HTTP request accumulates for its logs, metrics and cleanup."""

    request_id: str
    method: str
    path: str
    user_agent: str
    nursery: trio.Nursery | None = None
    started: float = field(default_factory=time.perf_counter)
    route: str | None = None
    status: int | None = None
    first_byte_at: float | None = None
    stream: bool = False
    model: str | None = None
    outcome: str = "ok"
    auth: str = "none"
    # Run (shielded, in order) when the request's nursery has exited, however it ended: a slot
    # taken before the turn owned it is released here, a detached turn learns the client left.
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    admission: Any = None  # what admission decided (read by the test-only X-Conc headers)
    span: Span = NO_SPAN  # the request's trace span (PROXY_OTEL_ENABLED)

    def access_fields(self) -> dict[str, Any]:
        now = time.perf_counter()
        status = self.status if self.status is not None else 499
        outcome = self.outcome
        if self.status is None:
            outcome = "client_disconnect"
        elif outcome == "ok" and status >= 400:
            outcome = "error"
        return {
            "ts": utc_now_iso(),
            "level": "info",
            "req_id": self.request_id,
            "method": self.method,
            "route": self.route or self.path,
            "status": status,
            "dur_ms": round((now - self.started) * 1000, 1),
            "ttfb_ms": (
                round((self.first_byte_at - self.started) * 1000, 1)
                if self.first_byte_at is not None
                else None
            ),
            "stream": self.stream,
            "model": self.model,
            "outcome": outcome,
            "ua": self.user_agent,
            "auth": self.auth,
        }


_current: contextvars.ContextVar[Exchange] = contextvars.ContextVar("quartproxy_exchange")


def current_exchange() -> Exchange:
    return _current.get()


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def request_id_for(supplied: str | None) -> str:
    """The client's ``X-Request-Id`` if it is a safe token (it is logged and echoed), else a
    fresh one."""
    if supplied is not None and REQUEST_ID_RE.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


class ExchangeConnection(TrioASGIHTTPConnection):
    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        scope = self.scope
        supplied = _header(scope, b"x-request-id")
        exchange = Exchange(
            request_id=request_id_for(supplied),
            method=scope.get("method", "GET"),
            path=scope.get("path", "/"),
            user_agent=(_header(scope, b"user-agent") or "")[:200],
        )
        token = _current.set(exchange)
        started = getattr(self.app, "exchange_started", None)
        if started is not None:
            started(exchange, scope)

        async def tracking_send(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
            elif message["type"] == "http.response.body":
                if exchange.first_byte_at is None:
                    exchange.first_byte_at = time.perf_counter()
                if not message.get("more_body", False):
                    # Hypercorn recycles or closes the connection inside this call, and the
                    # http.disconnect that produces makes quart-trio cancel this nursery at
                    # once. Unshielded, that cancel lands in the middle of the close: the
                    # socket stays open and a draining server waits for it until its graceful
                    # timeout. Bounded, so a client that stopped reading cannot hold it.
                    deadline = trio.current_time() + FINAL_SEND_TIMEOUT_S
                    with trio.CancelScope(shield=True, deadline=deadline):
                        await send(message)
                    return
            await send(message)

        route = getattr(self.app, "direct_route", None)
        direct = route(scope) if route is not None else None
        try:
            async with trio.open_nursery() as nursery:
                exchange.nursery = nursery
                if direct is not None:  # the request path, without Quart (quartproxy.direct)
                    # In the nursery's own body, not a task of it: the same cancel scope (a
                    # disconnect still cancels it), one task fewer per request.
                    await direct(exchange, scope, receive, tracking_send)
                else:
                    request = self._create_request_from_scope(tracking_send)
                    nursery.start_soon(self.handle_messages, nursery, request, receive)
                    nursery.start_soon(self.handle_request, nursery, request, tracking_send)
        finally:
            with trio.CancelScope(shield=True):
                for cleanup in exchange.cleanups:
                    try:
                        await cleanup()
                    except Exception:
                        log.exception("request cleanup failed",
                                      extra={"req_id": exchange.request_id})
            _current.reset(token)
            finished = getattr(self.app, "exchange_finished", None)
            if finished is not None:
                finished(exchange)
