"""AC1, the edge: the shipped nginx config in front of the proxy, with a short read timeout.

nginx runs from Debian's package on loopback with ``deploy/nginx/quartproxy.conf`` — only its
ports and ``proxy_read_timeout`` are changed — so what is tested is what operators deploy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from quartproxy import contract

from .conftest import AUTH, ROOT, Proxy, StartProxy, chat_body
from .servers import free_port

EDGE_READ_TIMEOUT_S = 2


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is required in CI (.ci/run installs it)")
        pytest.skip("nginx not installed (apt-get install nginx)")
    return found


def edge_config(tmp: Path, origin_port: int, edge_port: int) -> Path:
    site = (ROOT / "deploy" / "nginx" / "quartproxy.conf").read_text()
    site, n_origin = re.subn(r"server 127\.0\.0\.1:11435;", f"server 127.0.0.1:{origin_port};",
                             site)
    site, n_listen = re.subn(r"listen 80;", f"listen 127.0.0.1:{edge_port};", site)
    site, n_read = re.subn(r"proxy_read_timeout \d+s;",
                           f"proxy_read_timeout {EDGE_READ_TIMEOUT_S}s;", site)
    assert (n_origin, n_listen, n_read) == (1, 1, 1), "deploy config changed shape"
    (tmp / "quartproxy.conf").write_text(site)
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = f"""{user}daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/quartproxy.conf;
}}
"""
    path = tmp / "nginx.conf"
    path.write_text(main)
    return path


@asynccontextmanager
async def nginx_in_front(proxy: Proxy, tmp_path: Path) -> AsyncIterator[str]:
    """nginx with the shipped site config, proxying to ``proxy``; yields the edge's base URL."""
    binary = nginx_binary()
    origin_port = int(proxy.base_url.rsplit(":", 1)[1])
    edge_port = free_port()
    conf_dir = tmp_path / "nginx"
    conf_dir.mkdir()
    config = edge_config(conf_dir, origin_port, edge_port)
    check = await trio.run_process(
        [binary, "-t", "-p", str(conf_dir), "-c", str(config), "-e", str(conf_dir / "error.log")],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    assert check.returncode == 0, check.stderr
    process = await trio.lowlevel.open_process(
        [binary, "-p", str(conf_dir), "-c", str(config), "-e", str(conf_dir / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(60):  # hang guard
            while True:  # another process's readiness: its port accepting
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", edge_port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                break
        yield f"http://127.0.0.1:{edge_port}"
    finally:
        process.terminate()
        await process.wait()


@pytest.fixture
async def edge(start_proxy: StartProxy, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """The edge in front of a proxy tuned for it: early finalize and keepalives inside the
    edge's read timeout."""
    nginx_binary()
    proxy = await start_proxy(
        nonstream_truncate_after_ms=1000, sse_keepalive_ms=500, stream_idle_timeout_ms=4500,
    )
    async with nginx_in_front(proxy, tmp_path) as base:
        yield base, proxy


@pytest.fixture
async def plain_edge(start_proxy: StartProxy, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """The edge in front of a proxy with no early finalize: nothing may cut an answer short."""
    nginx_binary()
    proxy = await start_proxy()
    async with nginx_in_front(proxy, tmp_path) as base:
        yield base, proxy


async def test_slow_nonstream_returns_complete_json_within_edge_timeout(
    edge: tuple[str, object],
) -> None:
    base, _ = edge
    # 60 deltas 100 ms apart: 6 s of work, three times the edge's read timeout.
    body = chat_body("SCENARIO=slow DELTAS=60 DELAY_MS=100")
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    contract.assert_valid(contract.check_chat_json(resp.content))
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "length"  # finalized early, inside the edge timeout
    assert choice["message"]["content"].startswith("Streaming is")  # the text so far


async def test_stream_is_not_buffered_and_survives_on_keepalives(
    edge: tuple[str, object],
) -> None:
    base, proxy = edge
    state = proxy.state  # type: ignore[attr-defined]
    body = chat_body("SCENARIO=stream_hang", stream=True, stream_options={"include_usage": True})
    raw = b""
    alive_at_first_content: int | None = None
    async with httpx.AsyncClient(base_url=base, timeout=30) as client, client.stream(
        "POST", "/v1/chat/completions", json=body, headers=AUTH
    ) as resp:
        assert resp.status_code == 200
        async for chunk in resp.aiter_raw():
            raw += chunk
            if alive_at_first_content is None and b'"content":"Hello!"' in raw:
                alive_at_first_content = state.service.running.value
    # Unbuffered: the first content arrived while its child was still running.
    assert alive_at_first_content == 1
    # The child went silent for longer than nginx's read timeout; keepalive comments kept the
    # connection open until the proxy's own idle deadline ended the stream properly.
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=True))
    text, finish, usage = contract.collect_stream_content(raw)
    assert (text, finish) == ("Hello! This is", "length") and usage is not None
    assert raw.count(b": keepalive ") >= 2


async def test_large_body_is_never_cut_short(plain_edge: tuple[str, Any]) -> None:
    base, proxy = plain_edge
    body = chat_body("SCENARIO=big DELTAS=20000")
    async with httpx.AsyncClient(base_url=base, timeout=60) as edge_client:
        through_edge = await edge_client.post("/v1/chat/completions", json=body, headers=AUTH)
    async with httpx.AsyncClient(base_url=proxy.base_url, timeout=60) as direct_client:
        direct = await direct_client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert through_edge.status_code == direct.status_code == 200
    contract.assert_valid(contract.check_chat_json(through_edge.content))
    edge_text = through_edge.json()["choices"][0]["message"]["content"]
    assert edge_text == direct.json()["choices"][0]["message"]["content"]
    assert len(edge_text) > 50_000
    body_stream = chat_body("SCENARIO=big DELTAS=20000", stream=True)
    async with httpx.AsyncClient(base_url=base, timeout=60) as edge_client:
        async with edge_client.stream("POST", "/v1/chat/completions", json=body_stream,
                                      headers=AUTH) as resp:
            raw = b"".join([chunk async for chunk in resp.aiter_raw()])
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=False))
    assert contract.collect_stream_content(raw)[0] == edge_text
