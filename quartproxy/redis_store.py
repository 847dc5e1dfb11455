"""Shared admission state in Redis: concurrency leases and rate-limit windows.

Client choice: redis-py, the reference client, called through ``trio.to_thread`` with a small
thread limiter. Its asyncio API cannot run under trio, and the trio-native clients have not
been maintained for years; a worker-thread hop costs about 0.1 ms, nothing beside the ~100 ms
of starting a codex child, and keeps protocol handling in a library that is tested everywhere.

Every decision is one Lua script, so it is atomic across replicas, and every script reads the
time from Redis (``TIME``) so replicas with skewed clocks still agree on expiry:

* a concurrency slot is a member of a sorted set scored by its expiry; acquiring first drops
  expired members (a replica killed with SIGKILL loses its slots within the lease TTL), then
  checks the count against the limit and adds the lease in the same step;
* a running turn's lease is refreshed every third of the TTL, and *re-added* if it is missing:
  the turn is still running, so it must still count;
* a rate-limit window is an ``INCR`` on a key that expires with the window.

**Losing Redis's data.** A Redis restarted without its data (no persistence, a failover to a
replica that lagged, ``FLUSHALL``) forgets every lease while the turns behind them run on; the
next replica to ask would see a count of zero and over-admit. So the data carries a marker:
the *epoch* key, a random token created by the first replica that finds it missing and never
expiring. Every acquire and refresh passes the epoch its replica last registered under; when
the key is missing or different, the script grants nothing and says so, and the replica
re-registers every lease it holds (:meth:`RedisStore.register`, which also creates the key if
needed) before it asks again. A replica therefore never grants a slot against a count that
lacks its own running turns; other replicas' turns reappear with their next refresh, within a
third of the lease TTL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis
import trio

T = TypeVar("T")

# KEYS: turns, streams, epoch. Every script that grants or refreshes checks the epoch first.
ACQUIRE = """
if redis.call('GET', KEYS[3]) ~= ARGV[6] then
  return {-1, 'epoch', 0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, turn_limit, stream_limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local is_stream = ARGV[5] == '1'
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local turns = redis.call('ZCARD', KEYS[1])
local streams = redis.call('ZCARD', KEYS[2])
if turn_limit > 0 and turns >= turn_limit then
  return {0, 'turns', turns, streams}
end
if is_stream and stream_limit > 0 and streams >= stream_limit then
  return {0, 'streams', turns, streams}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
if is_stream then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
end
return {1, '', turns, streams}
"""

# -1: the epoch changed (re-register everything); 1: the lease was missing and is back; 0: ok.
REFRESH = """
if redis.call('GET', KEYS[3]) ~= ARGV[4] then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local added = redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
end
return added
"""

# ARGV: candidate epoch, ttl, then (lease, is_stream) pairs. Returns the epoch now in force.
REGISTER = """
redis.call('SET', KEYS[3], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  if ARGV[i + 1] == '1' then
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
    redis.call('PEXPIRE', KEYS[2], ttl * 2)
  end
end
return epoch
"""

HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {count, redis.call('PTTL', KEYS[1])}
"""


class RedisUnavailable(Exception):
    """Redis could not answer; callers fall back to per-process limits."""


class EpochChanged(Exception):
    """Redis lost its data (or another replica re-created the marker): re-register first."""


class RedisStore:
    def __init__(self, url: str, *, prefix: str = "quartproxy", timeout_s: float = 0.5) -> None:
        self.url = url
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            decode_responses=True,
        )
        self._turns_key = f"{prefix}:slots:turns"
        self._streams_key = f"{prefix}:slots:streams"
        self._epoch_key = f"{prefix}:epoch"
        self._prefix = prefix
        self._acquire = self._client.register_script(ACQUIRE)
        self._refresh = self._client.register_script(REFRESH)
        self._register = self._client.register_script(REGISTER)
        self._hit = self._client.register_script(HIT)
        self._limiter = trio.CapacityLimiter(8)

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter, abandon_on_cancel=True)
        except (redis.RedisError, OSError) as exc:
            raise RedisUnavailable(str(exc) or type(exc).__name__) from exc

    async def ping(self) -> None:
        await self._call(self._client.ping)

    @property
    def _slot_keys(self) -> list[str]:
        return [self._turns_key, self._streams_key, self._epoch_key]

    async def acquire(
        self, lease: str, *, stream: bool, turn_limit: int, stream_limit: int, ttl_ms: int,
        epoch: str,
    ) -> tuple[bool, str, int, int]:
        """(granted, which limit blocked, turns before, streams before); :class:`EpochChanged`
        when Redis's epoch is not ``epoch``."""
        args: list[str | int] = [lease, ttl_ms, turn_limit, stream_limit, "1" if stream else "0",
                                 epoch]
        keys = self._slot_keys
        result: Any = await self._call(lambda: self._acquire(keys=keys, args=args))
        if int(result[0]) < 0:
            raise EpochChanged
        return bool(int(result[0])), str(result[1]), int(result[2]), int(result[3])

    async def refresh(self, lease: str, *, stream: bool, ttl_ms: int, epoch: str) -> bool:
        """Extend a running turn's lease; ``True`` when it had gone missing and was re-added.
        :class:`EpochChanged` when Redis's epoch is not ``epoch``."""
        args: list[str | int] = [lease, ttl_ms, "1" if stream else "0", epoch]
        keys = self._slot_keys
        result: Any = await self._call(lambda: self._refresh(keys=keys, args=args))
        if int(result) < 0:
            raise EpochChanged
        return bool(int(result))

    async def register(self, leases: list[tuple[str, bool]], *, ttl_ms: int,
                       candidate_epoch: str) -> str:
        """Add every ``(lease, is_stream)`` with a fresh expiry, creating the epoch marker
        (as ``candidate_epoch``) if it is missing; returns the epoch in force."""
        args: list[str | int] = [candidate_epoch, ttl_ms]
        for lease, stream in leases:
            args += [lease, "1" if stream else "0"]
        keys = self._slot_keys
        result: Any = await self._call(lambda: self._register(keys=keys, args=args))
        return str(result)

    async def release(self, lease: str) -> None:
        def remove() -> None:
            pipe = self._client.pipeline()
            pipe.zrem(self._turns_key, lease)
            pipe.zrem(self._streams_key, lease)
            pipe.execute()

        await self._call(remove)

    async def counts(self) -> tuple[int, int]:
        def count() -> tuple[int, int]:
            pipe = self._client.pipeline()
            pipe.zcard(self._turns_key)
            pipe.zcard(self._streams_key)
            turns, streams = pipe.execute()
            return int(turns), int(streams)

        return await self._call(count)

    async def hit(self, ident: str, window_ms: int, window_index: int) -> tuple[int, int]:
        """Count one request in the key's current window: (count, ms until the window ends)."""
        key = f"{self._prefix}:rate:{ident}:{window_index}"
        result: Any = await self._call(lambda: self._hit(keys=[key], args=[window_ms]))
        return int(result[0]), int(result[1])

    def close(self) -> None:
        self._client.close()
