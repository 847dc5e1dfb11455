"""The direct request path answers byte for byte as the Quart path does.

Every ``POST`` to a completion route is served straight off the ASGI scope
(:mod:`quartproxy.direct`); every other request, and any ``POST`` when ``state.direct`` is
``None``, goes through Quart's views and hooks. Both call the same route functions, but
everything around them — body limits, envelopes for framework errors, CORS, the test-only
``X-Conc-*`` headers, ``X-Request-Id``, ``Connection: close`` while draining — is implemented
twice. These tests send each request twice to one server, on a fresh connection each time, once
with the direct routes and once without, and compare what came back on the wire.

What is compared: the status line and the header block as raw bytes (names, values, order), and
the body bytes. Held equal by the test rather than normalised: response ids and ``created`` are
pinned (the route modules' ``secrets``/``time`` are replaced by fixed ones, reset before each
request), the request id is supplied by the client, the rate limiter's clock is fixed.
Normalised, because no byte-identical comparison is possible for them:

* the ``date`` header's value: Hypercorn writes the current second;
* the chunk framing of a chunked body (the bodies are compared de-chunked): where one chunk ends
  depends on how many of the child's lines were in the pipe at each read, which is timing;
* SSE keepalive comments, where a case lets them happen (``: keepalive <ms>``, a wall-clock time
  at a moment set by a timer): they are removed, after checking that both sides sent some;
* an ``X-Request-Id`` the server generated (a fresh uuid4) when the client's is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import trio

from quartproxy import render_responses
from quartproxy.routes import completions, responses

from .conftest import API_KEY, Proxy, StartProxy

HANG_GUARD_S = 60  # a hang guard for one exchange on a loaded machine, not a speed assertion
SMALL_BODY_CAP = 4096
KEEPALIVE_RE = re.compile(rb": keepalive \d+\n\n")
DATE_RE = re.compile(rb"\r\ndate: [^\r]*", re.IGNORECASE)
FIXED_CREATED = 1_700_000_000.0


# ---------------------------------------------------------------------------- raw HTTP


@dataclass
class Raw:
    head: bytes  # status line and header lines, date value normalised
    body: bytes  # de-chunked
    chunked: bool

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    def header_names(self) -> list[str]:
        return [line.partition(b":")[0].decode().lower() for line in self.head.split(b"\r\n")[1:]]


class Reader:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    async def fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
        self.buf += data

    async def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if self.eof:
                raise AssertionError(f"connection closed before {marker!r}: {bytes(self.buf)!r}")
            await self.fill()
        index = self.buf.index(marker)
        data = bytes(self.buf[:index])
        del self.buf[:index + len(marker)]
        return data

    async def exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            if self.eof:
                raise AssertionError("connection closed inside a body")
            await self.fill()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def rest(self) -> bytes:
        while not self.eof:
            await self.fill()
        data = bytes(self.buf)
        self.buf.clear()
        return data


async def read_response(reader: Reader) -> Raw:
    head = await reader.until(b"\r\n\r\n")
    while head.split(b" ", 2)[1].startswith(b"1"):  # an informational response: skip it
        head = await reader.until(b"\r\n\r\n")
    raw = Raw(DATE_RE.sub(b"\r\ndate: <now>", head), b"", False)
    length = raw.header("content-length")
    if (raw.header("transfer-encoding") or "").lower() == "chunked":
        raw.chunked = True
        parts = []
        while True:
            size = int((await reader.until(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.until(b"\r\n")
                break
            parts.append(await reader.exactly(size))
            assert await reader.exactly(2) == b"\r\n"
        raw.body = b"".join(parts)
    elif length is not None:
        raw.body = await reader.exactly(int(length))
    elif raw.status not in (204, 304):
        raw.body = await reader.rest()
    return raw


@dataclass
class Request:
    """One raw HTTP/1.x request: ``chunked_parts`` are sent chunked; ``content_length``, when
    given, is declared whatever the body's length (a shorter body is all the client sends)."""

    path: str = "/v1/chat/completions"
    body: bytes | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    auth: str | None = f"Bearer {API_KEY}"
    chunked_parts: list[bytes] | None = None
    content_length: int | None = None  # declared instead of the body's real length
    version: str = "1.1"
    request_id: str | None = None

    def encode(self, host: str, name: str) -> bytes:
        lines = [f"POST {self.path} HTTP/{self.version}", f"Host: {host}"]
        if self.auth is not None:
            lines.append(f"Authorization: {self.auth}")
        lines.append(f"X-Request-Id: {self.request_id or 'eq-' + name}")
        lines += [f"{key}: {value}" for key, value in self.headers]
        body = self.body or b""
        if self.chunked_parts is not None:
            lines.append("Transfer-Encoding: chunked")
            body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in self.chunked_parts)
            body += b"0\r\n\r\n"
        elif self.body is not None or self.content_length is not None:
            declared = self.content_length if self.content_length is not None else len(body)
            lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {declared}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange(base_url: str, request: Request, name: str) -> Raw:
    url = urlsplit(base_url)
    assert url.hostname is not None and url.port is not None
    with trio.fail_after(HANG_GUARD_S):
        stream = await trio.open_tcp_stream(url.hostname, url.port)
        async with stream:
            await stream.send_all(request.encode(f"{url.hostname}:{url.port}", name))
            return await read_response(Reader(stream))


# ---------------------------------------------------------------------------- comparison


def chat(prompt: str = "hello", **extra: Any) -> bytes:
    return orjson.dumps({"model": "codex-5", "messages": [{"role": "user", "content": prompt}],
                         **extra})


def legacy(prompt: str = "hello", **extra: Any) -> bytes:
    return orjson.dumps({"model": "codex-5", "prompt": prompt, **extra})


def respond(text: str = "hello", **extra: Any) -> bytes:
    return orjson.dumps({"model": "codex-5", "input": text, **extra})


class Ids:
    """Deterministic ``secrets.token_hex`` for the id generators, reset before each request."""

    def __init__(self) -> None:
        self.counter = 0

    def reset(self) -> None:
        self.counter = 0

    def token_hex(self, nbytes: int = 32) -> str:
        self.counter += 1
        return f"{self.counter:0{nbytes * 2}x}"


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> Ids:
    ids = Ids()
    fixed_time = SimpleNamespace(time=lambda: FIXED_CREATED)
    for module in (completions, responses):
        monkeypatch.setattr(module, "time", fixed_time)
    monkeypatch.setattr(completions, "secrets", ids)
    monkeypatch.setattr(render_responses, "secrets", ids)
    return ids


class Twin:
    """One server, asked the same thing through the direct path and through Quart."""

    def __init__(self, proxy: Proxy, ids: Ids) -> None:
        self.proxy = proxy
        self.ids = ids
        self.direct = proxy.state.direct
        assert self.direct is not None, "the completion routes are served directly by default"
        self.served_directly = 0
        # Each request starts with no turn running (the previous one's slot released), so
        # occupancy — and the X-Conc-* headers — are the same for both; off while a turn is held.
        self.settle = True
        serve = self.direct.serve

        async def counting(*args: Any) -> None:
            self.served_directly += 1
            await serve(*args)

        self.direct.serve = counting

    async def both(self, name: str, request: Request) -> tuple[Raw, Raw]:
        answers = []
        for direct in (True, False):
            if self.settle:
                with trio.fail_after(HANG_GUARD_S):
                    await self.proxy.state.service.running.wait_value(0)
            self.proxy.state.direct = self.direct if direct else None
            count = self.served_directly
            self.ids.reset()
            try:
                answers.append(await exchange(self.proxy.base_url, request, name))
            finally:
                self.proxy.state.direct = self.direct
            assert self.served_directly == count + direct, (
                f"{name}: expected the {'direct' if direct else 'Quart'} path to serve it")
        return answers[0], answers[1]

    async def same(self, name: str, request: Request, status: int,
                   keepalive: bool = False) -> Raw:
        """Both answers, checked equal; returns the direct one for case-specific checks."""
        direct, quart = await self.both(name, request)
        assert direct.status == status, f"{name}: {direct.head!r} {direct.body[:300]!r}"
        assert direct.head == quart.head, f"{name}: heads differ\n{direct.head!r}\n{quart.head!r}"
        assert direct.chunked == quart.chunked
        if keepalive:
            assert KEEPALIVE_RE.search(direct.body) and KEEPALIVE_RE.search(quart.body), name
            assert KEEPALIVE_RE.sub(b"", direct.body) == KEEPALIVE_RE.sub(b"", quart.body), name
        else:
            assert direct.body == quart.body, f"{name}: bodies differ"
        return direct


def error_of(raw: Raw) -> dict[str, Any]:
    error: dict[str, Any] = orjson.loads(raw.body)["error"]
    return error


# ---------------------------------------------------------------------------- the cases

SSE = ("content-type", "text/event-stream; charset=utf-8")
CORS = [("Origin", "https://app.example")]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}}]


async def test_default_settings(start_proxy: StartProxy, pinned: Ids) -> None:
    """Successes, streams, auth and body errors, validation and codex errors, CORS, keepalive
    opt-outs, HTTP/1.0 — with default settings (CORS for ``*``, no test endpoints)."""
    proxy = await start_proxy(max_body_bytes=SMALL_BODY_CAP, sse_keepalive_ms=20)
    twin = Twin(proxy, pinned)
    stream = {"stream": True}
    no_ka = [("X-No-Keepalive", "1")]  # streams below: no timer-driven comment in the bytes

    raw = await twin.same("chat_json", Request(body=chat()), 200)
    assert orjson.loads(raw.body)["choices"][0]["message"]["content"].startswith("Hello!")
    raw = await twin.same("chat_stream", Request(body=chat(**stream), headers=no_ka), 200)
    assert raw.chunked and raw.body.endswith(b"data: [DONE]\n\n")
    raw = await twin.same("chat_stream_usage", Request(
        body=chat(stream=True, stream_options={"include_usage": True}), headers=no_ka), 200)
    assert b'"usage":{' in raw.body
    await twin.same("legacy_json", Request("/v1/completions", legacy()), 200)
    await twin.same("legacy_stream", Request("/v1/completions", legacy(**stream),
                                             headers=no_ka), 200)
    raw = await twin.same("responses_json", Request("/v1/responses", respond()), 200)
    assert orjson.loads(raw.body)["id"] == f"resp_{1:048x}"  # the pinned ids are in use
    raw = await twin.same("responses_stream", Request("/v1/responses", respond(**stream),
                                                      headers=no_ka), 200)
    assert b"event: response.completed" in raw.body
    raw = await twin.same("tools_on_proto", Request(body=chat(tools=TOOLS)), 400)
    assert error_of(raw)["param"] == "tools"

    # Authentication, and that it comes before the body.
    assert error_of(await twin.same("no_auth", Request(body=chat(), auth=None), 401))
    await twin.same("wrong_key", Request(body=chat(), auth="Bearer nope"), 401)
    await twin.same("basic_scheme", Request(body=chat(), auth=f"Basic {API_KEY}"), 401)
    await twin.same("auth_first_huge_body", Request(body=b"", auth="Bearer nope",
                                                    content_length=10**9), 401)
    await twin.same("first_auth_header_counts", Request(
        body=chat(), auth="Bearer nope", headers=[("Authorization", f"Bearer {API_KEY}")]), 401)
    await twin.same("upper_case_names", Request(body=chat(), auth=None, headers=[
        ("AUTHORIZATION", f"Bearer {API_KEY}"), ("CONTENT-TYPE", "application/json")]), 200)

    # The body: empty, not JSON, too large (declared or sent chunked), chunked, too slow.
    await twin.same("empty_body", Request(body=b""), 400)
    raw = await twin.same("bad_json", Request(body=b'{"model": '), 400)
    assert error_of(raw)["code"] == "invalid_json"
    raw = await twin.same("too_large_declared", Request(body=b"", content_length=10**9), 413)
    assert error_of(raw)["code"] == "request_too_large"
    await twin.same("too_large_chunked", Request(
        chunked_parts=[b"x" * 1024] * (SMALL_BODY_CAP // 1024 + 2)), 413)
    await twin.same("too_large_sent", Request(body=chat("x" * SMALL_BODY_CAP)), 413)
    await twin.same("chunked_ok", Request(chunked_parts=[chat()[:7], chat()[7:]]), 200)

    # Validation and codex errors: the envelope names the route's field.
    raw = await twin.same("bad_param", Request(body=chat(temperature="hot")), 400)
    assert error_of(raw)["param"] == "temperature"
    await twin.same("unknown_model", Request(body=orjson.dumps(
        {"model": "nope", "messages": [{"role": "user", "content": "hi"}]})), 404)
    await twin.same("messages_missing", Request(body=b'{"model": "codex-5"}'), 400)
    for name, path, body, param in (
        ("context_chat", "/v1/chat/completions", chat("SCENARIO=context_window RETRIES=0"),
         "messages"),
        ("context_legacy", "/v1/completions", legacy("SCENARIO=context_window RETRIES=0"),
         "prompt"),
        ("context_responses", "/v1/responses", respond("SCENARIO=context_window RETRIES=0"),
         "input"),
    ):
        raw = await twin.same(name, Request(path, body), 400)
        assert error_of(raw)["param"] == param, name
    await twin.same("codex_5xx", Request(body=chat("SCENARIO=server_error RETRIES=0")), 502)

    # Request ids, CORS, keepalive opt-outs, HTTP/1.0.
    raw = await twin.same("cors_origin", Request(body=chat(), headers=CORS), 200)
    assert raw.header("access-control-allow-origin") == "https://app.example"
    raw = await twin.same("cors_request_headers", Request(body=chat(), headers=[
        *CORS, ("Access-Control-Request-Headers", "X-Custom, Authorization")]), 200)
    assert raw.header("access-control-allow-headers") == "X-Custom, Authorization"
    slow = chat("SCENARIO=slow DELTAS=3 DELAY_MS=150", stream=True)
    for name, path, headers in (
        ("no_keepalive_query", "/v1/chat/completions?no_keepalive=1", []),
        ("no_keepalive_header", "/v1/chat/completions", [("X-No-Keepalive", "true")]),
        ("no_keepalive_agent", "/v1/chat/completions", [("User-Agent", "obsidian/1.5")]),
    ):
        raw = await twin.same(name, Request(path, slow, headers=headers), 200)
        assert not KEEPALIVE_RE.search(raw.body), name
    await twin.same("keepalive_on", Request(body=slow), 200, keepalive=True)
    direct, quart = await twin.both("bad_request_id", Request(body=chat(), request_id="a b"))
    ids = (direct.header("x-request-id"), quart.header("x-request-id"))
    assert all(i and re.fullmatch("[0-9a-f]{32}", i) for i in ids) and ids[0] != ids[1]
    assert direct.body == quart.body and direct.head.replace(ids[0].encode(), b"") == \
        quart.head.replace(ids[1].encode(), b"")
    raw = await twin.same("http_1_0", Request(body=chat(), version="1.0"), 200)
    assert raw.header_names().count("connection") == 1  # h11's own close, no second one

    # A route that raises something unexpected: the 500 envelope, logged.
    service = proxy.state.service

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unexpected")

    service.start = broken
    try:
        raw = await twin.same("internal_error", Request(body=chat()), 500)
    finally:
        del service.start
    assert error_of(raw)["type"] == "server_error"

    # A body slower than the body timeout (shortened here for both paths): 408.
    proxy.app.config["BODY_TIMEOUT"] = twin.direct.body_timeout_s = 0.3
    raw = await twin.same("body_timeout", Request(body=chat()[:5], content_length=len(chat())),
                          408)
    await proxy.wait_idle()


async def test_test_build_conc_headers_and_drain(start_proxy: StartProxy, pinned: Ids,
                                                 tmp_path: Path) -> None:
    """``PROXY_TEST_ENDPOINTS`` (X-Conc-* on every admitted or rejected request), an origin
    list, a 429 from the concurrency limit, and the drain: 503 ``shutting_down`` with
    ``Retry-After`` and ``Connection: close`` while an in-flight turn keeps the server up."""
    gate = tmp_path / "gate"
    proxy = await start_proxy(
        child_env={"FAKE_CODEX_GATE": str(gate)}, test_endpoints=True, max_concurrency=1,
        sse_max_concurrency=1, cors_allow_origins="https://app.example, https://b.example",
    )
    twin = Twin(proxy, pinned)
    raw = await twin.same("conc_json", Request(body=chat(), headers=CORS), 200)
    assert raw.header("x-conc-limit") == "1" and raw.header("vary") == "Origin"
    raw = await twin.same("conc_stream", Request(body=chat(stream=True)), 200)
    assert raw.header("x-conc-before") == "0"
    await twin.same("conc_responses", Request("/v1/responses", respond()), 200)
    raw = await twin.same("origin_not_listed", Request(body=chat(), headers=[
        ("Origin", "https://evil.example")]), 200)
    assert raw.header("access-control-allow-origin") is None
    await twin.same("conc_401", Request(body=chat(), auth=None), 401)

    # Hold the only slot with a turn that ends when the gate file exists.
    held = bytearray()
    running = trio.Event()

    async def hold() -> None:
        request = Request(body=chat("SCENARIO=gated", stream=True))
        url = urlsplit(proxy.base_url)
        assert url.hostname is not None and url.port is not None
        stream = await trio.open_tcp_stream(url.hostname, url.port)
        async with stream:
            await stream.send_all(request.encode(f"{url.hostname}:{url.port}", "held"))
            reader = Reader(stream)
            while b'" is"' not in reader.buf:
                await reader.fill()
            running.set()
            held.extend(await reader.until(b"data: [DONE]\n\n"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        twin.settle = False
        with trio.fail_after(HANG_GUARD_S):
            await running.wait()
        raw = await twin.same("conc_429", Request(body=chat(), headers=CORS), 429)
        assert error_of(raw)["code"] == "concurrency_exceeded"
        assert raw.header("x-conc-before") == "1"

        proxy.lifecycle.start_drain()  # the held turn keeps the listener open
        for name, request in (
            ("drain_chat", Request(body=chat())),
            ("drain_legacy", Request("/v1/completions", legacy())),
            ("drain_responses", Request("/v1/responses", respond(stream=True))),
            ("drain_no_auth", Request(body=chat(), auth=None)),
            ("drain_cors", Request(body=chat(), headers=CORS)),
            ("drain_http_1_0", Request(body=chat(), version="1.0")),
        ):
            raw = await twin.same(name, request, 503)
            assert error_of(raw)["code"] == "shutting_down"
            assert raw.header("retry-after") == "1" and raw.header("connection") == "close"
            assert raw.header_names().count("connection") == 1
        gate.touch()
    assert b"upstream." in held


async def test_rate_limit_and_no_cors(start_proxy: StartProxy, pinned: Ids) -> None:
    """429 ``rate_limited`` with ``Retry-After`` (the limiter's clock fixed, so both paths are
    told the same wait), with CORS off."""
    proxy = await start_proxy(rate_limit_enabled=True, rate_limit_max=2, enable_cors=False)
    proxy.state.admission.rate._clock = lambda: 1_000_000.5
    twin = Twin(proxy, pinned)
    raw = await twin.same("no_cors", Request(body=chat()), 200)  # uses the window's 2 requests
    assert raw.header("access-control-allow-origin") is None
    raw = await twin.same("rate_limited", Request(body=chat()), 429)
    assert error_of(raw)["code"] == "rate_limited" and raw.header("retry-after") == "20"
    await twin.same("rate_limited_stream", Request("/v1/responses", respond(stream=True)), 429)


async def test_app_server_backend(start_proxy: StartProxy, pinned: Ids) -> None:
    """The same over long-lived app-server workers (the backend the benchmarks measure).

    Each worker serves one request: the fake numbers the tool calls it makes per process
    (``call_fake_<n>_<k>``), and a fresh process gives both paths the same call ids."""
    proxy = await start_proxy(backend="app-server", workers=1, worker_max_requests=1)
    await proxy.wait_ready()
    twin = Twin(proxy, pinned)
    no_ka = [("X-No-Keepalive", "1")]
    await twin.same("app_chat_json", Request(body=chat()), 200)
    await twin.same("app_chat_stream", Request(body=chat(stream=True), headers=no_ka), 200)
    await twin.same("app_responses_stream", Request("/v1/responses", respond(stream=True),
                                                    headers=no_ka), 200)
    await twin.same("app_legacy_json", Request("/v1/completions", legacy()), 200)
    raw = await twin.same("app_tool_call", Request(body=chat("SCENARIO=tool_call", tools=TOOLS)),
                          200)
    assert orjson.loads(raw.body)["choices"][0]["finish_reason"] == "tool_calls"
    await twin.same("app_tool_call_stream", Request(
        "/v1/responses", respond("SCENARIO=tool_call", stream=True, tools=[TOOLS[0]["function"] | {
            "type": "function"}]), headers=no_ka), 200)
