"""Graceful SIGTERM/SIGINT shutdown of the real server process.

What is asserted is outcomes — every stream contract-valid and ending in [DONE], every
non-stream answer valid JSON, exit code 0, no child left, no traceback — never how fast the
server got there: a loaded machine may take any time. ``trio.fail_after`` here is a hang guard
only, and lower bounds (the grace was granted) are safe since load cannot make a process early.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from quartproxy import contract

from .conftest import AUTH, chat_body, pid_alive, repeat_count
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


async def test_idle_sigterm_exits_without_the_grace_and_refuses_connections(
    tmp_path: Path, fast_fake: Path
) -> None:
    async with trio.open_nursery() as nursery:
        # Nothing is in flight, so nothing may wait for the (ten-minute) grace.
        server = await start(nursery, tmp_path, fast_fake, PROXY_SHUTDOWN_GRACE_MS=600_000)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert (await client.get("/readyz")).status_code == 200
        server.signal(signal.SIGTERM)
        with trio.fail_after(120):  # hang guard, far below the grace
            code = await server.wait()
        assert code == 0
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                await client.get("/healthz")
        nursery.cancel_scope.cancel()
    assert_clean_stderr(server)


def proto_deltas(path: Path, request_id: str) -> int:
    """How many answer deltas the server has read from this request's child (proto log)."""
    if not path.exists():
        return 0
    count = 0
    for line in path.read_bytes().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line being appended
        if record.get("req_id") == request_id and "agent_message_delta" in record.get("line", ""):
            count += 1
    return count


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(repeat_count(10)))
async def test_sigterm_with_open_streams_and_requests(
    tmp_path: Path, fast_fake: Path, attempt: int
) -> None:
    grace_ms = 600
    proto_log = tmp_path / "proto.ndjson"
    streams: list[bytes] = []
    answers: list[httpx.Response] = []
    async with trio.open_nursery() as nursery:
        server = await start(nursery, tmp_path, fast_fake, PROXY_SHUTDOWN_GRACE_MS=grace_ms,
                             PROXY_LOG_PROTO="true", PROTO_LOG_PATH=str(proto_log))
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

            async def ask(prompt: str, request_id: str) -> None:
                answers.append(await client.post("/v1/chat/completions", json=chat_body(prompt),
                                                 headers={**AUTH, "X-Request-Id": request_id}))

            with_text = [f"sigterm-{attempt}-text-{i}" for i in range(3)]
            async with trio.open_nursery() as clients:
                for i in range(20):
                    clients.start_soon(stream, i % 2 == 0)
                for request_id in with_text:
                    clients.start_soon(ask, "SCENARIO=stream_hang", request_id)
                for i in range(2):
                    clients.start_soon(ask, "SCENARIO=hang", f"sigterm-{attempt}-silent-{i}")
                for _ in range(20):
                    await content_seen.acquire()
                # Hang guards while other processes are observed: every child has been spawned
                # (the non-stream children write their pid file before anything else), and the
                # server has read all three deltas of each stream_hang non-stream request.
                with trio.fail_after(120):
                    while len(server.child_pids()) < 25:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    while any(proto_deltas(proto_log, rid) < 3 for rid in with_text):  # noqa: ASYNC110
                        await trio.sleep(0.01)
                signalled_at = trio.current_time()
                server.signal(signal.SIGTERM)
                with trio.fail_after(120):  # hang guard only
                    code = await server.wait()
                exited_after = trio.current_time() - signalled_at
        nursery.cancel_scope.cancel()
    assert code == 0
    # In-flight work got its grace (a lower bound: no amount of load makes the exit early).
    assert exited_after >= grace_ms / 1000 * 0.9
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
        server = await start(nursery, tmp_path, fast_fake, PROXY_SHUTDOWN_GRACE_MS=600_000)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            raw = b""
            async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                     json=chat_body("SCENARIO=stream_hang", stream=True)) as resp:
                async for chunk in resp.aiter_raw():
                    raw += chunk
                    if b'" is"' in raw and not server.stderr.count(b"received"):
                        server.signal(signal.SIGTERM)
                        with trio.fail_after(120):  # hang guard
                            while b"SIGTERM received" not in server.stderr:  # noqa: ASYNC110
                                await trio.sleep(0.01)
                        server.signal(signal.SIGINT)
        with trio.fail_after(120):  # hang guard, far below the ten-minute grace
            code = await server.wait()
        nursery.cancel_scope.cancel()
    assert code == 0
    assert contract.collect_stream_content(raw)[1] == "length"
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=False))
    assert_clean_stderr(server)
