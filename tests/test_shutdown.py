"""Graceful SIGTERM/SIGINT shutdown of the real server process (issue: shutdown and edge)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from quartproxy import contract

from .conftest import AUTH, chat_body, pid_alive
from .servers import ServerProcess, fake_env


def assert_clean_stderr(server: ServerProcess) -> None:
    """Nothing on stderr but log lines: JSON records or our own `quartproxy:` notices."""
    for line in bytes(server.stderr).decode().splitlines():
        if line.startswith("quartproxy: "):
            continue
        record = orjson.loads(line)
        assert isinstance(record, dict) and "level" in record, line
    assert b"Traceback" not in server.stderr


async def start(
    nursery: trio.Nursery, tmp_path: Path, fast_fake: Path, **env: Any
) -> ServerProcess:
    settings = {"PROXY_SSE_MAX_CONCURRENCY": 0, "PROXY_MAX_CONCURRENCY": 0, **env}
    return await ServerProcess(tmp_path, fake_env(fast_fake, **settings)).start(nursery)


async def test_idle_sigterm_exits_promptly_and_refuses_connections(
    tmp_path: Path, fast_fake: Path
) -> None:
    async with trio.open_nursery() as nursery:
        # Nothing in flight: the drain ends at once, not after the (long) grace.
        server = await start(nursery, tmp_path, fast_fake, PROXY_SHUTDOWN_GRACE_MS=120_000)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert (await client.get("/readyz")).status_code == 200
        server.signal(signal.SIGTERM)
        with trio.fail_after(60):  # a hang guard, half the grace
            code = await server.wait()
        assert code == 0
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                await client.get("/healthz")
        nursery.cancel_scope.cancel()
    assert_clean_stderr(server)


@pytest.mark.parametrize("attempt", range(10))
async def test_sigterm_with_open_streams_and_requests(
    tmp_path: Path, fast_fake: Path, attempt: int
) -> None:
    grace_ms = 600
    streams: list[bytes] = []
    answers: list[httpx.Response] = []
    async with trio.open_nursery() as nursery:
        server = await start(nursery, tmp_path, fast_fake, PROXY_SHUTDOWN_GRACE_MS=grace_ms)
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits) as client:
            content_seen = trio.Semaphore(0)

            async def stream(include_usage: bool) -> None:
                body = chat_body("SCENARIO=stream_hang", stream=True,
                                 stream_options={"include_usage": include_usage})
                raw = b""
                async with client.stream("POST", "/v1/chat/completions", json=body,
                                         headers=AUTH) as resp:
                    assert resp.status_code == 200
                    signalled = False
                    async for chunk in resp.aiter_raw():
                        raw += chunk
                        if not signalled and b'" is"' in raw:  # all three deltas are in
                            signalled = True
                            content_seen.release()
                streams.append(raw)
                contract.assert_valid(contract.check_chat_stream(raw, include_usage=include_usage))

            async def ask(prompt: str) -> None:
                answers.append(await client.post("/v1/chat/completions", json=chat_body(prompt),
                                                 headers=AUTH))

            async with trio.open_nursery() as clients:
                for i in range(20):
                    clients.start_soon(stream, i % 2 == 0)
                for i in range(5):
                    clients.start_soon(ask, "SCENARIO=stream_hang" if i < 3 else "SCENARIO=hang")
                for _ in range(20):
                    await content_seen.acquire()
                # Every child has been spawned once its stream shows content; the non-stream
                # children write their pid file before anything else.
                with trio.fail_after(10):
                    while len(server.child_pids()) < 25:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                signalled_at = trio.current_time()
                server.signal(signal.SIGTERM)
                with trio.fail_after(grace_ms / 1000 + 30):  # a hang guard
                    code = await server.wait()
                exited_after = trio.current_time() - signalled_at
        nursery.cancel_scope.cancel()
    assert code == 0
    assert exited_after >= grace_ms / 1000 * 0.9  # in-flight work got its grace
    assert len(streams) == 20
    for raw in streams:
        text, finish, _ = contract.collect_stream_content(raw)
        assert (text, finish) == ("Hello! This is", "length")
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 503, 503]
    for resp in answers:
        if resp.status_code == 200:
            contract.assert_valid(contract.check_chat_json(resp.content))
            assert resp.json()["choices"][0]["finish_reason"] == "length"
        else:
            contract.assert_valid(contract.check_error_json(resp.content))
            assert resp.json()["error"]["code"] == "shutting_down"
    assert not [pid for pid in server.child_pids() if pid_alive(pid)]
    assert_clean_stderr(server)


async def test_second_signal_skips_the_grace(tmp_path: Path, fast_fake: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = await start(nursery, tmp_path, fast_fake, PROXY_SHUTDOWN_GRACE_MS=60_000)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            raw = b""
            async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                     json=chat_body("SCENARIO=stream_hang", stream=True)) as resp:
                async for chunk in resp.aiter_raw():
                    raw += chunk
                    if b'" is"' in raw and not server.stderr.count(b"received"):
                        server.signal(signal.SIGTERM)
                        with trio.fail_after(10):
                            while b"SIGTERM received" not in server.stderr:  # noqa: ASYNC110
                                await trio.sleep(0.01)
                        server.signal(signal.SIGINT)
        with trio.fail_after(30):  # a hang guard, half the 60 s grace
            code = await server.wait()
        nursery.cancel_scope.cancel()
    assert code == 0
    assert contract.collect_stream_content(raw)[1] == "length"
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=False))
    assert_clean_stderr(server)
