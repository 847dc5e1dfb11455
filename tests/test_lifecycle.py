"""Completion lifecycle under failure, over real HTTP with real children.

Every stream read here is run through the contract checker. The timer rules themselves (which
deadline ends a turn, when, with what text) are proved exactly in tests/test_relay_timers.py
under a MockClock. The few timer tests here are integration smoke whose assertions hold however
slow the machine is: a child that never writes an event, and a deadline that is the only thing
able to end it; never "text must arrive before X ms". Anything else that must happen in an
order is made to, with events or a stopped child, not with timing.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from quartproxy import contract
from quartproxy.observability import read_usage

from .conftest import AUTH, Proxy, StartProxy, chat_body, read_stream, repeat_count

pytestmark = pytest.mark.trio

NORMAL_TEXT = "Hello! This is a streamed answer from the fake upstream."
USAGE = {"include_usage": True}


def stream_body(prompt: str, **extra: Any) -> dict[str, Any]:
    return chat_body(prompt, stream=True, stream_options=USAGE, **extra)


def checked(raw: bytes, *, include_usage: bool = True, legacy: bool = False) -> tuple[
    str, str | None, dict[str, Any] | None
]:
    check = contract.check_completion_stream if legacy else contract.check_chat_stream
    contract.assert_valid(check(raw, include_usage=include_usage))
    return contract.collect_stream_content(raw)


async def both(proxy: Proxy, prompt: str, **extra: Any) -> tuple[bytes, httpx.Response]:
    """The same prompt as a stream (raw bytes) and as a non-stream request."""
    async with proxy.client() as client:
        _, raw = await read_stream(client, "/v1/chat/completions", stream_body(prompt, **extra))
        resp = await client.post("/v1/chat/completions", json=chat_body(prompt, **extra),
                                 headers=AUTH)
    return raw, resp


def error_frame(raw: bytes) -> dict[str, Any]:
    frames = [f.json for f in contract.parse_sse(raw) if isinstance(f.json, dict)]
    errors = [f["error"] for f in frames if "error" in f]
    assert len(errors) == 1, raw
    return errors[0]


async def usage_records(proxy: Proxy, count: int) -> list[dict[str, Any]]:
    """The usage log once ``count`` records are in it (the writer is asynchronous by design)."""
    await proxy.wait_idle()
    with trio.fail_after(60):
        await proxy.state.usage_log.written.wait_value(lambda written: written >= count)
    return read_usage(proxy.settings.token_log_path)


# ---------------------------------------------------------------------------- AC2: truncation


@pytest.mark.slow
async def test_truncation_nonstream_is_length_repeatedly(proxy: Proxy) -> None:
    async with proxy.client() as client:
        for _ in range(repeat_count(50)):
            resp = await client.post(
                "/v1/chat/completions", json=chat_body("SCENARIO=no_complete"), headers=AUTH
            )
            assert resp.status_code == 200, resp.text
            contract.assert_valid(contract.check_chat_json(resp.content))
            choice = resp.json()["choices"][0]
            assert choice["finish_reason"] == "length"
            assert choice["message"]["content"] == "Hello! This is"
    await proxy.wait_idle()


@pytest.mark.slow
async def test_truncation_stream_is_length_with_usage_repeatedly(proxy: Proxy) -> None:
    async with proxy.client() as client:
        for _ in range(repeat_count(50)):
            _, raw = await read_stream(client, "/v1/chat/completions",
                                       stream_body("SCENARIO=no_complete"))
            text, finish, usage = checked(raw)
            assert (text, finish) == ("Hello! This is", "length")
            assert usage is not None and usage["completion_tokens"] == 4  # estimated: 14 chars
    await proxy.wait_idle()


async def test_crash_without_text(proxy: Proxy) -> None:
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions",
                                 json=chat_body("SCENARIO=crash_immediately"), headers=AUTH)
        _, raw = await read_stream(client, "/v1/chat/completions",
                                   stream_body("SCENARIO=crash_immediately"))
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "backend_error"
    checked(raw)
    assert error_frame(raw)["code"] == "backend_error"


# ---------------------------------------------------------------------------- AC3: usage timing


async def test_finish_usage_done_leave_in_one_write(proxy: Proxy) -> None:
    """At task_complete the finish chunk, the usage chunk and [DONE] are one socket write."""
    writes: list[bytes] = []
    body = stream_body("SCENARIO=slow DELTAS=3 DELAY_MS=30")
    async with proxy.client() as client, client.stream(
        "POST", "/v1/chat/completions", headers=AUTH, json=body
    ) as resp:
        async for chunk in resp.aiter_raw():
            writes.append(chunk)
    raw = b"".join(writes)
    checked(raw)
    last = writes[-1]
    assert b'"finish_reason":"stop"' in last and b'"usage":{' in last
    assert last.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("prompt", "overrides", "finish"),
    [
        ("SCENARIO=normal", {}, "stop"),
        ("SCENARIO=no_complete", {}, "length"),
        ("SCENARIO=long", {"_max_tokens": 5}, "length"),
        ("SCENARIO=error_after_text", {}, "length"),
        ("SCENARIO=finish_length", {}, "length"),
    ],
    # Deadline endings (total, idle, early finalize, shutdown): tests/test_relay_timers.py.
    ids=["task_complete", "truncation", "max_tokens", "error_after_text", "carried_finish"],
)
async def test_usage_chunk_follows_finish_on_every_path(
    start_proxy: StartProxy, prompt: str, overrides: dict[str, Any], finish: str
) -> None:
    max_tokens = overrides.pop("_max_tokens", None)
    proxy = await start_proxy(**overrides)
    extra = {"max_tokens": max_tokens} if max_tokens else {}
    async with proxy.client() as client:
        _, raw = await read_stream(client, "/v1/chat/completions", stream_body(prompt, **extra))
        resp = await client.post("/v1/chat/completions", json=chat_body(prompt, **extra),
                                 headers=AUTH)
    text, got_finish, usage = checked(raw)
    assert got_finish == finish and usage is not None
    # The same child output gives the same answer in both renderings.
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["finish_reason"] == finish
    assert body["choices"][0]["message"]["content"] == text
    assert body["usage"] == usage
    await proxy.wait_idle()


@pytest.mark.parametrize("shape", ["flat", "nested", "nested_rl", "legacy"])
async def test_codex_counts_in_every_shape(proxy: Proxy, shape: str) -> None:
    async with proxy.client() as client:
        _, raw = await read_stream(client, "/v1/chat/completions",
                                   stream_body(f"SCENARIO=normal TOKENS={shape}"))
    _, _, usage = checked(raw)
    assert usage is not None
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (1200, 14)
    assert usage["total_tokens"] == 1214
    records = await usage_records(proxy, 1)
    assert records[0]["counts_source"] == "codex"


async def test_usage_details_and_estimate(proxy: Proxy) -> None:
    async with proxy.client() as client:
        reasoning = await client.post("/v1/chat/completions",
                                      json=chat_body("SCENARIO=reasoning"), headers=AUTH)
        estimated = await client.post("/v1/chat/completions",
                                      json=chat_body("SCENARIO=normal TOKENS=none"), headers=AUTH)
    usage = reasoning.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 1024
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 64
    assert "Planning" not in reasoning.json()["choices"][0]["message"]["content"]
    est = estimated.json()["usage"]
    assert est["completion_tokens"] == -(-len(NORMAL_TEXT) // 4)
    records = await usage_records(proxy, 2)
    assert sorted(r["counts_source"] for r in records) == ["codex", "estimate"]


# ---------------------------------------------------------------------------- max_tokens


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cuts_and_ends_child(proxy: Proxy, field: str) -> None:
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions",
                                 json=chat_body("SCENARIO=long", **{field: 10}), headers=AUTH)
        _, raw = await read_stream(client, "/v1/chat/completions",
                                   stream_body("SCENARIO=long", **{field: 10}))
    body = resp.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"]) == 40
    text, finish, _ = checked(raw)
    assert (text, finish) == (body["choices"][0]["message"]["content"], "length")
    await proxy.wait_idle()


# ---------------------------------------------------------------------------- codex errors


async def test_codex_error_without_text(proxy: Proxy) -> None:
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body("SCENARIO=error"),
                                 headers=AUTH)
        _, raw = await read_stream(client, "/v1/chat/completions", stream_body("SCENARIO=error"))
    # The fake gives up on a context-window overflow, which is the client's 400.
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("unexpected status 400 Bad Request")
    checked(raw)
    assert error_frame(raw) == error


async def test_codex_error_message_has_no_paths(proxy: Proxy) -> None:
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body("SCENARIO=error_path"),
                                 headers=AUTH)
    message = resp.json()["error"]["message"]
    assert resp.status_code == 502
    assert "/home/" not in message and "config.toml" not in message and "\n" not in message


async def test_codex_08_error_needs_no_task_complete(proxy: Proxy) -> None:
    """0.8.0 prints nothing after `error` and stays alive: answer at the error, not at a timeout."""
    async with proxy.client() as client:
        with trio.fail_after(60):  # a wait for a task_complete that never comes would hang
            resp = await client.post("/v1/chat/completions",
                                     json=chat_body("SCENARIO=error_08"), headers=AUTH)
    assert resp.status_code == 400  # what 0.8 gave up on was a context-window overflow
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    await proxy.wait_idle()


# ---------------------------------------------------------------------------- retries


@pytest.mark.parametrize("scenario", ["retry_replay", "retry_08"])
async def test_retry_replay_never_duplicates(proxy: Proxy, scenario: str) -> None:
    raw, resp = await both(proxy, f"SCENARIO={scenario}")
    text, finish, _ = checked(raw)
    assert (text, finish) == (NORMAL_TEXT, "stop")
    assert resp.json()["choices"][0]["message"]["content"] == NORMAL_TEXT


async def test_diverging_retry(proxy: Proxy) -> None:
    raw, resp = await both(proxy, "SCENARIO=retry_diverge")
    text, finish, usage = checked(raw)
    assert text == "This stream will be" and finish is None and usage is None
    assert error_frame(raw)["code"] == "upstream_retry_diverged"
    # Non-stream never showed the abandoned attempt: it answers with the retry.
    assert resp.json()["choices"][0]["message"]["content"] == NORMAL_TEXT


async def test_incomplete_replays_end_in_length(proxy: Proxy) -> None:
    raw, resp = await both(proxy, "SCENARIO=incomplete")
    text, finish, _ = checked(raw)
    assert finish == "length"
    assert resp.json()["choices"][0]["finish_reason"] == "length"
    assert resp.json()["choices"][0]["message"]["content"] == text


# ---------------------------------------------------------------------------- content shapes


@pytest.mark.parametrize(
    ("scenario", "finish"),
    [("tool", "stop"), ("message_only", "stop"), ("unicode", "stop"), ("noise", "stop"),
     ("stderr_flood", "stop"), ("empty", "stop"), ("multi_chunk", "stop")],
)
async def test_stream_and_nonstream_agree(proxy: Proxy, scenario: str, finish: str) -> None:
    raw, resp = await both(proxy, f"SCENARIO={scenario}")
    text, got, usage = checked(raw)
    body = resp.json()
    assert got == finish == body["choices"][0]["finish_reason"]
    assert text == body["choices"][0]["message"]["content"]
    assert usage == body["usage"]
    if scenario == "tool":
        assert "\n\n" in text  # two assistant messages, a blank line between them


async def test_message_contradicting_deltas(proxy: Proxy) -> None:
    raw, resp = await both(proxy, "SCENARIO=message_mismatch")
    streamed, _, _ = checked(raw)
    answered = resp.json()["choices"][0]["message"]["content"]
    assert streamed and answered and streamed != answered  # stream keeps what it sent


# ---------------------------------------------------------------------------- timers
# Smoke over real children: SCENARIO=hang prints task_started and then nothing, ever, so the
# deadline under test is the only way the request can end, and it ends without answer text
# however long the child took to start. Exact timing and the with-text endings are in
# tests/test_relay_timers.py.


async def test_request_timeout_without_text(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(timeout_ms=300)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body("SCENARIO=hang"),
                                 headers=AUTH)
        _, raw = await read_stream(client, "/v1/chat/completions", stream_body("SCENARIO=hang"))
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "request_timeout"
    assert resp.json()["error"]["type"] == "timeout_error"
    checked(raw)
    assert error_frame(raw)["code"] == "request_timeout"
    await proxy.wait_idle()


async def test_idle_timeout_without_text(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(proto_idle_ms=300, stream_idle_timeout_ms=300)
    async with proxy.client() as client:
        empty = await client.post("/v1/chat/completions", json=chat_body("SCENARIO=hang"),
                                  headers=AUTH)
        _, raw = await read_stream(client, "/v1/chat/completions", stream_body("SCENARIO=hang"))
    assert empty.status_code == 504 and empty.json()["error"]["code"] == "idle_timeout"
    checked(raw)
    assert error_frame(raw)["code"] == "idle_timeout"
    await proxy.wait_idle()


async def test_stderr_is_not_activity(start_proxy: StartProxy) -> None:
    """A child that floods stderr and never writes another event is still idle."""
    proxy = await start_proxy(stream_idle_timeout_ms=300)
    async with proxy.client() as client:
        with trio.fail_after(120):  # hang guard: if stderr counted as activity it never ends
            _, raw = await read_stream(client, "/v1/chat/completions",
                                       stream_body("SCENARIO=stderr_hang DELTAS=0"))
    checked(raw)
    assert error_frame(raw)["code"] == "idle_timeout"


async def test_nonstream_early_finalize(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(nonstream_truncate_after_ms=300)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body("SCENARIO=hang"),
                                 headers=AUTH)
        # Streams are not affected by the non-stream early finalize: this one outlives it and
        # ends at task_complete (the child cannot be faster than its 8 x 100 ms of deltas).
        _, raw = await read_stream(client, "/v1/chat/completions",
                                   stream_body("SCENARIO=slow DELTAS=8 DELAY_MS=100"))
    # The only deadline configured below minutes is the early finalize: it ended the request.
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "request_timeout"
    text, finish, _ = checked(raw)
    assert finish == "stop" and text.startswith("Streaming is")


async def test_keepalive_comments(start_proxy: StartProxy) -> None:
    """Comments arrive on a silent stream, and the stream still ends properly afterwards."""
    proxy = await start_proxy(sse_keepalive_ms=50)
    chunks: list[bytes] = []
    async with proxy.client() as client, client.stream(
        "POST", "/v1/chat/completions", headers=AUTH, json=stream_body("SCENARIO=hang")
    ) as resp:
        async for chunk in resp.aiter_raw():
            chunks.append(chunk)
            # Nothing but the keepalive ticker can put a comment on this stream: wait for two,
            # then end the turn from outside.
            if b"".join(chunks).count(b": keepalive ") >= 2:
                proxy.lifecycle.finalize()
    raw = b"".join(chunks)
    keepalives = [f for f in contract.parse_sse(raw) if f.kind == "comment"]
    assert len(keepalives) >= 2 and all(f.raw.startswith(": keepalive ") for f in keepalives)
    assert checked(raw)[:2] == ("", "length")
    await proxy.wait_idle()


async def test_keepalive_opt_outs(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(sse_keepalive_ms=50, stream_idle_timeout_ms=600)
    body = stream_body("SCENARIO=hang")
    opt_outs = [("/v1/chat/completions", {"X-No-Keepalive": "1"}),
                ("/v1/chat/completions", {"User-Agent": "Mozilla Electron/30"}),
                ("/v1/chat/completions?no_keepalive=1", {})]
    answers: list[bytes] = []
    async with proxy.client() as client, trio.open_nursery() as nursery:
        for path, headers in opt_outs:

            async def one(path: str = path, headers: dict[str, str] = headers) -> None:
                answers.append((await read_stream(client, path, body, headers=headers))[1])

            nursery.start_soon(one)
    assert len(answers) == 3
    for raw in answers:
        assert not [f for f in contract.parse_sse(raw) if f.kind == "comment"]
        checked(raw)
        assert error_frame(raw)["code"] == "idle_timeout"


# ---------------------------------------------------------------------------- shutdown finalize


async def test_finalize_now_ends_streams_with_length_and_usage(proxy: Proxy) -> None:
    chunks: list[bytes] = []
    body = stream_body("SCENARIO=stream_hang")
    async with proxy.client() as client, client.stream(
        "POST", "/v1/chat/completions", headers=AUTH, json=body
    ) as resp:
        async for chunk in resp.aiter_raw():
            chunks.append(chunk)
            # stream_hang sends exactly three deltas and then nothing: finalize after the third.
            if b'" is"' in b"".join(chunks) and not proxy.lifecycle.finalize_now.is_set():
                proxy.lifecycle.finalize()
    text, finish, usage = checked(b"".join(chunks))
    assert (text, finish) == ("Hello! This is", "length") and usage is not None
    await proxy.wait_idle()


async def test_finalize_without_text_nonstream_is_503(proxy: Proxy) -> None:
    async with proxy.client() as client, trio.open_nursery() as nursery:
        result: list[httpx.Response] = []

        async def ask() -> None:
            result.append(await client.post(
                "/v1/chat/completions", json=chat_body("SCENARIO=hang"), headers=AUTH))

        nursery.start_soon(ask)
        await proxy.state.service.running.wait_value(1)
        proxy.lifecycle.finalize()
    assert result[0].status_code == 503
    assert result[0].json()["error"]["code"] == "shutting_down"


# ---------------------------------------------------------------------------- disconnect


async def test_disconnect_ends_child_releases_slot_records_usage(proxy: Proxy) -> None:
    body = stream_body("SCENARIO=slow DELTAS=200 DELAY_MS=50")
    async with proxy.client() as client, client.stream(
        "POST", "/v1/chat/completions", headers=AUTH, json=body
    ) as resp:
        async for chunk in resp.aiter_raw():
            if b"content" in chunk:
                break  # leave mid-stream
    records = await usage_records(proxy, 1)
    assert records[0]["outcome"] == "client_disconnect"
    assert records[0]["child_exit"] in ("sigterm", "exited")
    assert proxy.state.admission.occupancy.turns == 0
    assert proxy.state.admission.occupancy.streams == 0


def requests_finished(proxy: Proxy, status: int) -> float:
    value = proxy.state.metrics.registry.get_sample_value(
        "quartproxy_requests_total", {"route": "/v1/chat/completions", "status": str(status)})
    return value or 0.0


def self_stopping_codex(tmp_path: Path, fast_fake: Path) -> Path:
    """A codex that records its pid and stops itself (SIGSTOP) before it starts."""
    path = tmp_path / "stopping-codex"
    path.write_text(
        "#!/bin/sh\n"
        'echo > "$FAKE_CODEX_PID_DIR/$$"\n'
        "kill -STOP $$\n"
        f'exec "{fast_fake}" "$@"\n'
    )
    path.chmod(0o755)
    return path


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


async def test_disconnect_without_kill_lets_turn_finish(
    start_proxy: StartProxy, tmp_path: Path, fast_fake: Path
) -> None:
    """The order is forced, not hoped for: the child stops itself before it writes anything,
    so its turn cannot end before the server has seen the client leave; then it is resumed."""
    proxy = await start_proxy(kill_on_disconnect=False,
                              codex_bin=str(self_stopping_codex(tmp_path, fast_fake)))
    pid: int | None = None
    try:
        async with proxy.client() as client:
            async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                     json=stream_body("SCENARIO=normal")) as resp:
                assert resp.status_code == 200
                with trio.fail_after(60):  # hang guard; another process's state is polled
                    while not proxy.pids() or process_state(proxy.pids()[0]) != "T":  # noqa: ASYNC110
                        await trio.sleep(0.005)
                pid = proxy.pids()[0]
                # leaving the block without reading: the client goes away mid-stream
            with trio.fail_after(60):  # the server has finished the request (it was counted)
                while requests_finished(proxy, 200) < 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            # The request is over, the turn is not: it keeps its slot until it is done.
            assert proxy.state.service.running.value == 1
            assert proxy.state.admission.occupancy.streams == 1
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
    records = await usage_records(proxy, 1)
    assert records[0]["outcome"] == "client_disconnect", records
    assert records[0]["counts_source"] == "codex" and records[0]["finish_reason"] == "stop", records
    assert proxy.state.admission.occupancy.streams == 0


async def test_child_ended_by_sigterm_after_answer(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(child_kill_grace_ms=200)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert resp.status_code == 200
    records = await usage_records(proxy, 1)
    assert records[0]["child_exit"] == "sigterm"


async def test_sigterm_proof_child_gets_sigkill(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(child_kill_grace_ms=200,
                              child_env={"FAKE_CODEX_SCENARIO": "ignore_sigterm"})
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert resp.status_code == 200 and resp.json()["choices"][0]["finish_reason"] == "stop"
    records = await usage_records(proxy, 1)
    assert records[0]["child_exit"] == "sigkill"


async def test_legacy_stream_failure_paths(proxy: Proxy) -> None:
    async with proxy.client() as client:
        _, truncated = await read_stream(
            client, "/v1/completions",
            {"model": "codex-5", "prompt": "SCENARIO=no_complete", "stream": True,
             "stream_options": USAGE})
        _, failed = await read_stream(
            client, "/v1/completions",
            {"model": "codex-5", "prompt": "SCENARIO=error_path", "stream": True})
    assert checked(truncated, legacy=True)[1] == "length"
    checked(failed, legacy=True, include_usage=False)
    assert json.dumps(error_frame(failed)).count("backend_error") == 1


async def test_crashed_child_stderr_tail_is_logged_not_sent(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="quartproxy")
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions",
                                 json=chat_body("SCENARIO=no_complete"), headers=AUTH)
    await proxy.wait_idle()
    assert "simulated crash" not in resp.text  # the client never sees stderr
    logged = [r.getMessage() for r in caplog.records if "exited early" in r.getMessage()]
    assert logged and "simulated crash before task_complete" in logged[0]
