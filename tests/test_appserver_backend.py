"""The app-server backend over real HTTP with real worker processes (fixtures/fake_app_server.py).

What is checked here is what only this backend has: long-lived workers carrying many threads,
a fresh thread per request and its deletion on every way a request ends, routing by thread, a
slow client that must not stall the others, worker death, restarts, recycling, health probes,
server requests, history injection and the reduced mode of older releases. The fake records
every line the proxy writes (``FAKE_CODEX_RECORD``), which is how the tests see the JSON-RPC
side; the worker processes are found through ``FAKE_CODEX_PID_DIR``.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from quartproxy import contract
from quartproxy.backends.appserver.backend import AppServerBackend
from quartproxy.backends.appserver.rpc import Notification
from quartproxy.backends.appserver.translate import TurnTranslator
from quartproxy.backends.appserver.worker import ThreadRoute
from quartproxy.completion import End

from .conftest import AUTH, Proxy, StartProxy, chat_body, pid_alive, read_stream

NORMAL_TEXT = "Hello! This is a streamed answer from the fake upstream."
NORMAL_USAGE = {
    "prompt_tokens": 1200, "completion_tokens": 14, "total_tokens": 1214,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
USAGE = {"include_usage": True}


class Record:
    """What the proxy wrote to its workers, read from the fake's record files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def lines(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for path in sorted(self.folder.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    doc = json.loads(line)
                    doc["_worker"] = path.stem
                    found.append(doc)
        return found

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("method") == method]

    def started_threads(self) -> int:
        return len(self.calls("thread/start"))

    def deleted(self) -> set[str]:
        return {line["params"]["threadId"] for line in self.calls("thread/delete")}

    def archived(self) -> set[str]:
        return {line["params"]["threadId"] for line in self.calls("thread/archive")}


async def app_proxy(
    start_proxy: StartProxy, tmp_path: Path, *, workers: int = 1, version: str | None = None,
    **overrides: Any,
) -> tuple[Proxy, Record]:
    folder = tmp_path / f"record-{len(list(tmp_path.glob('record-*')))}"
    folder.mkdir()
    env = {"FAKE_CODEX_RECORD": str(folder)}
    if version is not None:
        env["FAKE_CODEX_VERSION"] = version
    overrides.setdefault("sse_max_concurrency", 64)
    overrides.setdefault("max_concurrency", 64)
    proxy = await start_proxy(child_env=env, backend="app-server", workers=workers, **overrides)
    await proxy.wait_ready(workers)
    return proxy, Record(folder)


def backend(proxy: Proxy) -> AppServerBackend:
    found = proxy.state.backend
    assert isinstance(found, AppServerBackend)
    return found


async def threads_cleaned(proxy: Proxy, record: Record, *, count: int,
                          method: str = "thread/delete") -> set[str]:
    """Every thread the proxy started was deleted (or archived) once its request ended."""
    with trio.fail_after(20):
        await proxy.state.service.running.wait_value(0)
        while True:
            ended = record.deleted() if method == "thread/delete" else record.archived()
            if len(ended) >= count:
                break
            await trio.sleep(0.01)  # the record file is another process's output
    assert record.started_threads() == count
    assert all(not w.routes for w in backend(proxy).workers())
    return ended


def stream_body(prompt: str, **extra: Any) -> dict[str, Any]:
    return chat_body(prompt, stream=True, stream_options=USAGE, **extra)


def checked(raw: bytes) -> tuple[str, str | None, dict[str, Any] | None]:
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=True))
    return contract.collect_stream_content(raw)


# ----------------------------------------------------------------------------- basics


async def test_stream_and_json_through_a_worker(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy, record = await app_proxy(start_proxy, tmp_path)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body("hi"), headers=AUTH)
        _, raw = await read_stream(client, "/v1/chat/completions", stream_body("hi"))
        legacy = await client.post("/v1/completions", headers=AUTH,
                                   json={"model": "codex-5", "prompt": "hi"})
    assert resp.status_code == 200
    contract.assert_valid(contract.check_chat_json(resp.content))
    assert resp.json()["choices"][0]["message"]["content"] == NORMAL_TEXT
    assert resp.json()["usage"] == NORMAL_USAGE
    assert checked(raw) == (NORMAL_TEXT, "stop", NORMAL_USAGE)
    assert legacy.json()["choices"][0]["text"] == NORMAL_TEXT
    await threads_cleaned(proxy, record, count=3)
    starts = record.calls("thread/start")
    assert {line["params"]["sandbox"] for line in starts} == {"read-only"}
    assert all(line["params"]["approvalPolicy"] == "never" for line in starts)
    (init,) = record.calls("initialize")
    assert init["params"]["clientInfo"]["name"] == "quartproxy"
    assert "optOutNotificationMethods" in init["params"]["capabilities"]
    # One worker process carried all three requests.
    assert len({line["_worker"] for line in record.lines()}) == 1


async def test_worker_argv_overrides(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy, record = await app_proxy(start_proxy, tmp_path, force_provider="local")
    (meta,) = [json.loads(p.read_text()) for p in record.folder.glob("*.json")]
    overrides = meta["config_overrides"]
    assert meta["argv"][1] == "app-server"
    assert overrides["features.shell_snapshot"] == "false"
    assert overrides["features.unbounded_connection_retries"] == "false"
    assert overrides["web_search"] == "disabled"
    assert overrides["model_provider"] == "local"
    assert overrides["approval_policy"] == "never"
    assert not any(key.startswith("PROXY_") for key in meta["env"])
    assert meta["env"]["CODEX_HOME"] == str(proxy.settings.codex_home.resolve())


async def test_history_goes_in_as_instructions_and_items(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy, record = await app_proxy(start_proxy, tmp_path)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer one"},
        {"role": "user", "content": "second"},
    ]
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", headers=AUTH,
                                 json={"model": "codex-5-high", "messages": messages})
    assert resp.status_code == 200
    await threads_cleaned(proxy, record, count=1)
    (start,) = record.calls("thread/start")
    assert start["params"]["developerInstructions"] == "be brief\n\n"
    (inject,) = record.calls("thread/inject_items")
    assert [(i["role"], i["content"][0]["text"]) for i in inject["params"]["items"]] == [
        ("user", "first"), ("assistant", "answer one")]
    (turn,) = record.calls("turn/start")
    assert turn["params"]["input"] == [{"type": "text", "text": "second"}]
    assert turn["params"]["effort"] == "high"


async def test_reduced_mode_flattens_and_archives(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy, record = await app_proxy(start_proxy, tmp_path, version="0.120.0")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", headers=AUTH,
                                 json={"model": "codex-5", "messages": messages})
        tools = await client.post("/v1/chat/completions", headers=AUTH, json=chat_body(
            "hi", tools=[{"type": "function", "function": {"name": "f"}}]))
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]
    assert tools.status_code == 400
    assert tools.json()["error"]["code"] == "unsupported_parameter"
    assert "0.169.0" in tools.json()["error"]["message"]
    await threads_cleaned(proxy, record, count=1, method="thread/archive")
    (turn,) = record.calls("turn/start")
    assert turn["params"]["input"] == [{"type": "text", "text": "[system] be brief\n[user] hi"}]
    assert not record.calls("thread/inject_items") and not record.calls("thread/delete")


# ----------------------------------------------------------------------------- every end deletes


async def test_every_way_a_request_ends_deletes_its_thread(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy, record = await app_proxy(
        start_proxy, tmp_path, workers=2, timeout_ms=3000, stop_after_tools=True,
        stop_after_tools_mode="first",
    )
    async with proxy.client() as client:
        answered = await client.post("/v1/chat/completions", json=chat_body("hi"), headers=AUTH)
        deadline = await client.post("/v1/chat/completions", headers=AUTH,
                                     json=chat_body("SCENARIO=stream_hang"))
        cut = await client.post("/v1/chat/completions", headers=AUTH,
                                json=chat_body("SCENARIO=long", max_tokens=5))
        tool_cut = await client.post("/v1/chat/completions", headers=AUTH,
                                     json=chat_body("SCENARIO=tool_blocks"))
        failed = await client.post("/v1/chat/completions", headers=AUTH,
                                   json=chat_body("SCENARIO=usage_limit"))
        async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                 json=stream_body("SCENARIO=slow DELTAS=200")) as resp:
            async for chunk in resp.aiter_raw():
                if b'"content":"' in chunk.replace(b'"content":""', b""):
                    break  # disconnect after the first text
    assert answered.json()["choices"][0]["finish_reason"] == "stop"
    assert deadline.json()["choices"][0]["finish_reason"] == "length"
    assert cut.json()["choices"][0]["finish_reason"] == "length"
    assert tool_cut.json()["choices"][0]["finish_reason"] == "stop"
    assert failed.status_code == 429
    deleted = await threads_cleaned(proxy, record, count=6)
    assert len(deleted) == 6
    # A turn still running when its thread is deleted is interrupted by codex: the loaded list
    # of every worker is empty again.
    for worker in backend(proxy).workers():
        result = await worker.call("thread/loaded/list", {})
        assert result["data"] == []


async def test_shutdown_finalizes_and_deletes(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy, record = await app_proxy(start_proxy, tmp_path)
    raw = b""
    async with proxy.client() as client, client.stream(
        "POST", "/v1/chat/completions", headers=AUTH, json=stream_body("SCENARIO=stream_hang")
    ) as resp:
        async for chunk in resp.aiter_raw():
            raw += chunk
            if b"Hello!" in raw and not proxy.lifecycle.finalize_now.is_set():
                proxy.lifecycle.finalize()  # the drain deadline passes mid-answer
    text, finish, usage = checked(raw)
    assert (text, finish) == ("Hello! This is", "length") and usage is not None
    await threads_cleaned(proxy, record, count=1)


# ----------------------------------------------------------------------------- many at once


async def paced_streams(proxy: Proxy, count: int, *, first: int,
                        after_each: Callable[[], None] = lambda: None) -> None:
    """``count`` streams at once, the i-th of ``first + i`` words; each must come back whole
    (``w0 w1 …``) with ``stop``. ``after_each`` runs as each one ends."""
    results: dict[int, tuple[str, str | None]] = {}

    async def one(i: int) -> None:
        async with proxy.client() as client:
            _, raw = await read_stream(
                client, "/v1/chat/completions",
                stream_body(f"SCENARIO=paced DELTAS={first + i} DELAY_MS=5"))
        after_each()
        text, finish, _ = checked(raw)
        results[i] = (text, finish)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    for i in range(count):
        expected = "".join(["w0", *(f" w{k}" for k in range(1, first + i))])
        assert results[i] == (expected, "stop"), i


async def test_concurrent_turns_route_by_thread(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy, record = await app_proxy(start_proxy, tmp_path, workers=2, worker_max_turns=16)
    await paced_streams(proxy, 20, first=5)
    await threads_cleaned(proxy, record, count=20)
    assert len({line["_worker"] for line in record.lines()}) == 2  # both workers took turns


async def test_full_workers_answer_429(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy, _ = await app_proxy(start_proxy, tmp_path, workers=1, worker_max_turns=2)
    statuses: list[int] = []
    async with proxy.client() as client, trio.open_nursery() as nursery:

        async def hold() -> None:
            await client.post("/v1/chat/completions", headers=AUTH,
                              json=chat_body("SCENARIO=slow DELTAS=40 DELAY_MS=50"))

        nursery.start_soon(hold)
        nursery.start_soon(hold)
        await proxy.state.service.running.wait_value(2)
        resp = await client.post("/v1/chat/completions", headers=AUTH, json=chat_body("hi"))
        statuses.append(resp.status_code)
        assert resp.json()["error"]["code"] == "concurrency_exceeded"
    assert statuses == [429]


async def test_requests_queued_at_a_full_worker_all_get_their_turn(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    """Room for one turn wakes one queued request (not all of them): no wake may be lost, so
    twelve requests through a worker that carries two at a time are all answered in full, and
    the worker never carries more than two."""
    proxy, record = await app_proxy(start_proxy, tmp_path, workers=1, worker_max_turns=2,
                                    queue_timeout_ms=600_000)
    pool = backend(proxy)
    loads: list[int] = []

    def look() -> None:
        loads.extend(worker.load for worker in pool.workers())

    with trio.fail_after(60):  # a lost wake leaves a request waiting for the queue timeout
        await paced_streams(proxy, 12, first=3, after_each=look)
    assert loads and max(loads) <= 2
    await threads_cleaned(proxy, record, count=12)


async def test_a_stalled_client_stalls_nobody_else(start_proxy: StartProxy, tmp_path: Path) -> None:
    """One worker; a client that stops reading a huge stream. Others on the same worker are
    answered meanwhile; the stalled turn's buffer passes its cap and that turn alone is cut."""
    proxy, record = await app_proxy(start_proxy, tmp_path, workers=1,
                                    turn_buffer_bytes=256 * 1024)
    async with proxy.client() as client, client.stream(
        "POST", "/v1/chat/completions", headers=AUTH,
        json=stream_body("SCENARIO=burst DELTAS=200000"),
    ) as stalled:
        chunks = stalled.aiter_raw()
        await chunks.__anext__()  # the headers and the role chunk; then stop reading
        with trio.fail_after(60):
            while not any(  # noqa: ASYNC110 - progress of another process
                w.stats["lines"] > 50_000 for w in backend(proxy).workers()
            ):
                await trio.sleep(0.01)
        for _ in range(3):
            resp = await client.post("/v1/chat/completions", json=chat_body("hi"), headers=AUTH)
            assert resp.json()["choices"][0]["message"]["content"] == NORMAL_TEXT
        rest = b"".join([chunk async for chunk in chunks])
    text, finish, _ = contract.collect_stream_content(rest)
    assert finish == "length" and text  # cut with text in hand
    await threads_cleaned(proxy, record, count=4)


def test_route_buffer_cap_cuts_only_its_turn() -> None:
    """Sans-io view of the same rule: pushing past the cap closes the route with OVERFLOW."""

    class _Worker:
        name = "w0.1"

    route = ThreadRoute(worker=_Worker(), thread_id="t", translator=TurnTranslator(),  # type: ignore[arg-type]
                        tool_thread=False, cap_bytes=1000)
    note = Notification("item/agentMessage/delta",
                        {"threadId": "t", "turnId": "u", "itemId": "i", "delta": "x"})
    for _ in range(10):
        route.push(note, 90)
    assert route.end is None
    route.push(note, 200)
    assert route.end is End.OVERFLOW


# ----------------------------------------------------------------------------- worker failures


async def test_worker_crash_mid_turn_then_restart(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy, record = await app_proxy(start_proxy, tmp_path, workers=1,
                                    worker_backoff_initial_ms=50)
    first = set(proxy.pids())
    async with proxy.client() as client:
        _, raw = await read_stream(client, "/v1/chat/completions",
                                   stream_body("SCENARIO=worker_crash DELTAS=3"))
        text, finish, usage = checked(raw)
        assert (text, finish) == ("Hello! This is", "length") and usage is not None
        await proxy.wait_ready()
        # No text yet when the worker dies: 502 worker_exited (the worker is killed while the
        # turn waits in silence, so the order cannot race).
        async with trio.open_nursery() as nursery:
            answers: list[httpx.Response] = []

            async def silent() -> None:
                answers.append(await client.post("/v1/chat/completions", headers=AUTH,
                                                 json=chat_body("SCENARIO=hang")))

            nursery.start_soon(silent)
            await proxy.state.service.running.wait_value(1)
            with trio.fail_after(20):
                while len(record.calls("turn/start")) < 2:  # noqa: ASYNC110 - the fake's file
                    await trio.sleep(0.01)
            (worker,) = [w for w in backend(proxy).workers() if w.accepting]
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
        (answer,) = answers
        assert answer.status_code == 502 and answer.json()["error"]["code"] == "worker_exited"
        await proxy.wait_ready()
        resp = await client.post("/v1/chat/completions", json=chat_body("hi"), headers=AUTH)
    assert resp.json()["choices"][0]["message"]["content"] == NORMAL_TEXT
    assert not any(pid_alive(pid) for pid in first)
    assert len(proxy.pids()) == 3  # the first worker, its replacement, and the next one
    assert backend(proxy).restarts.get("crashed", 0) == 2


async def test_a_worker_whose_process_exited_takes_no_new_turn(
    start_proxy: StartProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moment a crashed worker's turns are ended, the worker no longer accepts turns.

    Otherwise a request arriving before the worker's own shutdown had run could be leased to
    the dead process (the pool picks the least busy accepting worker, and the dead one may be
    it) and fail there while another worker could have served it. The check runs inside
    ``ThreadRoute.close`` itself, so it does not depend on how the tasks are scheduled.
    """
    proxy, _ = await app_proxy(start_proxy, tmp_path, workers=1, worker_backoff_initial_ms=50)
    pool = backend(proxy)
    seen: list[tuple[bool, bool]] = []
    close = ThreadRoute.close

    def watching_close(route: ThreadRoute, why: End | None) -> None:
        if why is End.WORKER_EXIT:
            seen.append((route.worker.accepting, pool._pick() is route.worker))
        close(route, why)

    monkeypatch.setattr(ThreadRoute, "close", watching_close)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", headers=AUTH,
                                 json=chat_body("SCENARIO=worker_crash"))
    assert resp.json()["choices"][0]["finish_reason"] == "length"
    assert seen == [(False, False)]


async def test_unhealthy_worker_is_replaced(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy, _ = await app_proxy(start_proxy, tmp_path, workers=1,
                               worker_health_interval_ms=100, worker_rpc_timeout_ms=300,
                               worker_backoff_initial_ms=50)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", headers=AUTH,
                                 json=chat_body("SCENARIO=worker_freeze"))
        assert resp.status_code == 502 and resp.json()["error"]["code"] == "worker_exited"
        await proxy.wait_ready()
        again = await client.post("/v1/chat/completions", json=chat_body("hi"), headers=AUTH)
    assert again.status_code == 200
    assert backend(proxy).restarts.get("unhealthy", 0) == 1


async def test_handshake_timeout_is_reported_by_readyz(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy = await start_proxy(child_env={"FAKE_APP_INIT_DELAY_MS": "5000"}, backend="app-server",
                              workers=1, worker_handshake_timeout_ms=100,
                              worker_backoff_initial_ms=5000)
    async with proxy.client() as client:
        with trio.fail_after(20):
            while "restarting" not in (await client.get("/readyz")).text:  # noqa: ASYNC110
                await trio.sleep(0.02)
        ready = await client.get("/readyz")
        resp = await client.post("/v1/chat/completions", json=chat_body("hi"), headers=AUTH)
    assert ready.status_code == 503
    assert "initialize failed" in ready.json()["reasons"][0]
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "backend_unavailable"


async def test_worker_is_recycled_after_max_requests(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy, record = await app_proxy(start_proxy, tmp_path, workers=1, worker_max_requests=3)
    async with proxy.client() as client:
        for _ in range(3):
            resp = await client.post("/v1/chat/completions", json=chat_body("hi"), headers=AUTH)
            assert resp.status_code == 200
        await proxy.wait_ready()
        resp = await client.post("/v1/chat/completions", json=chat_body("hi"), headers=AUTH)
        assert resp.status_code == 200
    await threads_cleaned(proxy, record, count=4)
    pids = proxy.pids()
    assert len(pids) == 2
    workers = [line["_worker"] for line in record.calls("turn/start")]
    assert workers[:3] == [workers[0]] * 3 and workers[3] != workers[0]
    with trio.fail_after(20):
        while pid_alive(int(workers[0])):  # noqa: ASYNC110 - the old worker ends on its own
            await trio.sleep(0.01)
    assert backend(proxy).restarts.get("recycled") == 1


async def test_server_requests_are_answered(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy, record = await app_proxy(start_proxy, tmp_path)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", headers=AUTH,
                                 json=chat_body("SCENARIO=approval"))
    assert resp.json()["choices"][0]["message"]["content"] == NORMAL_TEXT
    answers = [line for line in record.lines() if "result" in line or "error" in line]
    assert [a.get("result") for a in answers] == [{"decision": "decline"}]


async def test_unsupported_codex_release_stops_start_up(
    start_proxy: StartProxy, fast_fake_app: Path
) -> None:
    from quartproxy.backends import StartupError

    with pytest.raises(StartupError, match=r"0\.50\.0 is not supported.*0\.100\.0"):
        await start_proxy(child_env={"FAKE_CODEX_VERSION": "0.50.0"}, backend="auto",
                          codex_bin=str(fast_fake_app))


async def test_auto_picks_app_server_from_the_version(
    start_proxy: StartProxy, tmp_path: Path, fast_fake_app: Path
) -> None:
    proxy = await start_proxy(backend="auto", codex_bin=str(fast_fake_app))
    await proxy.wait_ready()
    async with proxy.client() as client:
        ready = await client.get("/readyz")
    assert ready.json() == {"ok": True, "backend": "app-server", "codex_version": "0.169.0"}


# ----------------------------------------------------------------------------- function calling


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time.",
                                      "parameters": {"type": "object", "properties": {
                                          "tz": {"type": "string"}}}}},
]


async def test_tool_loop_through_the_fake(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy, record = await app_proxy(start_proxy, tmp_path)
    body = chat_body("weather? SCENARIO=tool_calls_parallel", tools=TOOLS)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", headers=AUTH, json=body)
        _, raw = await read_stream(client, "/v1/chat/completions",
                                   {**body, "stream": True, "stream_options": USAGE})
        doc = resp.json()
        calls = doc["choices"][0]["message"]["tool_calls"]
        follow = dict(body)
        follow["messages"] = [
            *body["messages"],
            {"role": "assistant", "content": None, "tool_calls": calls},
            *({"role": "tool", "tool_call_id": c["id"], "content": f"out-{i}"}
              for i, c in enumerate(calls)),
        ]
        answer = await client.post("/v1/chat/completions", headers=AUTH, json=follow)
    contract.assert_valid(contract.check_chat_json(doc))
    assert doc["choices"][0]["finish_reason"] == "tool_calls"
    assert doc["choices"][0]["message"]["content"] is None
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=True))
    assert contract.collect_stream_content(raw)[1] == "tool_calls"
    text = answer.json()["choices"][0]["message"]["content"]
    assert "out-0" in text and "out-1" in text
    await threads_cleaned(proxy, record, count=3)
    starts = record.calls("thread/start")
    assert [t["name"] for t in starts[0]["params"]["dynamicTools"]] == ["get_weather", "get_time"]
    assert starts[0]["params"]["experimentalRawEvents"] is True
    (init,) = record.calls("initialize")
    assert init["params"]["capabilities"]["experimentalApi"] is True
    # The calls were never answered: the threads were deleted instead.
    assert not [line for line in record.lines() if "result" in line or "error" in line]
    injected = record.calls("thread/inject_items")[-1]["params"]["items"]
    assert [i["type"] for i in injected] == [
        "message", "function_call", "function_call", "function_call_output",
        "function_call_output"]



async def test_unforceable_tool_choice_is_logged_when_not_honoured(
    start_proxy: StartProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy, _ = await app_proxy(start_proxy, tmp_path)
    caplog.set_level("INFO", logger="quartproxy")
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", headers=AUTH, json=chat_body(
            "hi", tools=TOOLS, tool_choice="required"))
    assert resp.json()["choices"][0]["finish_reason"] == "stop"  # text, no call: best effort
    with trio.fail_after(30):  # the usage record is written after the turn's log lines
        await proxy.state.usage_log.written.wait_value(lambda n: n >= 1)
    assert any("tool_choice_not_honoured" in r.getMessage() for r in caplog.records)
