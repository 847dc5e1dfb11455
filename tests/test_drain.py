"""The drain: a SIGTERMed replica keeps answering until its in-flight turns are over.

Load balancers take a replica out when its readiness probe fails; one whose listener is gone
fails probes with "connection refused" and gets no chance to say why. During the drain the
listener stays open: ``/readyz`` is 503 ``draining``, a new completion is 503
``shutting_down`` with ``Retry-After``, responses carry ``Connection: close``; the listener
closes when the last in-flight turn has ended (on its own, or finalized when the grace is over).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from quartproxy import contract

from .conftest import AUTH, StartProxy, chat_body, pid_alive
from .servers import ServerProcess, fake_env
from .test_shutdown import assert_clean_stderr

LONG_GRACE_MS = 120_000  # never reached in these tests: the drain ends with the turns
EXIT_GUARD_S = 60  # a hang guard, half the grace: exiting proves the drain did not wait for it


async def start_server(nursery: trio.Nursery, tmp_path: Path, fast_fake: Path,
                       **env: Any) -> ServerProcess:
    settings = {"PROXY_SHUTDOWN_GRACE_MS": LONG_GRACE_MS, "FAKE_CODEX_GATE": tmp_path / "gate",
                **env}
    return await ServerProcess(tmp_path, fake_env(fast_fake, **settings)).start(nursery)


async def sigterm_and_wait_for_drain(server: ServerProcess) -> None:
    server.signal(signal.SIGTERM)
    with trio.fail_after(30):
        while b"SIGTERM received" not in server.stderr:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def probe_while_draining(server: ServerProcess) -> None:
    """New connections during the drain: answered, and told to go elsewhere."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as fresh:
        ready = await fresh.get("/readyz")
        live = await fresh.get("/healthz")
        completion = await fresh.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        legacy = await fresh.post("/v1/completions", headers=AUTH,
                                  json={"model": "codex-5", "prompt": "hi"})
    assert ready.status_code == 503
    assert "draining" in ready.json()["reasons"]
    assert live.status_code == 200
    for resp in (completion, legacy):
        assert resp.status_code == 503
        contract.assert_valid(contract.check_error_json(resp.content))
        assert resp.json()["error"]["code"] == "shutting_down"
        assert int(resp.headers["retry-after"]) >= 1
    for resp in (ready, live, completion, legacy):
        assert resp.headers["connection"] == "close"
    assert server.process is not None and server.process.returncode is None


async def read_until(chunks: Any, raw: bytearray, marker: bytes) -> None:
    while marker not in raw:
        raw += await chunks.__anext__()


async def test_drain_answers_probes_until_the_inflight_turn_ends(
    tmp_path: Path, fast_fake: Path
) -> None:
    raw = bytearray()
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, tmp_path, fast_fake)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                     json=chat_body("SCENARIO=gated", stream=True)) as resp:
                assert resp.status_code == 200
                chunks = resp.aiter_raw()
                await read_until(chunks, raw, b'" is"')  # the turn is running
                await sigterm_and_wait_for_drain(server)
                await probe_while_draining(server)
                (tmp_path / "gate").touch()  # the turn may finish now
                async for chunk in chunks:
                    raw += chunk
        with trio.fail_after(EXIT_GUARD_S):
            code = await server.wait()
        nursery.cancel_scope.cancel()
    assert code == 0
    contract.assert_valid(contract.check_chat_stream(bytes(raw), include_usage=False))
    text, finish, _ = contract.collect_stream_content(bytes(raw))
    assert finish == "stop"  # it ran to its own end: the drain did not cut it
    assert text == "Hello! This is a streamed answer from the fake upstream."
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            await client.get("/readyz")
    assert not [pid for pid in server.child_pids() if pid_alive(pid)]
    assert_clean_stderr(server)


async def test_drain_finalizes_streams_with_done_when_the_grace_ends(
    tmp_path: Path, fast_fake: Path
) -> None:
    raws = [bytearray(), bytearray()]
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, tmp_path, fast_fake)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            started = trio.Semaphore(0)

            async def stream(raw: bytearray, include_usage: bool) -> None:
                body = chat_body("SCENARIO=stream_hang", stream=True,
                                 stream_options={"include_usage": include_usage})
                async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                         json=body) as resp:
                    assert resp.status_code == 200
                    chunks = resp.aiter_raw()
                    await read_until(chunks, raw, b'" is"')
                    started.release()
                    async for chunk in chunks:
                        raw += chunk

            async with trio.open_nursery() as streams:
                streams.start_soon(stream, raws[0], True)
                streams.start_soon(stream, raws[1], False)
                for _ in raws:
                    await started.acquire()
                await sigterm_and_wait_for_drain(server)
                await probe_while_draining(server)
                # The second signal ends the grace now (as its expiry would): finalize.
                server.signal(signal.SIGTERM)
        with trio.fail_after(EXIT_GUARD_S):
            code = await server.wait()
        nursery.cancel_scope.cancel()
    assert code == 0
    for raw, include_usage in zip(raws, (True, False), strict=True):
        contract.assert_valid(contract.check_chat_stream(bytes(raw), include_usage=include_usage))
        text, finish, usage = contract.collect_stream_content(bytes(raw))
        assert (text, finish) == ("Hello! This is", "length")
        assert (usage is not None) == include_usage
        assert bytes(raw).rstrip().endswith(b"data: [DONE]")
    assert not [pid for pid in server.child_pids() if pid_alive(pid)]
    assert_clean_stderr(server)


async def test_request_queued_for_a_slot_when_the_drain_begins_is_503(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await start_proxy(sse_max_concurrency=1, queue_timeout_ms=600_000)
    admission = proxy.state.admission
    waiting = trio.Event()
    acquire = admission.acquire

    async def observed_acquire(stream: bool) -> Any:
        if admission.occupancy.streams >= 1:
            waiting.set()  # this one has to wait for the slot
        return await acquire(stream)

    monkeypatch.setattr(admission, "acquire", observed_acquire)
    async with proxy.client() as client, trio.open_nursery() as nursery:
        first = bytearray()
        queued: list[httpx.Response] = []

        async def hold_the_slot() -> None:
            async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                     json=chat_body("SCENARIO=stream_hang", stream=True)) as resp:
                async for chunk in resp.aiter_raw():
                    first.extend(chunk)

        async def wait_for_the_slot() -> None:
            queued.append(await client.post("/v1/chat/completions", headers=AUTH,
                                             json=chat_body(stream=True)))

        nursery.start_soon(hold_the_slot)
        with trio.fail_after(30):
            while b'" is"' not in first:  # noqa: ASYNC110
                await trio.sleep(0.01)
        nursery.start_soon(wait_for_the_slot)
        with trio.fail_after(30):
            await waiting.wait()
        proxy.lifecycle.start_drain()
        proxy.lifecycle.finalize()  # the held stream ends, its slot goes to the queued request
    assert queued[0].status_code == 503
    assert queued[0].json()["error"]["code"] == "shutting_down"
    assert contract.collect_stream_content(bytes(first))[1] == "length"
    await proxy.wait_idle()
    assert len(proxy.pids()) == 1  # the queued request never started a turn
