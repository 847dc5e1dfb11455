"""Shared limits hold after Redis restarts without its data.

Before: with a stream limit of 4 and 4 streams running, a redis-server killed and restarted
empty forgot their leases; the refresher saw its lease gone and stopped, and the next 4
streams were all admitted — 8 running against a limit of 4. Now each replica re-registers its
running turns before it grants anything against a Redis whose epoch marker is not the one it
registered in, and a refresh puts back a missing lease.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import trio

from .conftest import AUTH, chat_body
from .servers import RedisServer
from .test_admission import open_stream, replicas

LIMIT = 4


async def restart_empty(redis: RedisServer, tmp_path: Path) -> RedisServer:
    await redis.kill()
    return await RedisServer(tmp_path, port=redis.port).start()  # --save "": no data


async def conc(client: httpx.AsyncClient) -> dict[str, Any]:
    resp = await client.get("/__test/conc", headers=AUTH)
    assert resp.status_code == 200
    result: dict[str, Any] = resp.json()
    return result


async def wait_shared_count(client: httpx.AsyncClient, streams: int) -> None:
    """Until Redis (not this replica's local fallback) counts ``streams`` running streams."""
    with trio.fail_after(60):
        while True:
            counts = await conc(client)
            if counts["streams"] == streams and not counts["redis_degraded"]:
                return
            await trio.sleep(0.05)


async def attempt(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/v1/chat/completions", headers=AUTH,
                             json=chat_body("SCENARIO=normal", stream=True))


def env(redis: RedisServer, ttl_ms: int) -> dict[str, Any]:
    return {"PROXY_REDIS_URL": redis.url, "PROXY_SSE_MAX_CONCURRENCY": LIMIT,
            "PROXY_MAX_CONCURRENCY": 0, "PROXY_REDIS_LEASE_TTL_MS": ttl_ms,
            "PROXY_TEST_ENDPOINTS": "true"}


async def hold_streams(stack: AsyncExitStack, client: httpx.AsyncClient, count: int) -> None:
    for _ in range(count):
        resp = await stack.enter_async_context(open_stream(client))
        assert resp.status_code == 200


async def test_limit_holds_when_a_grant_is_the_first_to_meet_the_empty_redis(
    tmp_path: Path, fast_fake: Path
) -> None:
    # A lease TTL of ten minutes: no refresh runs during the test, so the grants themselves
    # must notice that Redis lost its data and re-register the running turns first.
    redis = await RedisServer(tmp_path).start()
    try:
        async with replicas(tmp_path, fast_fake, 1, **env(redis, 600_000)) as (server,):
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                async with AsyncExitStack() as stack:
                    await hold_streams(stack, client, LIMIT)
                    assert (await attempt(client)).status_code == 429
                    redis = await restart_empty(redis, tmp_path)
                    late = [await attempt(client) for _ in range(LIMIT)]
                    counts = await conc(client)
                assert [resp.status_code for resp in late] == [429] * LIMIT
                assert {resp.headers["x-conc-before"] for resp in late} == {str(LIMIT)}
                assert (counts["streams"], counts["redis_degraded"]) == (LIMIT, False)
                # The held streams are over: their leases leave Redis, and the slots are free.
                await wait_shared_count(client, 0)
                again = await attempt(client)
        assert again.status_code == 200
        assert b"re-registering this process's 4 running turn(s)" in server.stderr
    finally:
        await redis.stop()


async def test_limit_holds_across_replicas_through_their_refreshers(
    tmp_path: Path, fast_fake: Path
) -> None:
    redis = await RedisServer(tmp_path).start()
    try:
        # Refreshes every 2 s; a lease would only lapse if a replica stalled for 6 s.
        async with replicas(tmp_path, fast_fake, 2, **env(redis, 6000)) as (one, two):
            async with httpx.AsyncClient(base_url=one.base_url, timeout=30) as a, \
                    httpx.AsyncClient(base_url=two.base_url, timeout=30) as b:
                async with AsyncExitStack() as stack:
                    await hold_streams(stack, a, LIMIT // 2)
                    await hold_streams(stack, b, LIMIT // 2)
                    await wait_shared_count(a, LIMIT)
                    redis = await restart_empty(redis, tmp_path)
                    # No request arrives: the refreshers alone must bring all four back.
                    await wait_shared_count(a, LIMIT)
                    late = [await attempt(a), await attempt(b)]
                assert [resp.status_code for resp in late] == [429, 429]
                await wait_shared_count(a, 0)
                again = [await attempt(a), await attempt(b)]
        assert [resp.status_code for resp in again] == [200, 200]
    finally:
        await redis.stop()
