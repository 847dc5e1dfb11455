"""Running-turn gauges stay paired under clients that reset at any moment.

``quartproxy_live_children`` once went negative under 60 streams reset 0-29 ms after sending:
the decrement ran for turns that never opened. The count is now raised by the relay's
``on_open`` and lowered by ``on_done`` only for a turn that opened; this test resets many
requests at random early moments (seeded) and checks the count never dips below zero, ends at
zero on /metrics, and that every opened turn wrote exactly one usage record.
"""

from __future__ import annotations

import random
import socket
import struct
from typing import Any

import orjson
import pytest
import trio
import trio_util

from quartproxy.connections import TCPServer
from quartproxy.observability import read_usage

from .conftest import API_KEY, StartProxy

REQUESTS = 60


class LowWaterMark(trio_util.AsyncValue[int]):
    """An AsyncValue that remembers the lowest value it ever held."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.lowest = value

    @property
    def value(self) -> int:
        return trio_util.AsyncValue.value.fget(self)  # type: ignore[attr-defined, no-any-return]

    @value.setter
    def value(self, new: int) -> None:
        self.lowest = min(self.lowest, new)
        trio_util.AsyncValue.value.fset(self, new)  # type: ignore[attr-defined]


def request_bytes(index: int) -> bytes:
    scenario = ("stream_hang", "normal", "slow", "hang")[index % 4]
    body = orjson.dumps({"model": "codex-5", "stream": index % 3 != 0,
                         "messages": [{"role": "user", "content": f"SCENARIO={scenario}"}]})
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body)


async def send_then_reset(port: int, data: bytes, delay: float) -> None:
    sock = trio.socket.socket()
    with sock:
        await sock.connect(("127.0.0.1", port))
        view = memoryview(data)
        while view:
            view = view[await sock.send(view):]
        await trio.sleep(delay)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def gauges(exposition: str) -> dict[str, float]:
    names = ("quartproxy_turns_running", "quartproxy_live_children", "quartproxy_active_streams")
    found: dict[str, float] = {}
    for line in exposition.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            found[name] = float(value)
    assert set(found) == set(names), exposition
    return found


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_early_resets_keep_the_gauges_paired(
    start_proxy: StartProxy, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await start_proxy(sse_max_concurrency=0, max_concurrency=0)
    # A reset client's request may still be read and start a turn after every earlier turn
    # has ended (the kernel hands the server the bytes that came before the reset): the count
    # reaching zero means nothing until the server has finished with every connection.
    connections_ended = trio_util.AsyncValue(0)
    serve_connection = TCPServer.run

    async def counted(server: TCPServer) -> None:
        try:
            await serve_connection(server)
        finally:
            connections_ended.value += 1

    monkeypatch.setattr(TCPServer, "run", counted)
    service = proxy.state.service
    service.running = running = LowWaterMark(0)
    opened: list[str] = []
    original_opened = service._opened

    def count_opened(relay: Any) -> None:
        opened.append(relay.request.request_id)
        original_opened(relay)

    service._opened = count_opened  # the relay's on_open, bound when each request starts
    port = int(proxy.base_url.rsplit(":", 1)[1])
    rng = random.Random(seed)
    sampled: list[dict[str, float]] = []
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def sample_metrics() -> None:
            # What /metrics serves, read in-process: a connection of its own would keep the
            # connection count from telling when the clients are done.
            while not done.is_set():
                sampled.append(gauges(proxy.state.metrics.exposition().decode()))
                await trio.sleep(0.001)

        nursery.start_soon(sample_metrics)
        async with trio.open_nursery() as clients:
            for index in range(REQUESTS):
                # Mostly within 30 ms of sending (before, while or just after the turn
                # opens), some later (mid-answer).
                delay = rng.randrange(30) if index % 3 else rng.randrange(30, 300)
                clients.start_soon(send_then_reset, port, request_bytes(index), delay / 1000)
        with trio.fail_after(60):
            await connections_ended.wait_value(lambda n: n >= REQUESTS)
            await running.wait_value(0)
            # A turn is counted down before its usage record is queued: wait for the records.
            await proxy.state.usage_log.written.wait_value(lambda n: n >= len(opened))
        done.set()
    async with proxy.client() as client:
        final = gauges((await client.get("/metrics")).text)
    conc = proxy.state.admission.occupancy
    assert running.lowest == 0, f"running turns went down to {running.lowest}"
    assert all(value >= 0 for sample in sampled for value in sample.values())
    assert final == {"quartproxy_turns_running": 0.0, "quartproxy_live_children": 0.0,
                     "quartproxy_active_streams": 0.0}
    assert (conc.turns, conc.streams) == (0, 0)
    assert opened, "no request got as far as a turn: the resets were all too early"
    records = read_usage(proxy.settings.token_log_path)
    assert sorted(record["req_id"] for record in records) == sorted(opened)
    await proxy.wait_idle()
