"""The HTTP edge of the completion routes, without a web framework.

The completion routes (chat, legacy, Responses) are the request path, and per request Quart's
request and app contexts, URL matching, session and hook machinery cost about as much CPU as
everything the proxy itself does for a turn. So those routes are written against two small
types here — :class:`Inbound` (what a route reads: headers, query arguments, the body) and
:class:`Answer` (status, headers, a body of bytes or an async stream) — and served two ways:
straight off the ASGI scope by :mod:`quartproxy.direct` (every ``POST`` to them), and as
ordinary Quart views (which keep them in Quart's URL map, so other methods get the usual 405
with the right ``Allow``). Both go through the same functions below, so auth, CORS, envelopes
and header order are one implementation.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from . import errors
from .asgi import Exchange
from .config import Settings
from .errors import ApiError

JSON_TYPE = "application/json"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
_SSE_HEADER_ITEMS = tuple(SSE_HEADERS.items())  # shared by every stream's header list
DEFAULT_ALLOW_HEADERS = (
    "Authorization, Content-Type, Accept, OpenAI-Organization, OpenAI-Project, OpenAI-Beta, "
    "X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, "
    "X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Retry-Count, "
    "X-Stainless-Timeout, X-Stainless-Async, X-Stainless-Helper-Method, X-Request-Id, "
    "X-No-Keepalive"
)
EXPOSE_HEADERS = "X-Request-Id, Retry-After, X-Conc-Before, X-Conc-After, X-Conc-Limit"
KEEPALIVE_OPT_OUT_AGENTS = ("obsidian", "electron")


class Inbound(Protocol):
    """What a route may read from its request."""

    def header(self, name: str) -> str:
        """The first value of a header (case-insensitive), ``""`` when absent."""

    def has_header(self, name: str) -> bool: ...

    def arg(self, name: str) -> str:
        """The first value of a query argument, ``""`` when absent."""

    async def body(self) -> bytes:
        """The whole body (raises the framework's 413/408 when too large or too slow)."""


@dataclass(slots=True)
class Answer:
    """A response before any byte of it is sent. ``headers`` are in wire order."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | AsyncIterable[bytes]


def json_answer(payload: Any, status: int = 200) -> Answer:
    data = orjson.dumps(payload)
    return Answer(status, [("Content-Type", JSON_TYPE), ("Content-Length", str(len(data)))],
                  data)


def error_answer(error: ApiError) -> Answer:
    data = error.body()
    return Answer(error.status, [*error.headers.items(), ("Content-Type", JSON_TYPE),
                                 ("Content-Length", str(len(data)))], data)


def stream_answer(body: AsyncIterable[bytes]) -> Answer:
    return Answer(200, list(_SSE_HEADER_ITEMS), body)


def authorise(http: Inbound, api_keys: Sequence[bytes], exchange: Exchange) -> str:
    """The caller's key if it matches a configured key (constant time), else 401."""
    header = http.header("Authorization")
    scheme, _, token = header.partition(" ")
    exchange.auth = "present" if header else "none"
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.unauthorized()
    supplied = token.strip().encode()
    matched = False
    for key in api_keys:
        matched |= hmac.compare_digest(supplied, key)
    if not matched:
        raise errors.unauthorized()
    return token.strip()


def parse_json(data: bytes) -> Any:
    if not data:
        raise errors.invalid_json("The request body is empty; send a JSON object.")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise errors.invalid_json(f"The request body is not valid JSON: {exc}.") from None


def keepalive_seconds(settings: Settings, http: Inbound) -> float:
    """The SSE keepalive interval for this request (0 when a client opted out)."""
    if settings.sse_keepalive_ms <= 0:
        return 0.0
    agent = http.header("User-Agent").lower()
    if any(marker in agent for marker in KEEPALIVE_OPT_OUT_AGENTS):
        return 0.0
    if http.header("X-No-Keepalive").strip() in ("1", "true"):
        return 0.0
    if http.arg("no_keepalive") in ("1", "true"):
        return 0.0
    return settings.sse_keepalive_ms / 1000


def cors_headers(settings: Settings, origins: list[str], http: Inbound) -> list[tuple[str, str]]:
    if not settings.enable_cors:
        return []
    origin = http.header("Origin")
    allow = (http.header("Access-Control-Request-Headers")
             if http.has_header("Access-Control-Request-Headers") else DEFAULT_ALLOW_HEADERS)
    headers = [
        ("Access-Control-Allow-Methods", "GET, POST, HEAD, OPTIONS"),
        ("Access-Control-Allow-Headers", allow),
        ("Access-Control-Max-Age", "600"),
        ("Access-Control-Expose-Headers", EXPOSE_HEADERS),
    ]
    if origin:
        if "*" in origins or origin in origins:
            headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    elif "*" in origins:
        headers.append(("Access-Control-Allow-Origin", "*"))
    return headers


def conc_headers(exchange: Exchange) -> list[tuple[str, str]]:
    """The test-only ``X-Conc-*`` headers (``PROXY_TEST_ENDPOINTS``): what admission decided."""
    from .admission import Admitted, ConcurrencyRejected

    decided = exchange.admission
    if isinstance(decided, Admitted):
        before, after, limit = decided.before, decided.before + 1, decided.limit
    elif isinstance(decided, ConcurrencyRejected):
        before, after, limit = decided.before, decided.before, decided.limit
    else:
        return []
    return [("X-Conc-Before", str(before)), ("X-Conc-After", str(after)),
            ("X-Conc-Limit", str(limit))]


Handler = Callable[[Any, Exchange, Inbound], Awaitable[Answer]]
