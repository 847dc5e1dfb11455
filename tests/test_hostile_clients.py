"""What a hostile or careless client can make the server do: nothing it should not.

* ``/__test/*`` needs the API key like every route that reports on the server;
* a completion route authorises before it reads a byte of the body, so an unauthenticated
  client gets 401 — not the JSON parser's 400, and not a server buffering up to
  PROXY_MAX_BODY_BYTES for it;
"""

from __future__ import annotations

import pytest
import trio

from .conftest import AUTH, Proxy, StartProxy

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
