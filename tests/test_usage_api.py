"""``/v1/usage`` and ``/v1/usage/raw`` over HTTP: the shape (this proxy's and the old
product's), time windows as epoch ms or ISO, rotated files, errors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import trio

from .conftest import AUTH, Proxy, StartProxy, chat_body

TOP_LEVEL = {
    "object", "group", "start", "end",
    "total_requests", "prompt_tokens", "completion_tokens", "total_tokens",
    "prompt_tokens_est", "completion_tokens_est", "total_tokens_est",
    "data", "buckets",
}
DATA_KEYS = {"period", "requests", "prompt_tokens", "completion_tokens", "total_tokens"}
BUCKET_KEYS = {"ts", "requests", "prompt_tokens", "completion_tokens", "total_tokens",
               "prompt_tokens_est", "completion_tokens_est", "total_tokens_est"}


async def two_requests(proxy: Proxy) -> None:
    async with proxy.client() as client:
        for body in (chat_body(), chat_body(stream=True)):
            resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
            assert resp.status_code == 200
    await proxy.wait_idle()
    with trio.fail_after(15):
        await proxy.state.usage_log.written.wait_value(lambda n: n >= 2)


async def get(proxy: Proxy, path: str) -> Any:
    async with proxy.client() as client:
        resp = await client.get(path, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_usage_shape(proxy: Proxy) -> None:
    before = int(time.time() * 1000)
    await two_requests(proxy)
    body = await get(proxy, "/v1/usage?group=hour")
    assert set(body) == TOP_LEVEL
    assert body["object"] == "list" and body["group"] == "hour"
    assert body["start"] == 0 and body["end"] > before
    assert body["total_requests"] == 2
    assert body["prompt_tokens"] == body["prompt_tokens_est"] == 2400
    assert body["completion_tokens"] == body["completion_tokens_est"] > 0
    assert body["total_tokens"] == body["total_tokens_est"] == (
        body["prompt_tokens"] + body["completion_tokens"])
    (bucket,) = body["buckets"]
    assert set(bucket) == BUCKET_KEYS
    assert bucket["requests"] == 2 and bucket["total_tokens_est"] == body["total_tokens"]
    assert bucket["ts"].endswith(":00:00.000Z") and len(bucket["ts"]) == 24
    (entry,) = body["data"]
    assert set(entry) == DATA_KEYS
    assert entry["period"] == bucket["ts"][:13] and entry["requests"] == 2
    days = await get(proxy, "/v1/usage")
    assert days["group"] == "day" and days["buckets"][0]["ts"].endswith("T00:00:00.000Z")
    assert days["data"][0]["period"] == days["buckets"][0]["ts"][:10]


async def test_windows_in_epoch_ms_and_iso(proxy: Proxy) -> None:
    await two_requests(proxy)
    now = int(time.time() * 1000)
    hour_ago = now - 3_600_000
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour_ago / 1000))
    as_ms = await get(proxy, f"/v1/usage?start={hour_ago}&end={now + 60_000}")
    assert (as_ms["start"], as_ms["end"]) == (hour_ago, now + 60_000)
    assert as_ms["total_requests"] == 2
    as_iso = await get(proxy, f"/v1/usage?start={iso}")
    assert as_iso["total_requests"] == 2 and as_iso["start"] == hour_ago // 1000 * 1000
    assert (await get(proxy, f"/v1/usage?end={hour_ago}"))["total_requests"] == 0
    later = await get(proxy, f"/v1/usage?start={now + 60_000}&end=0")  # end=0: no end
    assert later["total_requests"] == 0 and later["buckets"] == [] and later["data"] == []


async def test_bad_parameters_are_400(proxy: Proxy) -> None:
    async with proxy.client() as client:
        for query, param in (("start=yesterday", "start"), ("end=12:00", "end"),
                             ("group=week", "group")):
            resp = await client.get(f"/v1/usage?{query}", headers=AUTH)
            assert resp.status_code == 400, query
            assert resp.json()["error"]["param"] == param
        resp = await client.get("/v1/usage/raw?limit=many", headers=AUTH)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "limit"
        for path in ("/v1/usage", "/v1/usage/raw"):
            assert (await client.get(path)).status_code == 401


async def test_rotated_files_and_old_records_are_read(start_proxy: StartProxy,
                                                      tmp_path: Path) -> None:
    """Files left by rotation, including records the old product wrote (epoch-ms ``ts`` and
    ``*_est`` token fields), count next to the new ones."""
    old = [{"ts": 1_795_497_000_000 + i * 1000, "prompt_tokens_est": 10,
            "completion_tokens_est": 5, "total_tokens_est": 15} for i in range(3)]
    (tmp_path / "usage.ndjson.2").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in old))
    (tmp_path / "usage.ndjson.1").write_bytes(orjson.dumps(
        {"ts": "2026-11-25T10:00:00.000Z", "prompt_tokens": 7, "completion_tokens": 1,
         "total_tokens": 8}) + b"\n")
    proxy = await start_proxy()
    assert proxy.settings.token_log_path == tmp_path / "usage.ndjson"
    await two_requests(proxy)
    body = await get(proxy, "/v1/usage?group=day")
    assert body["total_requests"] == 6
    assert [b["requests"] for b in body["buckets"][:2]] == [3, 1]
    assert body["buckets"][0] == {
        "ts": "2026-11-24T00:00:00.000Z", "requests": 3, "prompt_tokens": 30,
        "completion_tokens": 15, "total_tokens": 45, "prompt_tokens_est": 30,
        "completion_tokens_est": 15, "total_tokens_est": 45}
    window = await get(proxy, "/v1/usage?start=2026-11-24&end=2026-11-26")
    assert window["total_requests"] == 4 and window["total_tokens"] == 53
    raw = await get(proxy, "/v1/usage/raw?limit=4")
    assert raw["count"] == 4 and len(raw["data"]) == 4
    assert raw["data"][0]["prompt_tokens_est"] == 10  # the last record of .2, then .1, ...
    assert raw["data"][1]["prompt_tokens"] == 7  # ... then the two new records
    assert [r.get("route") for r in raw["data"][-2:]] == ["/v1/chat/completions"] * 2
    everything = await get(proxy, "/v1/usage/raw?limit=50000")  # capped at 10,000
    assert everything["count"] == 6


async def test_usage_log_rotates_under_the_server(start_proxy: StartProxy,
                                                  tmp_path: Path) -> None:
    proxy = await start_proxy(usage_log_max_bytes=1500, usage_log_keep=2)
    async with proxy.client() as client:
        for _ in range(12):
            assert (await client.post("/v1/chat/completions", json=chat_body(),
                                      headers=AUTH)).status_code == 200
            await proxy.wait_idle()
    with trio.fail_after(15):
        await proxy.state.usage_log.written.wait_value(12)
    names = sorted(p.name for p in tmp_path.glob("usage.ndjson*"))
    assert names == ["usage.ndjson", "usage.ndjson.1", "usage.ndjson.2", "usage.ndjson.lock"]
    kept = sum(len(p.read_bytes().splitlines()) for p in tmp_path.glob("usage.ndjson*"))
    assert 0 < kept < 12
    assert (await get(proxy, "/v1/usage"))["total_requests"] == kept


async def test_the_index_is_built_at_start_up(start_proxy: StartProxy, tmp_path: Path) -> None:
    lines = [orjson.dumps({"ts": 1_795_497_000_000 + i * 60_000, "prompt_tokens": 1,
                           "completion_tokens": 1}) + b"\n" for i in range(2000)]
    (tmp_path / "usage.ndjson.1").write_bytes(b"".join(lines[:1000]))
    (tmp_path / "usage.ndjson").write_bytes(b"".join(lines[1000:]))
    proxy = await start_proxy()
    store = proxy.state.usage_store
    with trio.fail_after(15):  # a hang guard: the warm-up runs as soon as the server starts
        await store.caught_up.wait_value(lambda n: n >= 1)
    assert store.indexed_bytes() == sum(len(line) for line in lines)
    body = await get(proxy, "/v1/usage?group=hour&start=2026-11-24T05:10:00Z")
    assert body["total_requests"] == 2000 and len(body["buckets"]) == 34
