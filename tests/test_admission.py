"""Admission: deterministic concurrency 429, queueing, rate limits, Redis-shared limits."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from quartproxy import contract
from quartproxy.config import Settings
from quartproxy.ratelimit import RateLimiter

from .conftest import API_KEY, AUTH, StartProxy, chat_body, read_stream, repeat_count
from .servers import RedisServer, ServerProcess, fake_env


def stream_body(prompt: str) -> dict[str, Any]:
    return chat_body(prompt, stream=True)


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, prompt: str = "SCENARIO=stream_hang"
) -> AsyncIterator[httpx.Response]:
    """A stream whose response has started (status and first bytes read), held open.

    The chunk iterator is kept referenced until the end: a dropped async generator is
    finalized at once, and httpx then closes the connection — a disconnect the test did
    not mean.
    """
    async with client.stream("POST", "/v1/chat/completions", json=stream_body(prompt),
                             headers=AUTH) as resp:
        chunks = resp.aiter_raw()
        try:
            if resp.status_code == 200:
                seen = b""
                while b"data:" not in seen:
                    seen += await chunks.__anext__()
            yield resp
        finally:
            await chunks.aclose()


# ---------------------------------------------------------------------------- local limits


@pytest.mark.slow
async def test_second_stream_at_limit_is_429_every_time(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(sse_max_concurrency=1, test_endpoints=True)
    async with proxy.client() as client:
        for _ in range(repeat_count(50)):
            async with open_stream(client) as first:
                assert first.status_code == 200
                assert first.headers["x-conc-before"] == "0"
                assert first.headers["x-conc-after"] == "1"
                second = await client.post("/v1/chat/completions",
                                           json=stream_body("SCENARIO=normal"), headers=AUTH)
                assert second.status_code == 429
                body = second.json()["error"]
                assert (body["code"], body["type"]) == ("concurrency_exceeded", "rate_limit_error")
                assert second.headers["x-conc-limit"] == "1"
                assert second.headers["x-conc-before"] == "1"
            await proxy.wait_idle()  # the first stream's child is reaped: its slot is free
            resp, raw = await read_stream(client, "/v1/chat/completions",
                                          stream_body("SCENARIO=normal"))
            assert resp.status_code == 200
            contract.assert_valid(contract.check_chat_stream(raw, include_usage=False))
            await proxy.wait_idle()


async def test_nonstream_is_guarded_by_child_limit(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(max_concurrency=1, proto_idle_ms=60_000)
    async with proxy.client() as client, trio.open_nursery() as nursery:
        first: list[httpx.Response] = []

        async def hold() -> None:
            first.append(await client.post("/v1/chat/completions",
                                           json=chat_body("SCENARIO=hang"), headers=AUTH))

        nursery.start_soon(hold)
        await proxy.state.service.running.wait_value(1)
        second = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "concurrency_exceeded"
        proxy.lifecycle.finalize()  # end the held request
    assert first[0].status_code == 503


async def test_queue_waits_for_a_slot(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(sse_max_concurrency=1, queue_timeout_ms=20_000)
    results: list[int] = []
    async with proxy.client() as client:
        async with open_stream(client) as first, trio.open_nursery() as nursery:
            assert first.status_code == 200

            async def queued() -> None:
                resp, _ = await read_stream(client, "/v1/chat/completions",
                                            stream_body("SCENARIO=normal"))
                results.append(resp.status_code)

            nursery.start_soon(queued)
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert results == []  # still waiting while the first stream holds the slot
            await first.aclose()  # the first stream ends: the queued one gets the slot
    assert results == [200]


async def test_queue_times_out_with_429(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(sse_max_concurrency=1, queue_timeout_ms=200)
    async with proxy.client() as client, open_stream(client) as first:
        assert first.status_code == 200
        second = await client.post("/v1/chat/completions", json=stream_body("x"), headers=AUTH)
    assert second.status_code == 429


async def test_conc_headers_and_endpoint_only_when_enabled(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(sse_max_concurrency=1)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        endpoint = await client.get("/__test/conc", headers=AUTH)
        async with open_stream(client) as first:
            assert first.status_code == 200 and "x-conc-before" not in first.headers
            rejected = await client.post("/v1/chat/completions", json=stream_body("x"),
                                         headers=AUTH)
    assert "x-conc-before" not in resp.headers
    assert endpoint.status_code == 404
    assert rejected.status_code == 429
    assert not [h for h in rejected.headers if h.lower().startswith("x-conc-")]


async def test_conc_endpoint_counts(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(test_endpoints=True, sse_max_concurrency=3)
    async with proxy.client() as client:
        async with open_stream(client), open_stream(client):
            counts = (await client.get("/__test/conc", headers=AUTH)).json()
            assert (counts["streams"], counts["turns"], counts["stream_limit"]) == (2, 2, 3)
        await proxy.wait_idle()
        counts = (await client.get("/__test/conc", headers=AUTH)).json()
    assert (counts["streams"], counts["turns"]) == (0, 0)


# ---------------------------------------------------------------------------- rate limit


def test_rate_limit_window_rolls_over() -> None:
    now = [1000.0]
    settings = Settings(_env_file=None, rate_limit_enabled=True, rate_limit_max=2,  # type: ignore[call-arg]
                        rate_limit_window_ms=10_000)
    limiter = RateLimiter(settings, clock=lambda: now[0])
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(Exception) as info:
        limiter.check("a")
    assert info.value.headers["Retry-After"] == "10"  # type: ignore[attr-defined]
    limiter.check("b")  # other keys have their own budget
    now[0] = 1007.5
    with pytest.raises(Exception) as info:
        limiter.check("a")
    assert info.value.headers["Retry-After"] == "3"  # type: ignore[attr-defined]
    now[0] = 1010.0  # next window
    limiter.check("a")


async def test_rate_limit_over_http(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(rate_limit_enabled=True, rate_limit_max=3,
                              rate_limit_window_ms=600_000, api_key=f"{API_KEY},other")
    async with proxy.client() as client:
        for _ in range(5):  # unauthenticated traffic never touches a key's budget
            assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 401
        codes = [
            (await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)).status_code
            for _ in range(3)
        ]
        limited = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        other = await client.post("/v1/chat/completions", json=chat_body(),
                                  headers={"Authorization": "Bearer other"})
    assert codes == [200, 200, 200]
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert other.status_code == 200


# ---------------------------------------------------------------------------- Redis


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = await RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def replicas(
    tmp_path: Path, fast_fake: Path, count: int, **env: Any
) -> AsyncIterator[list[ServerProcess]]:
    async with trio.open_nursery() as nursery:
        servers = [ServerProcess(tmp_path, fake_env(fast_fake, **env)) for _ in range(count)]
        try:
            for server in servers:
                await server.start(nursery)
            yield servers
        finally:
            with trio.CancelScope(shield=True):
                for server in servers:
                    await server.stop()
                    server.kill_orphans()
            nursery.cancel_scope.cancel()


async def test_two_replicas_share_one_global_limit(
    tmp_path: Path, fast_fake: Path, redis_server: RedisServer
) -> None:
    async with replicas(tmp_path, fast_fake, 2, PROXY_REDIS_URL=redis_server.url,
                        PROXY_SSE_MAX_CONCURRENCY=3, PROXY_MAX_CONCURRENCY=0,
                        PROXY_TEST_ENDPOINTS="true") as servers:
        statuses: list[int] = []
        release = trio.Event()
        answered = trio.Semaphore(0)

        async def one(base: str) -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client, open_stream(
                client
            ) as resp:
                statuses.append(resp.status_code)
                answered.release()
                await release.wait()

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, servers[i % 2].base_url)
            for _ in range(20):
                await answered.acquire()
            release.set()
    assert sorted(statuses) == [200] * 3 + [429] * 17


async def test_sigkilled_replica_frees_its_slots_within_ttl(
    tmp_path: Path, fast_fake: Path, redis_server: RedisServer
) -> None:
    ttl_ms = 1500
    env = {"PROXY_REDIS_URL": redis_server.url, "PROXY_SSE_MAX_CONCURRENCY": 3,
           "PROXY_REDIS_LEASE_TTL_MS": ttl_ms, "PROXY_TEST_ENDPOINTS": "true"}
    async with replicas(tmp_path, fast_fake, 2, **env) as (doomed, survivor):
        async with httpx.AsyncClient(base_url=doomed.base_url, timeout=30) as a, \
                httpx.AsyncClient(base_url=survivor.base_url, timeout=30) as b:
            async with open_stream(a) as s1, open_stream(a) as s2:
                assert (s1.status_code, s2.status_code) == (200, 200)
                assert (await b.get("/__test/conc", headers=AUTH)).json()["streams"] == 2
                doomed.signal(signal.SIGKILL)
                await doomed.wait()
            doomed.kill_orphans()
            # The dead replica cannot release: its leases must expire within the TTL.
            with trio.fail_after(120):  # hang guard: Redis expires them after the TTL
                # Expiry happens inside Redis, by its clock: ask until the leases are gone.
                while (await b.get("/__test/conc", headers=AUTH)).json()["streams"] != 0:  # noqa: ASYNC110
                    await trio.sleep(0.1)
            async with open_stream(b) as x, open_stream(b) as y, open_stream(b) as z:
                assert [x.status_code, y.status_code, z.status_code] == [200, 200, 200]


async def test_redis_stopped_mid_run_degrades_without_errors(
    tmp_path: Path, fast_fake: Path, redis_server: RedisServer
) -> None:
    env = {"PROXY_REDIS_URL": redis_server.url, "PROXY_SSE_MAX_CONCURRENCY": 2,
           "PROXY_TEST_ENDPOINTS": "true", "PROXY_RATE_LIMIT_ENABLED": "true",
           "PROXY_RATE_LIMIT_MAX": 1000}
    async with replicas(tmp_path, fast_fake, 1, **env) as (server,):
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            before = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
            assert before.status_code == 200
            conc = (await client.get("/__test/conc", headers=AUTH)).json()
            assert conc["redis_degraded"] is False
            await redis_server.stop()
            statuses = []
            for stream in (False, True, False, True, False):
                if stream:
                    resp, raw = await read_stream(client, "/v1/chat/completions",
                                                  stream_body("SCENARIO=normal"))
                    contract.assert_valid(contract.check_chat_stream(raw, include_usage=False))
                else:
                    resp = await client.post("/v1/chat/completions", json=chat_body(),
                                             headers=AUTH)
                statuses.append(resp.status_code)
            async with open_stream(client) as s1, open_stream(client) as s2:
                third = await client.post("/v1/chat/completions", json=stream_body("x"),
                                          headers=AUTH)
                limits = [s1.status_code, s2.status_code, third.status_code]
            conc = (await client.get("/__test/conc", headers=AUTH)).json()
            metrics = (await client.get("/metrics")).text
    assert statuses == [200] * 5
    assert limits == [200, 200, 429]  # local limits still hold
    assert conc["redis_degraded"] is True
    assert "quartproxy_redis_fallback 1.0" in metrics
    assert b"REDIS UNAVAILABLE" in bytes(server.stderr)
