"""/metrics as Prometheus reads it, parsed with prometheus_client's own parser, while requests
run: tokens, turns, errors, admission waits, keepalives, worker figures, and who may scrape."""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import httpx
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quartproxy.observability import Metrics, WorkerCollector, rss_bytes

from .conftest import AUTH, Proxy, StartProxy, chat_body

Labels = frozenset[tuple[str, str]]


def parse(text: str) -> dict[tuple[str, Labels], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, Labels], float]:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    return parse(resp.text)


async def settle(proxy: Proxy, usage_records: int) -> None:
    """Every turn ended and accounted for (the metrics are updated just before the record)."""
    await proxy.wait_idle()
    with trio.fail_after(15):
        await proxy.state.usage_log.written.wait_value(lambda n: n >= usage_records)


async def test_tokens_turns_and_errors_by_bounded_labels(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()
    async with proxy.client() as client:
        assert (await client.post("/v1/chat/completions", json=chat_body(model="CODEX-5"),
                                  headers=AUTH)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=chat_body(
            "SCENARIO=reasoning", model="codex-5-high"), headers=AUTH)).status_code == 200
        failed = await client.post("/v1/chat/completions", json=chat_body("SCENARIO=error"),
                                   headers=AUTH)
        assert failed.status_code == 400  # context_length_exceeded
        unknown = await client.post("/v1/chat/completions",
                                    json=chat_body(model="my-own-model"), headers=AUTH)
        assert unknown.status_code == 404
        await settle(proxy, 3)
        samples = await scrape(client)

    tokens = "quartproxy_tokens_total"
    # The client's spelling is not a label: "CODEX-5" is counted as codex-5.
    assert value(samples, tokens, model="codex-5", type="prompt", source="codex") == 1200
    estimated = value(samples, tokens, model="codex-5", type="prompt", source="estimate")
    assert estimated is not None and estimated > 0  # the failed turn: no counts from codex
    assert value(samples, tokens, model="codex-5-high", type="cached", source="codex") == 1024
    assert value(samples, tokens, model="codex-5-high", type="reasoning", source="codex") == 64
    assert value(samples, tokens, model="codex-5-high", type="completion", source="codex") == 72
    models = {dict(labels).get("model") for (name, labels) in samples if name == tokens}
    assert models == {"codex-5", "codex-5-high"}  # never "CODEX-5", never "my-own-model"

    assert value(samples, "quartproxy_turns_total", finish_reason="stop", outcome="ok") == 2
    assert value(samples, "quartproxy_turns_total", finish_reason="error", outcome="error") == 1
    assert value(samples, "quartproxy_turn_errors_total", code="context_length_exceeded") == 1


async def test_while_a_stream_runs(start_proxy: StartProxy) -> None:
    """A stream that stays open: it is counted as running and as an open stream, and the
    keepalive comments it is sent are counted, then everything returns to zero."""
    proxy = await start_proxy(sse_keepalive_ms=20)
    async with proxy.client() as client, trio.open_nursery() as nursery:
        opened = trio.Event()

        async def hanging_stream() -> None:
            async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                     json=chat_body("SCENARIO=stream_hang", stream=True)) as resp:
                assert resp.status_code == 200
                opened.set()
                async for _ in resp.aiter_raw():
                    pass

        nursery.start_soon(hanging_stream)
        with trio.fail_after(15):
            await opened.wait()
            while True:  # a hang guard around a condition the proxy makes true, not a timer
                samples = await scrape(client)
                if (value(samples, "quartproxy_sse_keepalives_total") or 0) >= 2:
                    break
                await trio.sleep(0.02)
        assert value(samples, "quartproxy_turns_running") == 1
        assert value(samples, "quartproxy_active_streams") == 1
        assert value(samples, "quartproxy_streams_limit") == proxy.settings.sse_max_concurrency
        nursery.cancel_scope.cancel()
    await settle(proxy, 1)
    async with proxy.client() as client:
        samples = await scrape(client)
    assert value(samples, "quartproxy_turns_running") == 0
    assert value(samples, "quartproxy_active_streams") == 0
    assert value(samples, "quartproxy_turns_total", finish_reason="none",
                 outcome="client_disconnect") == 1


async def test_admission_wait_histogram(start_proxy: StartProxy) -> None:
    """One slot, a turn holding it: the next request waits PROXY_QUEUE_TIMEOUT_MS and gets
    429; the wait is observed as rejected, the first one as admitted."""
    proxy = await start_proxy(max_concurrency=1, queue_timeout_ms=300)
    async with proxy.client() as client, trio.open_nursery() as nursery:

        async def holder() -> None:
            await client.post("/v1/chat/completions", json=chat_body("SCENARIO=hang"),
                              headers=AUTH)

        nursery.start_soon(holder)
        with trio.fail_after(15):
            await proxy.state.service.running.wait_value(1)
        rejected = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert rejected.status_code == 429
        samples = await scrape(client)
        nursery.cancel_scope.cancel()
    wait = "quartproxy_admission_wait_seconds"
    assert value(samples, f"{wait}_count", outcome="admitted") == 1
    assert value(samples, f"{wait}_count", outcome="rejected") == 1
    rejected_wait = value(samples, f"{wait}_sum", outcome="rejected")
    assert rejected_wait is not None and rejected_wait >= 0.3
    assert value(samples, f"{wait}_bucket", outcome="rejected", le="0.25") == 0
    assert value(samples, "quartproxy_admission_rejections_total",
                 reason="concurrency_exceeded") == 1
    assert value(samples, "quartproxy_turns_limit") == 1
    await proxy.wait_idle()


async def test_metrics_are_open_by_default_and_keyed_on_request(start_proxy: StartProxy) -> None:
    open_proxy = await start_proxy()
    keyed = await start_proxy(metrics_require_key=True)
    async with open_proxy.client() as client:
        assert (await client.get("/metrics")).status_code == 200
    async with keyed.client() as client:
        denied = await client.get("/metrics")
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "invalid_api_key"
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = await client.get("/metrics", headers=AUTH)
        assert allowed.status_code == 200
        assert "quartproxy_requests_total" in allowed.text


# ------------------------------------------------------------------------ app-server workers


async def test_worker_figures_over_http(start_proxy: StartProxy) -> None:
    """Two fake app-server workers: ready, each process's memory, the turns each carries
    while three streams are held open, and a crashed worker counted as a ``crashed`` restart
    once it is replaced."""
    proxy = await start_proxy(backend="app-server", workers=2, worker_backoff_initial_ms=50)
    await proxy.wait_ready(2)
    pool = proxy.state.backend
    async with proxy.client() as client:
        idle = await scrape(client)
        assert value(idle, "quartproxy_workers_configured") == 2
        assert value(idle, "quartproxy_workers_ready") == 2
        for slot in ("0", "1"):
            assert value(idle, "quartproxy_worker_turns_in_flight", slot=slot) == 0
            rss = value(idle, "quartproxy_worker_rss_bytes", slot=slot)
            assert rss is not None and rss > 1 << 20  # a live Python process
        assert value(idle, "quartproxy_worker_restarts_total", cause="crashed") == 0

        async with AsyncExitStack() as held:
            for _ in range(3):  # stream_hang: three deltas, then silence until the client goes
                resp = await held.enter_async_context(client.stream(
                    "POST", "/v1/chat/completions", headers=AUTH,
                    json=chat_body("SCENARIO=stream_hang", stream=True)))
                assert resp.status_code == 200
                chunks = resp.aiter_raw()
                held.push_async_callback(chunks.aclose)
                seen = b""
                while b'" is"' not in seen:
                    seen += await chunks.__anext__()
            busy = await scrape(client)
        assert value(busy, "quartproxy_turns_running") == 3
        per_slot = sorted(value(busy, "quartproxy_worker_turns_in_flight", slot=slot) or 0
                          for slot in ("0", "1"))
        assert per_slot == [1, 2]  # the least busy worker takes the next turn
        with trio.fail_after(30):
            await proxy.state.service.running.wait_value(0)

        crashed = await client.post("/v1/chat/completions", headers=AUTH,
                                    json=chat_body("SCENARIO=worker_crash"))
        assert crashed.json()["choices"][0]["finish_reason"] == "length"
        with trio.fail_after(30):
            while True:  # a hang guard around the pool replacing the worker, not a timer
                samples = await scrape(client)
                if (value(samples, "quartproxy_worker_restarts_total", cause="crashed") == 1
                        and value(samples, "quartproxy_workers_ready") == 2):
                    break
                await trio.sleep(0.02)
        assert pool.restarts == {"crashed": 1}
        for slot in ("0", "1"):
            assert value(samples, "quartproxy_worker_turns_in_flight", slot=slot) == 0
            assert (value(samples, "quartproxy_worker_rss_bytes", slot=slot) or 0) > 1 << 20


# ------------------------------------------------------------------------ worker collector


@dataclass
class StubWorker:
    name: str
    active: int = 0
    pid: int | None = None
    accepting: bool = True


@dataclass
class StubPool:
    slots: list[StubWorker | None]
    retired: list[StubWorker] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)


def collected(pool: StubPool | None) -> dict[tuple[str, Labels], float]:
    registry = CollectorRegistry()
    registry.register(WorkerCollector(pool))
    return parse(generate_latest(registry).decode())


def names(text_samples: Iterable[tuple[str, Labels]]) -> set[str]:
    return {name for name, _ in text_samples}


def test_worker_collector_reads_the_pool() -> None:
    me = os.getpid()
    pool = StubPool(
        slots=[StubWorker("w0.7", active=3, pid=me), None,
               StubWorker("w2.3", active=1, pid=None, accepting=False)],
        retired=[StubWorker("w0.5", active=2, pid=me, accepting=False),
                 StubWorker("odd-name", active=9, pid=me)],
        restarts={"crashed": 2, "recycled": 1},
    )
    samples = collected(pool)
    assert value(samples, "quartproxy_workers_configured") == 3
    assert value(samples, "quartproxy_workers_ready") == 1
    assert value(samples, "quartproxy_worker_restarts_total", cause="crashed") == 2
    assert value(samples, "quartproxy_worker_restarts_total", cause="recycled") == 1
    assert value(samples, "quartproxy_worker_restarts_total", cause="unhealthy") == 0
    # Slot indexes, never generation names; a recycled worker's turns count for its slot.
    assert value(samples, "quartproxy_worker_turns_in_flight", slot="0") == 5
    assert value(samples, "quartproxy_worker_turns_in_flight", slot="1") == 0
    assert value(samples, "quartproxy_worker_turns_in_flight", slot="2") == 1
    slots = {dict(labels)["slot"] for name, labels in samples
             if name == "quartproxy_worker_turns_in_flight"}
    assert slots == {"0", "1", "2"}
    own_rss = rss_bytes(me)
    assert own_rss is not None and own_rss > 1 << 20
    rss = value(samples, "quartproxy_worker_rss_bytes", slot="0")
    assert rss is not None and rss >= own_rss  # two processes' worth (both are this one)
    assert value(samples, "quartproxy_worker_rss_bytes", slot="2") is None  # no process


def test_worker_collector_without_a_pool_declares_names_only() -> None:
    registry = CollectorRegistry()
    registry.register(WorkerCollector(None))
    families = {family.name: family for family in
                text_string_to_metric_families(generate_latest(registry).decode())}
    assert set(families) == {
        "quartproxy_workers_configured", "quartproxy_workers_ready",
        "quartproxy_worker_restarts", "quartproxy_worker_turns_in_flight",
        "quartproxy_worker_rss_bytes"}
    assert all(not family.samples for family in families.values())


def test_rss_of_a_process_that_is_gone() -> None:
    assert rss_bytes(2**22 + 12345) is None


def test_model_label_is_a_catalog_id_or_other() -> None:
    metrics = Metrics(models=["codex-5", "codex-5-low", "gpt-5"])
    assert metrics.model_label("CODEX-5-LOW") == "codex-5-low"
    assert metrics.model_label("gpt-5") == "gpt-5"
    assert metrics.model_label("anything a client sends") == "other"
