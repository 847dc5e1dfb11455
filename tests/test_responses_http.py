"""``POST /v1/responses`` over real loopback HTTP with real fake-codex children.

Every path the chat stream has (truncation, deadlines, max tokens, codex errors, retries,
shutdown, disconnect, keepalive, admission) is run here as a Responses request; every body is
checked with the contract checker and the openai SDK's strict models, and stream and non-stream
renderings of the same child output are compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from quartproxy import contract
from quartproxy.observability import read_usage

from .conftest import AUTH, Proxy, StartProxy, read_stream
from .responses_support import sdk_accumulate, sdk_events, sdk_response

pytestmark = pytest.mark.trio

PATH = "/v1/responses"
NORMAL_TEXT = "Hello! This is a streamed answer from the fake upstream."


def body(prompt: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "codex-5", "input": prompt, **extra}


def checked_json(resp: httpx.Response, model: str = "codex-5") -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    contract.assert_valid(contract.check_responses_json(resp.content, model=model))
    sdk_response(resp.content)
    doc: dict[str, Any] = resp.json()
    return doc


def checked_stream(raw: bytes, model: str = "codex-5") -> contract.ResponsesTranscript:
    contract.assert_valid(contract.check_responses_stream(raw, model=model))
    sdk_events(raw)
    transcript = contract.collect_responses_stream(raw)
    assert transcript.response is not None
    return transcript


def envelope(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    contract.assert_valid(contract.check_error_json(resp.content))
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == code, error
    return error


async def both(proxy: Proxy, prompt: str, **extra: Any) -> tuple[
    contract.ResponsesTranscript, httpx.Response
]:
    """The same prompt as a stream and as a non-stream request."""
    async with proxy.client() as client:
        resp, raw = await read_stream(client, PATH, body(prompt, stream=True, **extra))
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        single = await client.post(PATH, json=body(prompt, **extra), headers=AUTH)
    return checked_stream(raw), single


async def usage_records(proxy: Proxy, count: int) -> list[dict[str, Any]]:
    await proxy.wait_idle()
    with trio.fail_after(10):
        await proxy.state.usage_log.written.wait_value(lambda written: written >= count)
    return read_usage(proxy.settings.token_log_path)


# ---------------------------------------------------------------------------- the answer


async def test_nonstream_response(proxy: Proxy) -> None:
    async with proxy.client() as client:
        resp = await client.post(PATH, json=body(metadata={"run": "1"}, user="u"), headers=AUTH)
    doc = checked_json(resp)
    assert doc["status"] == "completed" and doc["model"] == "codex-5"
    assert doc["id"].startswith("resp_") and doc["output"][0]["id"].startswith("msg_")
    assert sdk_response(resp.content).output_text == NORMAL_TEXT
    assert doc["usage"]["input_tokens"] == 1200 and doc["usage"]["output_tokens"] == 14
    assert doc["usage"]["total_tokens"] == 1214
    assert doc["metadata"] == {"run": "1"} and doc["user"] == "u" and doc["store"] is False
    records = await usage_records(proxy, 1)
    assert records[0]["route"] == PATH and records[0]["finish_reason"] == "stop"
    assert records[0]["prompt_tokens"] == 1200


async def test_stream_response(proxy: Proxy) -> None:
    async with proxy.client() as client:
        resp, raw = await read_stream(client, PATH, body(stream=True))
    assert resp.headers["cache-control"] == "no-cache, no-transform"
    assert resp.headers["x-accel-buffering"] == "no"
    transcript = checked_stream(raw)
    assert transcript.text == NORMAL_TEXT and transcript.terminal == "response.completed"
    assert transcript.usage is not None and transcript.usage["total_tokens"] == 1214
    assert b"[DONE]" not in raw and raw.endswith(b"\n\n")
    types, final = sdk_accumulate(raw)
    assert final is not None and final.output_text == NORMAL_TEXT
    assert types.count("response.output_text.delta") == 10
    await proxy.wait_idle()


async def test_stream_and_json_agree(proxy: Proxy) -> None:
    transcript, single = await both(proxy, "SCENARIO=normal")
    doc = checked_json(single)
    assert transcript.response is not None
    assert transcript.usage == doc["usage"] and transcript.status == doc["status"]
    assert contract.response_output_text(transcript.response) == transcript.text == (
        contract.response_output_text(doc))


async def test_end_of_stream_leaves_in_one_write(proxy: Proxy) -> None:
    """At task_complete the done events and response.completed are one socket write."""
    writes: list[bytes] = []
    async with proxy.client() as client, client.stream(
        "POST", PATH, headers=AUTH, json=body("SCENARIO=slow DELTAS=3 DELAY_MS=30", stream=True)
    ) as resp:
        async for chunk in resp.aiter_raw():
            writes.append(chunk)
    checked_stream(b"".join(writes))
    last = writes[-1]
    for event in (b"output_text.done", b"content_part.done", b"output_item.done", b"completed"):
        assert b"event: response." + event + b"\n" in last, event
    assert last.endswith(b"\n\n")


async def test_instructions_and_items_reach_the_child(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    record.mkdir()
    proxy = await start_proxy(child_env={"FAKE_CODEX_RECORD": str(record)})
    request = body(instructions="Be brief.", input=[
        {"role": "developer", "content": "dev"},
        {"role": "user", "content": [{"type": "input_text", "text": "look"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "ok", "annotations": []}]},
        {"role": "user", "content": "again"},
    ])
    async with proxy.client() as client:
        resp = await client.post(PATH, json=request, headers=AUTH)
    checked_json(resp)
    await proxy.wait_idle()
    (recorded,) = [json.loads(p.read_text()) for p in record.glob("*.json")]
    text = json.loads(recorded["stdin_lines"][0])["op"]["items"][0]["text"]
    assert text == "[system] Be brief.\n[developer] dev\n[user] look\n[assistant] ok\n[user] again"


async def test_effort_alias_and_reasoning_effort_reach_the_child(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    record.mkdir()
    proxy = await start_proxy(child_env={"FAKE_CODEX_RECORD": str(record)})
    async with proxy.client() as client:
        resp = await client.post(PATH, json=body(model="codex-5-low",
                                                 reasoning={"effort": "high"}), headers=AUTH)
    doc = checked_json(resp, model="codex-5-low")
    assert doc["reasoning"] == {"effort": "high", "summary": None}
    await proxy.wait_idle()
    (recorded,) = [json.loads(p.read_text()) for p in record.glob("*.json")]
    assert '-c' in recorded["argv"] and 'model_reasoning_effort="high"' in recorded["argv"]


async def test_reasoning_item(proxy: Proxy) -> None:
    transcript, single = await both(proxy, "SCENARIO=reasoning")
    doc = checked_json(single)
    assert [item["type"] for item in doc["output"]] == ["reasoning", "message"]
    assert doc["output"][0]["summary"] and all(
        part["type"] == "summary_text" and part["text"] for part in doc["output"][0]["summary"])
    assert doc["usage"]["input_tokens_details"]["cached_tokens"] == 1024
    assert doc["usage"]["output_tokens_details"]["reasoning_tokens"] == 64
    assert contract.response_output_text(doc) == "Hello there! Reasoned answer."
    assert transcript.response is not None
    assert [item["summary"] for item in transcript.response["output"][:1]] == [
        doc["output"][0]["summary"]]
    assert transcript.text == "Hello there! Reasoned answer."
    assert "response.reasoning_summary_text.delta" in transcript.types()


# ---------------------------------------------------------------------------- cut answers


@pytest.mark.parametrize(
    ("prompt", "overrides", "status"),
    [
        ("SCENARIO=normal", {}, "completed"),
        ("SCENARIO=no_complete", {}, "incomplete"),
        ("SCENARIO=stream_hang", {"timeout_ms": 400}, "incomplete"),
        ("SCENARIO=stream_hang", {"stream_idle_timeout_ms": 300, "proto_idle_ms": 300},
         "incomplete"),
        ("SCENARIO=long", {"_max": 5}, "incomplete"),
        ("SCENARIO=error_after_text", {}, "incomplete"),
        ("SCENARIO=finish_length", {}, "incomplete"),
        ("SCENARIO=incomplete", {}, "incomplete"),
        ("SCENARIO=tool", {}, "completed"),
        ("SCENARIO=unicode", {}, "completed"),
        ("SCENARIO=message_only", {}, "completed"),
        ("SCENARIO=empty", {}, "completed"),
        ("SCENARIO=noise", {}, "completed"),
    ],
    ids=["task_complete", "truncation", "timeout", "idle", "max_output_tokens",
         "error_after_text", "carried_length", "incomplete_replays", "codex_tools", "unicode",
         "message_only", "empty", "noise"],
)
async def test_every_ending_agrees_in_both_renderings(
    start_proxy: StartProxy, prompt: str, overrides: dict[str, Any], status: str
) -> None:
    max_output = overrides.pop("_max", None)
    proxy = await start_proxy(**overrides)
    extra = {"max_output_tokens": max_output} if max_output else {}
    transcript, single = await both(proxy, prompt, **extra)
    doc = checked_json(single)
    assert transcript.status == doc["status"] == status
    reason = {"reason": "max_output_tokens"} if status == "incomplete" else None
    assert doc["incomplete_details"] == reason
    assert transcript.response is not None
    assert transcript.response["incomplete_details"] == reason
    assert contract.response_output_text(doc) == transcript.text
    assert transcript.usage == doc["usage"]
    expected = "response.incomplete" if status == "incomplete" else "response.completed"
    assert transcript.terminal == expected
    await proxy.wait_idle()


async def test_truncation_text_and_estimated_usage(proxy: Proxy) -> None:
    transcript, single = await both(proxy, "SCENARIO=no_complete")
    assert transcript.text == "Hello! This is" == contract.response_output_text(single.json())
    assert transcript.usage is not None and transcript.usage["output_tokens"] == 4  # estimated


async def test_max_output_tokens_cuts_and_ends_the_child(proxy: Proxy) -> None:
    transcript, single = await both(proxy, "SCENARIO=long", max_output_tokens=10)
    doc = checked_json(single)
    assert len(contract.response_output_text(doc)) == 40 == len(transcript.text)
    assert doc["max_output_tokens"] == 10
    assert doc["output"][0]["status"] == "incomplete"
    await proxy.wait_idle()


# ---------------------------------------------------------------------------- failures


async def test_codex_error_before_text(proxy: Proxy) -> None:
    transcript, single = await both(proxy, "SCENARIO=error")
    error = envelope(single, 400, "context_length_exceeded")
    assert transcript.terminal == "response.failed"
    assert transcript.response is not None
    assert transcript.response["error"] == {"code": "context_length_exceeded",
                                            "message": error["message"]}
    assert transcript.response["output"] == [] and transcript.usage is not None


async def test_crash_before_text(proxy: Proxy) -> None:
    transcript, single = await both(proxy, "SCENARIO=crash_immediately")
    envelope(single, 502, "backend_error")
    assert transcript.response is not None
    assert transcript.response["error"]["code"] == "backend_error"


async def test_request_timeout_without_text(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(timeout_ms=300)
    transcript, single = await both(proxy, "SCENARIO=hang")
    assert envelope(single, 504, "request_timeout")
    assert transcript.response is not None
    assert transcript.response["error"]["code"] == "request_timeout"
    assert transcript.response["status"] == "failed"
    await proxy.wait_idle()


async def test_idle_timeout_without_text(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(proto_idle_ms=300, stream_idle_timeout_ms=300)
    transcript, single = await both(proxy, "SCENARIO=hang")
    envelope(single, 504, "idle_timeout")
    assert transcript.response is not None
    assert transcript.response["error"]["code"] == "idle_timeout"


async def test_retry_divergence_fails_the_stream(proxy: Proxy) -> None:
    async with proxy.client() as client:
        _, raw = await read_stream(client, PATH, body("SCENARIO=retry_diverge", stream=True))
        single = await client.post(PATH, json=body("SCENARIO=retry_diverge"), headers=AUTH)
    transcript = checked_stream(raw)
    assert transcript.text == "This stream will be"
    assert transcript.terminal == "response.failed"
    assert transcript.response is not None
    assert transcript.response["error"]["code"] == "upstream_retry_diverged"
    assert transcript.response["output"][0]["status"] == "incomplete"
    types, final = sdk_accumulate(raw)
    assert types[-1] == "response.failed" and final is None
    # Non-stream never showed the abandoned attempt: it answers with the retry.
    assert contract.response_output_text(checked_json(single)) == NORMAL_TEXT


@pytest.mark.parametrize("scenario", ["retry_replay", "retry_08"])
async def test_retry_replay_never_duplicates(proxy: Proxy, scenario: str) -> None:
    transcript, single = await both(proxy, f"SCENARIO={scenario}")
    assert transcript.text == NORMAL_TEXT == contract.response_output_text(checked_json(single))


async def test_spawn_failure_is_503(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy = await start_proxy(codex_bin=str(tmp_path / "missing" / "codex"))
    async with proxy.client() as client:
        for stream in (False, True):
            resp = await client.post(PATH, json=body(stream=stream), headers=AUTH)
            assert "CODEX_BIN" in envelope(resp, 503, "backend_unavailable")["message"]
    assert proxy.state.admission.occupancy.turns == 0


async def test_concurrency_limit_is_429(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(max_concurrency=1, proto_idle_ms=60_000)
    async with proxy.client() as client, trio.open_nursery() as nursery:
        first: list[httpx.Response] = []

        async def hold() -> None:
            first.append(await client.post(PATH, json=body("SCENARIO=hang"), headers=AUTH))

        nursery.start_soon(hold)
        await proxy.state.service.running.wait_value(1)
        second = await client.post(PATH, json=body(), headers=AUTH)
        envelope(second, 429, "concurrency_exceeded")
        proxy.lifecycle.finalize()  # end the held request
    envelope(first[0], 503, "shutting_down")


# ---------------------------------------------------------------------------- timers, shutdown


async def test_keepalive_comments(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(sse_keepalive_ms=50, stream_idle_timeout_ms=600)
    async with proxy.client() as client:
        _, raw = await read_stream(client, PATH, body("SCENARIO=stream_hang", stream=True))
        _, opted_out = await read_stream(client, PATH, body("SCENARIO=stream_hang", stream=True),
                                         headers={"X-No-Keepalive": "1"})
    comments = [c for ev in contract.parse_responses_sse(raw) for c in ev.comments]
    assert comments and all(c.startswith(": keepalive ") for c in comments)
    assert checked_stream(raw).terminal == "response.incomplete"
    assert not [c for ev in contract.parse_responses_sse(opted_out) for c in ev.comments]
    assert checked_stream(opted_out).terminal == "response.incomplete"


async def test_finalize_ends_the_stream_incomplete_with_usage(proxy: Proxy) -> None:
    chunks: list[bytes] = []
    async with proxy.client() as client, client.stream(
        "POST", PATH, headers=AUTH, json=body("SCENARIO=stream_hang", stream=True)
    ) as resp:
        async for chunk in resp.aiter_raw():
            chunks.append(chunk)
            # stream_hang sends exactly three deltas and then nothing: finalize after the third.
            if b'"delta":" is"' in b"".join(chunks) and not proxy.lifecycle.finalize_now.is_set():
                proxy.lifecycle.finalize()
    transcript = checked_stream(b"".join(chunks))
    assert transcript.text == "Hello! This is" and transcript.terminal == "response.incomplete"
    assert transcript.usage is not None
    await proxy.wait_idle()


async def test_finalize_without_text_nonstream_is_503(proxy: Proxy) -> None:
    async with proxy.client() as client, trio.open_nursery() as nursery:
        result: list[httpx.Response] = []

        async def ask() -> None:
            result.append(await client.post(PATH, json=body("SCENARIO=hang"), headers=AUTH))

        nursery.start_soon(ask)
        await proxy.state.service.running.wait_value(1)
        proxy.lifecycle.finalize()
    envelope(result[0], 503, "shutting_down")


async def test_disconnect_ends_the_child_and_records_usage(proxy: Proxy) -> None:
    request = body("SCENARIO=slow DELTAS=200 DELAY_MS=50", stream=True)
    async with proxy.client() as client, client.stream(
        "POST", PATH, headers=AUTH, json=request
    ) as resp:
        async for chunk in resp.aiter_raw():
            if b"response.output_text.delta" in chunk:
                break  # leave mid-stream
    records = await usage_records(proxy, 1)
    assert records[0]["outcome"] == "client_disconnect" and records[0]["stream"] is True
    assert records[0]["child_exit"] in ("sigterm", "exited")
    assert proxy.state.admission.occupancy.turns == 0
    assert proxy.state.admission.occupancy.streams == 0


# ---------------------------------------------------------------------------- HTTP surface


async def test_head_probe_auth_and_bad_bodies(proxy: Proxy) -> None:
    async with proxy.client() as client:
        head = await client.head(PATH)
        no_key = await client.post(PATH, json=body())
        wrong = await client.get(PATH)
        not_json = await client.post(PATH, content=b"{nope", headers={
            **AUTH, "Content-Type": "application/json"})
        stored = await client.post(PATH, json=body(previous_response_id="resp_x"), headers=AUTH)
        image = await client.post(PATH, json=body(input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://x/y.png"}]}]), headers=AUTH)
        unknown_model = await client.post(PATH, json=body(model="gpt-4o"), headers=AUTH)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("application/json")
    envelope(no_key, 401, "invalid_api_key")
    envelope(wrong, 405, "method_not_allowed")
    envelope(not_json, 400, "invalid_json")
    assert envelope(stored, 400, "unsupported_parameter")["param"] == "previous_response_id"
    assert envelope(image, 400, "unsupported_parameter")["param"] == "input[0].content[0].type"
    envelope(unknown_model, 404, "model_not_found")
    assert proxy.pids() == [], "a rejected request must not spawn a child"


async def test_tools_and_structured_output_on_proto_are_400(proxy: Proxy) -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    schema = {"type": "json_schema", "name": "a", "schema": {"type": "object"}}
    async with proxy.client() as client:
        with_tools = await client.post(PATH, json=body(tools=tools), headers=AUTH)
        with_schema = await client.post(PATH, json=body(text={"format": schema}), headers=AUTH)
        choice_none = await client.post(PATH, json=body(tools=tools, tool_choice="none"),
                                        headers=AUTH)
    assert envelope(with_tools, 400, "unsupported_parameter")["param"] == "tools"
    assert envelope(with_schema, 400, "unsupported_parameter")["param"] == "text.format"
    # tool_choice none asks for no call: served without tools, tools still echoed.
    doc = checked_json(choice_none)
    assert doc["tools"][0]["name"] == "get_weather" and doc["tool_choice"] == "none"


async def test_tools_ignore_mode_flattens_tool_history(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    record.mkdir()
    proxy = await start_proxy(tools_mode="ignore", child_env={"FAKE_CODEX_RECORD": str(record)})
    request = body(tools=[{"type": "function", "name": "f"}], input=[
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ])
    async with proxy.client() as client:
        resp = await client.post(PATH, json=request, headers=AUTH)
    checked_json(resp)
    await proxy.wait_idle()
    (recorded,) = [json.loads(p.read_text()) for p in record.glob("*.json")]
    text = json.loads(recorded["stdin_lines"][0])["op"]["items"][0]["text"]
    assert text == "[user] go\n[assistant] [tool_call c1] f({})\n[user] [tool result c1] 42"


async def test_disabled_route_is_404(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(enable_responses=False)
    async with proxy.client() as client:
        resp = await client.post(PATH, json=body(), headers=AUTH)
        chat = await client.post("/v1/chat/completions", json={
            "model": "codex-5", "messages": [{"role": "user", "content": "hi"}]}, headers=AUTH)
    envelope(resp, 404, "not_found")
    assert chat.status_code == 200


async def test_prompt_guard(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(max_prompt_tokens=10)
    async with proxy.client() as client:
        resp = await client.post(PATH, json=body("word " * 100), headers=AUTH)
    assert envelope(resp, 400, "context_length_exceeded")["param"] == "input"


@pytest.mark.parametrize("backend", ["app-server", "proto"])
async def test_demo_backend(start_proxy: StartProxy, backend: str) -> None:
    proxy = await start_proxy(demo=True, backend=backend, codex_bin="definitely-not-installed")
    transcript, single = await both(proxy, "ping")
    doc = checked_json(single)
    text = contract.response_output_text(doc)
    assert "demo backend" in text and "\u201cping\u201d" in text
    assert transcript.text == text and transcript.terminal == "response.completed"
    assert doc["usage"]["output_tokens"] == math.ceil(len(text) / 4)
    assert transcript.usage == doc["usage"]
    async with proxy.client() as client:
        items = await client.post(PATH, headers=AUTH, json=body(input=[
            {"role": "user", "content": "an earlier question"},
            {"role": "assistant", "content": "an earlier answer"},
            {"role": "user", "content": [{"type": "input_text", "text": "the latest one"}]}]))
    assert "\u201cthe latest one\u201d" in contract.response_output_text(checked_json(items))
    records = await usage_records(proxy, 3)
    assert {record["counts_source"] for record in records} == {"codex"}  # the demo's, not ours
