"""Admission control: concurrency slots and per-key rate limits, local or shared through Redis.

Rules kept here:

* The unit is the *turn*: one request's conversation with codex, whichever backend runs it. A
  slot is taken before the response starts and released exactly once, after the turn has ended
  (proto: the child is reaped; app-server: the thread is deleted). :meth:`Slot.release` is
  idempotent, so every exit path may call it.
* Locally, taking a slot is synchronous — no checkpoint between the check and the increment —
  so two requests racing for the last slot cannot both win: the second stream at the limit gets
  429 every time, not most of the time.
* With ``PROXY_REDIS_URL`` both limits are shared by every replica (see :mod:`.redis_store`).
  If Redis cannot answer, admission falls back to per-process limits, says so loudly once,
  sets the ``quartproxy_redis_fallback`` gauge, and tries Redis again after a short backoff.
  A request never fails because Redis is down.
* Redis must count every turn this process runs, whatever happened to Redis meanwhile. Every
  slot has a lease id and this process keeps the set of its live slots; the whole set is
  (re-)registered in Redis before the next grant or refresh whenever Redis's epoch marker
  says its data is not the data this process registered in (a restart without persistence)
  and whenever Redis answers again after an outage (slots granted locally meanwhile must
  count too). A refresh that finds its lease missing puts it back. So after Redis loses its
  data the limits hold at once for this process's own turns, and within a third of the lease
  TTL for every replica's.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from . import errors
from .config import Settings
from .observability import Metrics
from .ratelimit import RateLimiter, key_id
from .redis_store import EpochChanged, RedisStore, RedisUnavailable

log = logging.getLogger("quartproxy.admission")
T = TypeVar("T")

REDIS_RETRY_S = 5.0
QUEUE_POLL_MAX_S = 0.25


@dataclass(slots=True)
class Occupancy:
    streams: int = 0
    turns: int = 0


class Slot:
    """One admitted request's hold on the limits."""

    __slots__ = ("_admission", "in_redis", "lease", "released", "stream")

    def __init__(self, admission: Admission, stream: bool, lease: str, in_redis: bool) -> None:
        self._admission = admission
        self.stream = stream
        self.lease = lease  # its member name in Redis's sets
        self.in_redis = in_redis  # registered (and refreshed) in Redis
        self.released = trio.Event()

    async def release(self) -> None:
        if self.released.is_set():
            return
        self.released.set()
        await self._admission._release(self)


class ConcurrencyRejected(errors.ApiError):
    """429 concurrency_exceeded, with the occupancy the test headers report."""

    def __init__(self, kind: str, limit: int, before: int) -> None:
        base = errors.concurrency_exceeded(kind, limit)
        super().__init__(base.status, base.message, base.type, base.code)
        self.before = before
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Admitted:
    slot: Slot
    before: int  # occupancy of the limiting pool before this request
    limit: int


class Admission:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.stream_limit = settings.sse_max_concurrency
        self.turn_limit = settings.max_concurrency
        self.queue_timeout_s = settings.queue_timeout_ms / 1000
        self.lease_ttl_ms = settings.redis_lease_ttl_ms
        self.occupancy = Occupancy()  # this process's slots (local mode, or local fallback)
        self.rate = RateLimiter(settings)
        self.metrics = metrics
        if metrics is not None:
            metrics.turns_limit.set(self.turn_limit)
            metrics.streams_limit.set(self.stream_limit)
        self.redis = RedisStore(settings.redis_url) if settings.redis_url else None
        self.degraded = False
        self._nursery: trio.Nursery | None = None  # lease refreshers run here (see run)
        self._retry_at = 0.0
        self._changed = trio.Event()
        self._slots: set[Slot] = set()  # every slot held now, granted by Redis or locally
        self._epoch = ""  # Redis's epoch marker when this process last registered its slots
        self._register_needed = True  # before the next grant or refresh (see the docstring)
        self._register_lock = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery that Redis lease refreshers run in; check Redis once at start."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.redis is not None:
                try:
                    await self.redis.ping()
                    log.info("concurrency and rate limits shared through Redis")
                except RedisUnavailable as exc:
                    self._degrade(exc)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.close()

    # ------------------------------------------------------------------ concurrency

    def limit_for(self, stream: bool) -> int:
        return self.stream_limit if stream else self.turn_limit

    async def acquire(self, stream: bool) -> Admitted:
        """A slot now, or after waiting up to PROXY_QUEUE_TIMEOUT_MS, or 429."""
        started = trio.current_time()
        try:
            admitted = await self._acquire(stream)
        except ConcurrencyRejected:
            self._waited("rejected", started)
            raise
        self._waited("admitted", started)
        return admitted

    def _waited(self, outcome: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.admission_wait_by(outcome).observe(trio.current_time() - started)

    async def _acquire(self, stream: bool) -> Admitted:
        deadline = trio.current_time() + self.queue_timeout_s
        delay = 0.01
        while True:
            if self._redis_usable():
                outcome = await self._try_redis(stream)
                if outcome is not None:
                    admitted, blocked, before = outcome
                    if admitted is not None:
                        return admitted
                    if trio.current_time() >= deadline:
                        self._reject(blocked, before)
                    await trio.sleep(min(delay, max(0.0, deadline - trio.current_time())))
                    delay = min(delay * 2, QUEUE_POLL_MAX_S)
                    continue
            local = self._try_local(stream)
            if local is not None:
                return local
            if trio.current_time() >= deadline:
                blocked = self._local_block(stream) or "turns"
                before = self.occupancy.streams if blocked == "streams" else self.occupancy.turns
                self._reject(blocked, before)
            with trio.move_on_at(deadline):
                await self._changed.wait()

    def _local_block(self, stream: bool) -> str | None:
        if self.turn_limit and self.occupancy.turns >= self.turn_limit:
            return "turns"
        if stream and self.stream_limit and self.occupancy.streams >= self.stream_limit:
            return "streams"
        return None

    def _try_local(self, stream: bool) -> Admitted | None:
        if self._local_block(stream) is not None:
            return None
        before = self.occupancy.streams if stream else self.occupancy.turns
        return Admitted(self._hold(stream, uuid.uuid4().hex, in_redis=False), before,
                        self.limit_for(stream))

    def _hold(self, stream: bool, lease: str, *, in_redis: bool) -> Slot:
        slot = Slot(self, stream, lease, in_redis)
        self._slots.add(slot)
        self.occupancy.turns += 1
        if stream:
            self.occupancy.streams += 1
        if in_redis and self._nursery is not None:
            self._nursery.start_soon(self._maintain, slot)
        return slot

    async def _try_redis(self, stream: bool) -> tuple[Admitted | None, str, int] | None:
        """Ask Redis; ``None`` when Redis is unusable (the caller falls back to local)."""
        assert self.redis is not None
        lease = uuid.uuid4().hex
        redis = self.redis
        try:
            granted, blocked, turns, streams = await self._in_epoch(
                lambda: redis.acquire(
                    lease, stream=stream, turn_limit=self.turn_limit,
                    stream_limit=self.stream_limit, ttl_ms=self.lease_ttl_ms, epoch=self._epoch,
                )
            )
        except RedisUnavailable as exc:
            self._degrade(exc)
            return None
        self._recovered()
        before = streams if stream else turns
        if not granted:
            return None, blocked, streams if blocked == "streams" else turns
        slot = self._hold(stream, lease, in_redis=True)
        return Admitted(slot, before, self.limit_for(stream)), "", before

    async def _in_epoch(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a grant or a refresh against the epoch this process registered its slots in,
        registering them first whenever that is due (see the module docstring)."""
        for attempt in range(3):
            if self._register_needed:
                await self._register()
            try:
                return await call()
            except EpochChanged:
                if attempt == 0:
                    log.warning("Redis lost its data (restarted without persistence?): "
                                "re-registering this process's %d running turn(s)",
                                len(self._slots))
                self._register_needed = True
        raise RedisUnavailable("Redis's epoch marker keeps changing")

    async def _register(self) -> None:
        """Put every slot this process holds into Redis (see the module docstring)."""
        assert self.redis is not None
        async with self._register_lock:
            if not self._register_needed:
                return  # another task just did it
            held = list(self._slots)
            self._register_needed = False  # set again by whatever goes wrong from here on
            try:
                self._epoch = await self.redis.register(
                    [(slot.lease, slot.stream) for slot in held], ttl_ms=self.lease_ttl_ms,
                    candidate_epoch=uuid.uuid4().hex,
                )
            except BaseException:
                self._register_needed = True
                raise
            for slot in held:
                if slot.released.is_set():
                    # Released while the script ran: its removal may have come first.
                    await self.redis.release(slot.lease)
                elif not slot.in_redis:
                    slot.in_redis = True
                    if self._nursery is not None:
                        self._nursery.start_soon(self._maintain, slot)

    def _reject(self, blocked: str, before: int) -> None:
        limit = self.stream_limit if blocked == "streams" else self.turn_limit
        if self.metrics is not None:
            self.metrics.rejections_by("concurrency_exceeded").inc()
        raise ConcurrencyRejected(blocked, limit, before)

    async def _release(self, slot: Slot) -> None:
        self._slots.discard(slot)
        self.occupancy.turns -= 1
        if slot.stream:
            self.occupancy.streams -= 1
        self._changed.set()
        self._changed = trio.Event()
        if slot.in_redis and self.redis is not None:
            try:
                await self.redis.release(slot.lease)
            except RedisUnavailable as exc:
                # The lease expires by itself within the TTL.
                log.warning("could not release Redis lease: %s", exc)

    async def _maintain(self, slot: Slot) -> None:
        """Refresh the slot's lease while its turn runs; put it back if Redis lost it."""
        redis = self.redis
        assert redis is not None
        period = self.lease_ttl_ms / 3000
        while True:
            with trio.move_on_after(period):
                await slot.released.wait()
            if slot.released.is_set():
                return
            try:
                readded = await self._in_epoch(
                    lambda: redis.refresh(slot.lease, stream=slot.stream,
                                          ttl_ms=self.lease_ttl_ms, epoch=self._epoch)
                )
            except RedisUnavailable as exc:
                self._degrade(exc)
                continue
            self._recovered()
            if readded:
                log.warning("Redis lease %s had expired while its turn was running; re-added",
                            slot.lease)

    async def shared_counts(self) -> Occupancy:
        if self.redis is not None and self._redis_usable():
            try:
                turns, streams = await self.redis.counts()
                return Occupancy(streams=streams, turns=turns)
            except RedisUnavailable as exc:
                self._degrade(exc)
        return Occupancy(self.occupancy.streams, self.occupancy.turns)

    # ------------------------------------------------------------------ rate limit

    async def check_rate(self, key: str) -> None:
        rate = self.rate
        if not rate.enabled:
            return
        if self._redis_usable():
            assert self.redis is not None
            window_ms = int(rate.window_s * 1000)
            index = int(time.time() * 1000) // window_ms
            try:
                count, ttl_ms = await self.redis.hit(key_id(key), window_ms, index)
            except RedisUnavailable as exc:
                self._degrade(exc)
            else:
                self._recovered()
                if count > rate.limit:
                    self._rate_rejected()
                    raise errors.rate_limited(max(1, math.ceil(max(ttl_ms, 0) / 1000)))
                return
        try:
            rate.check(key)
        except errors.ApiError:
            self._rate_rejected()
            raise

    def _rate_rejected(self) -> None:
        if self.metrics is not None:
            self.metrics.rejections_by("rate_limited").inc()

    # ------------------------------------------------------------------ Redis health

    def _redis_usable(self) -> bool:
        if self.redis is None:
            return False
        return not self.degraded or trio.current_time() >= self._retry_at

    def _degrade(self, exc: Exception) -> None:
        self._retry_at = trio.current_time() + REDIS_RETRY_S
        self._register_needed = True  # slots granted meanwhile are local only
        if not self.degraded:
            self.degraded = True
            log.error(
                "REDIS UNAVAILABLE (%s): limits are now per-process until it answers again",
                exc,
            )
            if self.metrics is not None:
                self.metrics.redis_fallback.set(1)

    def _recovered(self) -> None:
        if self.degraded:
            self.degraded = False
            log.warning("Redis answers again: limits are shared across replicas")
            if self.metrics is not None:
                self.metrics.redis_fallback.set(0)

    def close(self) -> None:
        if self.redis is not None:
            self.redis.close()
