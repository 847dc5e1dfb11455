"""What a hostile or careless client can make the server do: nothing it should not.

* ``/__test/*`` needs the API key like every route that reports on the server;
* a completion route authorises before it reads a byte of the body, so an unauthenticated
  client gets 401 — not the JSON parser's 400, and not a server buffering up to
  PROXY_MAX_BODY_BYTES for it;
* a client that closes or resets a keep-alive connection frees its socket at once, not after
  the 75 s keep-alive timeout (20 such clients cost 20 descriptors for 75 s; with a descriptor
  limit of 256, accept() ran out);
* a client that declares a body over the cap and gives up gets its 413 and leaves no traceback.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from pathlib import Path

import orjson
import pytest
import trio

from .conftest import API_KEY, AUTH, Proxy, StartProxy
from .servers import ServerProcess, fake_env

COMPLETION_PATHS = ["/v1/chat/completions", "/v1/completions"]
BAD_AUTH = [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic abc"}]


def port_of(proxy: Proxy) -> int:
    return int(proxy.base_url.rsplit(":", 1)[1])


async def exchange_raw(port: int, data: bytes) -> bytes:
    """Send ``data`` (headers, maybe part of a body) and read one response head and body.

    The connection stays open while reading, so a server that waited for the rest of a
    declared body would not answer at all.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed before a response: {reply!r}"
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            chunk = await stream.receive_some(65536)
            assert chunk
            body += chunk
    return head + b"\r\n\r\n" + body


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


# ---------------------------------------------------------------------------- test routes


@pytest.mark.parametrize("headers", BAD_AUTH, ids=["none", "wrong", "basic"])
async def test_test_routes_need_the_key(start_proxy: StartProxy, headers: dict[str, str]) -> None:
    proxy = await start_proxy(test_endpoints=True)
    async with proxy.client() as client:
        refused = await client.get("/__test/conc", headers=headers)
        allowed = await client.get("/__test/conc", headers=AUTH)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert "streams" not in refused.text
    assert allowed.status_code == 200 and "streams" in allowed.json()


# ---------------------------------------------------------------------------- auth first


@pytest.mark.parametrize("path", COMPLETION_PATHS)
@pytest.mark.parametrize("headers", BAD_AUTH, ids=["none", "wrong", "basic"])
async def test_bad_key_with_malformed_json_is_401(
    proxy: Proxy, path: str, headers: dict[str, str]
) -> None:
    async with proxy.client() as client:
        for content in (b"{nope", b"", b"[1, 2]", b'{"messages": 5}'):
            resp = await client.post(path, content=content,
                                     headers={**headers, "Content-Type": "application/json"})
            assert resp.status_code == 401, (content, resp.text)
            assert resp.json()["error"]["code"] == "invalid_api_key"
    assert proxy.pids() == []


@pytest.mark.parametrize("path", COMPLETION_PATHS)
@pytest.mark.parametrize("auth", [b"", b"Authorization: Bearer wrong-key\r\n"],
                         ids=["none", "wrong"])
async def test_bad_key_with_huge_declared_body_is_401_unread(
    proxy: Proxy, path: str, auth: bytes
) -> None:
    declared = proxy.settings.max_body_bytes  # as much as the server would ever buffer
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n").encode() + auth + b"\r\n"
    # Only the head and the first bytes go out; the server must answer without the rest.
    # (If it read the body it would wait for it, up to its body timeout of a minute or more.)
    with trio.fail_after(30):
        reply = await exchange_raw(port_of(proxy), head + b'{"model": "codex-5", "mess')
    assert status_of(reply) == 401
    assert b"invalid_api_key" in reply
    assert proxy.pids() == []


# ---------------------------------------------------------------------------- descriptors

# Well below the 75 s keep-alive timeout that used to hold the sockets, and far above the
# milliseconds closing them takes: a hang guard, not a speed bound.
FD_SETTLE_GUARD_S = 45
CLIENTS = 20


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def http_exchange(port: int, request: bytes, close: str) -> bytes:
    """One request on a fresh keep-alive connection, the whole response read, then the client
    closes with a FIN (``fin``), a reset (``rst``), or a FIN once the connection has been idle
    for a moment (``idle-fin``)."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk
            body += chunk
        if close == "idle-fin":
            # Give the server time to recycle the connection into its keep-alive state.
            # (Either order must end the same way; this makes the idle one likely.)
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1)
        if close == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return head
    finally:
        sock.close()


def healthz_request() -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def completion_request() -> bytes:
    body = orjson.dumps({"model": "codex-5", "messages": [{"role": "user", "content": "hi"}]})
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body)


@pytest.mark.parametrize(("kind", "close"), [
    ("healthz", "rst"), ("healthz", "fin"), ("healthz", "idle-fin"),
    ("completion", "rst"), ("completion", "fin"), ("completion", "idle-fin"),
])
async def test_closed_keepalive_connections_free_their_sockets(
    tmp_path: Path, fast_fake: Path, kind: str, close: str
) -> None:
    request = healthz_request() if kind == "healthz" else completion_request()
    async with trio.open_nursery() as nursery:
        server = await ServerProcess(tmp_path, fake_env(fast_fake)).start(nursery)
        assert server.process is not None
        pid = server.process.pid
        # Warm up (the first request opens what the server keeps for good), then settle.
        await trio.to_thread.run_sync(http_exchange, server.port, request, "fin")
        with trio.fail_after(FD_SETTLE_GUARD_S):
            baseline = open_fds(pid)
            while True:
                await trio.sleep(0.2)
                now = open_fds(pid)
                if now == baseline:
                    break
                baseline = now
        for _ in range(CLIENTS):
            head = await trio.to_thread.run_sync(http_exchange, server.port, request, close)
            assert head.startswith(b"HTTP/1.1 200")
        with trio.fail_after(FD_SETTLE_GUARD_S):
            while open_fds(pid) > baseline:  # noqa: ASYNC110 (another process's state)
                await trio.sleep(0.05)
        await server.stop()
        nursery.cancel_scope.cancel()
    assert server.process.returncode == 0


# ---------------------------------------------------------------------------- 413


async def test_declared_body_over_cap_is_a_clean_413(tmp_path: Path, fast_fake: Path) -> None:
    requests = 60
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: 5000\r\n\r\n".encode())
    async with trio.open_nursery() as nursery:
        server = await ServerProcess(
            tmp_path, fake_env(fast_fake, PROXY_MAX_BODY_BYTES=1000)
        ).start(nursery)
        for _ in range(requests):
            # One byte of the declared 5000, then the client reads its answer and gives up.
            with trio.fail_after(30):
                reply = await exchange_raw(server.port, head + b"{")
            assert status_of(reply) == 413 and b"request_too_large" in reply
        # Every error the requests could log was written before the SIGTERM notice: once that
        # notice has been read, stderr holds all of them.
        server.signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await server.wait()
            while b"SIGTERM received" not in server.stderr:  # noqa: ASYNC110
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert code == 0
    stderr = bytes(server.stderr)
    assert b"Error in ASGI" not in stderr and b"Traceback" not in stderr, stderr[-3000:]
    assert bytes(server.stdout).count(b'"status":413') == requests
