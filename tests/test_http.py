"""The HTTP surface over real loopback HTTP, with real fake-codex children (issue: core service)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from quartproxy import contract

from .conftest import API_KEY, AUTH, Proxy, StartProxy, chat_body, read_stream

pytestmark = pytest.mark.trio


def assert_envelope(resp: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("x-request-id")
    assert resp.headers.get("access-control-allow-origin") == "*"
    contract.assert_valid(contract.check_error_json(resp.content))
    body: dict[str, Any] = resp.json()
    assert body["error"]["code"] == code, body
    return body


# ---------------------------------------------------------------------------- probes, models


async def test_healthz_and_readyz(proxy: Proxy) -> None:
    async with proxy.client() as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.json() == {"ok": True, "sandbox_mode": "read-only"}
    assert ready.status_code == 200


async def test_readyz_reports_missing_codex(start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy = await start_proxy(codex_bin=str(tmp_path / "nope" / "codex"))
    async with proxy.client() as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert "CODEX_BIN" in " ".join(ready.json()["reasons"])


async def test_models_list_get_head(proxy: Proxy) -> None:
    async with proxy.client() as client:
        listing = await client.get("/v1/models")
        slash = await client.get("/v1/models/")
        one = await client.get("/v1/models/codex-5-high")
        missing = await client.get("/v1/models/gpt-4")
        head = await client.head("/v1/models")
    ids = [m["id"] for m in listing.json()["data"]]
    assert ids == ["codex-5", "codex-5-minimal", "codex-5-low", "codex-5-medium", "codex-5-high"]
    assert listing.json()["object"] == "list"
    assert all(m["owned_by"] == "codex" and m["object"] == "model" for m in listing.json()["data"])
    assert slash.json() == listing.json()
    assert one.json()["id"] == "codex-5-high"
    assert_envelope(missing, 404, "model_not_found")
    assert head.status_code == 200 and head.content == b""


async def test_protected_models_need_auth(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(protect_models=True)
    async with proxy.client() as client:
        anonymous = await client.get("/v1/models")
        authed = await client.get("/v1/models", headers=AUTH)
    assert_envelope(anonymous, 401, "invalid_api_key")
    assert authed.status_code == 200


async def test_dev_env_lists_codev_family(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(env="dev")
    async with proxy.client() as client:
        listing = await client.get("/v1/models")
        chat = await client.post("/v1/chat/completions", json=chat_body(model="CODEX-5"),
                                 headers=AUTH)
    assert listing.json()["data"][0]["id"] == "codev-5"
    assert chat.status_code == 200 and chat.json()["model"] == "CODEX-5"


async def test_head_probes_on_completion_routes(proxy: Proxy) -> None:
    async with proxy.client() as client:
        for path in ("/v1/chat/completions", "/v1/completions"):
            resp = await client.head(path)
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("application/json")
            assert resp.content == b""


# ---------------------------------------------------------------------------- CORS, envelopes


async def test_preflight_and_cors(proxy: Proxy) -> None:
    async with proxy.client() as client:
        pre = await client.options(
            "/v1/chat/completions",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, x-stainless-os"},
        )
        anywhere = await client.options("/no/such/path")
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "https://app.example"
    assert pre.headers["vary"] == "Origin"
    assert pre.headers["access-control-allow-headers"] == "authorization, x-stainless-os"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert pre.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in pre.headers
    assert anywhere.status_code == 204


async def test_cors_allow_list(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(cors_allow_origins="https://good.example")
    async with proxy.client() as client:
        good = await client.get("/healthz", headers={"Origin": "https://good.example"})
        bad = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert good.headers["access-control-allow-origin"] == "https://good.example"
    assert "access-control-allow-origin" not in bad.headers


async def test_cors_disabled(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(enable_cors=False)
    async with proxy.client() as client:
        resp = await client.get("/healthz", headers={"Origin": "https://a.example"})
    assert "access-control-allow-origin" not in resp.headers


async def test_unknown_path_and_wrong_method(proxy: Proxy) -> None:
    async with proxy.client() as client:
        missing = await client.get("/v2/whatever")
        wrong = await client.get("/v1/chat/completions")
        wrong_models = await client.post("/v1/models", json={})
    assert_envelope(missing, 404, "not_found")
    assert_envelope(wrong, 405, "method_not_allowed")
    assert "POST" in wrong.headers["allow"]
    assert_envelope(wrong_models, 405, "method_not_allowed")


async def test_body_over_cap_is_413(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(max_body_bytes=1000)
    async with proxy.client() as client:
        resp = await client.post(
            "/v1/chat/completions", json=chat_body("x" * 5000), headers=AUTH
        )
    assert_envelope(resp, 413, "request_too_large")


async def test_request_id_is_echoed_or_generated(proxy: Proxy) -> None:
    async with proxy.client() as client:
        echoed = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
        replaced = await client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert echoed.headers["x-request-id"] == "abc-123"
    assert replaced.headers["x-request-id"] not in ("", "bad id\twith spaces")


# ---------------------------------------------------------------------------- auth


async def test_auth_failures(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(api_key=f"{API_KEY}, second-key")
    async with proxy.client() as client:
        none = await client.post("/v1/chat/completions", json=chat_body())
        wrong = await client.post("/v1/chat/completions", json=chat_body(),
                                  headers={"Authorization": "Bearer nope"})
        basic = await client.post("/v1/chat/completions", json=chat_body(),
                                  headers={"Authorization": f"Basic {API_KEY}"})
        second = await client.post("/v1/chat/completions", json=chat_body(),
                                   headers={"Authorization": "Bearer second-key"})
    for resp in (none, wrong, basic):
        assert_envelope(resp, 401, "invalid_api_key")
        assert resp.headers["www-authenticate"] == "Bearer realm=api"
        assert resp.json()["error"]["type"] == "authentication_error"
    assert second.status_code == 200


# ---------------------------------------------------------------------------- validation

BAD_BODIES: list[tuple[str, Any, int, str, str | None]] = [
    ("not json", b"{nope", 400, "invalid_json", None),
    ("empty body", b"", 400, "invalid_json", None),
    ("array body", [1, 2], 400, "invalid_request_error", None),
    ("stream as string", chat_body(stream="false"), 400, "invalid_request_error", "stream"),
    ("messages missing", {"model": "codex-5"}, 400, "invalid_request_error", "messages"),
    ("messages empty", chat_body() | {"messages": []}, 400, "invalid_request_error", "messages"),
    ("messages not list", chat_body() | {"messages": "hi"}, 400, "invalid_request_error",
     "messages"),
    ("bad role", chat_body() | {"messages": [{"role": "wizard", "content": "x"}]}, 400,
     "invalid_request_error", "messages[0].role"),
    ("null user content", chat_body() | {"messages": [{"role": "user", "content": None}]}, 400,
     "invalid_request_error", "messages[0].content"),
    ("numeric content", chat_body() | {"messages": [{"role": "user", "content": 5}]}, 400,
     "invalid_request_error", "messages[0].content"),
    ("unknown model", chat_body(model="gpt-4o"), 404, "model_not_found", "model"),
    ("argv injection model", chat_body(model='codex-5" -c foo=bar'), 404, "model_not_found",
     "model"),
    ("model not string", chat_body(model=5), 400, "invalid_request_error", "model"),
    ("bad effort", chat_body(reasoning_effort="extreme"), 400, "invalid_request_error",
     "reasoning_effort"),
    ("bad nested effort", chat_body(reasoning={"effort": "max"}), 400, "invalid_request_error",
     "reasoning_effort"),
    ("n=2", chat_body(n=2), 400, "invalid_request_error", "n"),
    ("n=0", chat_body(n=0), 400, "invalid_request_error", "n"),
    ("max_tokens string", chat_body(max_tokens="10"), 400, "invalid_request_error",
     "max_tokens"),
    ("max_tokens zero", chat_body(max_completion_tokens=0), 400, "invalid_request_error",
     "max_completion_tokens"),
    ("stream_options not object", chat_body(stream=True, stream_options=True), 400,
     "invalid_request_error", "stream_options"),
    ("include_usage not bool", chat_body(stream=True, stream_options={"include_usage": "yes"}),
     400, "invalid_request_error", "stream_options.include_usage"),
]


@pytest.mark.parametrize(("name", "body", "status", "code", "param"), BAD_BODIES,
                         ids=[case[0] for case in BAD_BODIES])
async def test_bad_requests_get_4xx_envelopes(
    proxy: Proxy, name: str, body: Any, status: int, code: str, param: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", content=content,
                                 headers={**AUTH, "Content-Type": "application/json"})
    envelope = assert_envelope(resp, status, code)
    assert envelope["error"]["param"] == param
    assert proxy.pids() == [], "a rejected request must not spawn a child"


async def test_prompt_guard(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(max_prompt_tokens=10)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body("word " * 100),
                                 headers=AUTH)
        legacy = await client.post("/v1/completions",
                                   json={"model": "codex-5", "prompt": "word " * 100},
                                   headers=AUTH)
    body = assert_envelope(resp, 400, "context_length_exceeded")
    assert body["error"]["param"] == "messages"
    assert body["error"]["type"] == "invalid_request_error"
    assert assert_envelope(legacy, 400, "context_length_exceeded")["error"]["param"] == "prompt"


async def test_legacy_prompt_validation(proxy: Proxy) -> None:
    async with proxy.client() as client:
        for prompt in ("", "   ", [], [1, 2], None):
            resp = await client.post("/v1/completions", json={"model": "codex-5", "prompt": prompt},
                                     headers=AUTH)
            assert assert_envelope(resp, 400, "invalid_request_error")["error"]["param"] == "prompt"


# ---------------------------------------------------------------------------- completions


async def test_nonstream_answers_at_task_complete_and_reaps(proxy: Proxy) -> None:
    """The fake stays alive after task_complete (like codex); the answer must not wait for it."""
    async with proxy.client() as client:
        with trio.fail_after(60):
            resp = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert resp.status_code == 200
    contract.assert_valid(contract.check_chat_json(resp.content, model="codex-5"))
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == (
        "Hello! This is a streamed answer from the fake upstream."
    )
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 1200
    assert body["usage"]["completion_tokens"] == 14
    await proxy.wait_idle()
    assert len(proxy.pids()) == 1


async def test_stream_frames_and_usage(proxy: Proxy) -> None:
    async with proxy.client() as client:
        resp, raw = await read_stream(
            client, "/v1/chat/completions",
            chat_body(stream=True, stream_options={"include_usage": True}),
        )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["cache-control"] == "no-cache, no-transform"
    assert resp.headers["x-accel-buffering"] == "no"
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=True, model="codex-5"))
    text, finish, usage = contract.collect_stream_content(raw)
    assert text == "Hello! This is a streamed answer from the fake upstream."
    assert finish == "stop"
    assert usage is not None and usage["total_tokens"] == 1214
    # finish, usage and [DONE] leave together: they are the end of one write.
    assert raw.endswith(b"data: [DONE]\n\n")
    await proxy.wait_idle()


async def test_stream_without_usage(proxy: Proxy) -> None:
    async with proxy.client() as client:
        _, raw = await read_stream(client, "/v1/chat/completions", chat_body(stream=True))
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=False))
    assert b'"usage"' not in raw


async def test_legacy_completions_json_and_stream(proxy: Proxy) -> None:
    body = {"model": "codex-5-low", "prompt": ["Say", "hello"]}
    async with proxy.client() as client:
        resp = await client.post("/v1/completions", json=body, headers=AUTH)
        _, raw = await read_stream(
            client, "/v1/completions",
            body | {"stream": True, "stream_options": {"include_usage": True}},
        )
    contract.assert_valid(contract.check_completion_json(resp.content, model="codex-5-low"))
    assert resp.json()["choices"][0]["text"] == (
        "Hello! This is a streamed answer from the fake upstream."
    )
    contract.assert_valid(contract.check_completion_stream(raw, include_usage=True))
    text, finish, usage = contract.collect_stream_content(raw)
    assert text == resp.json()["choices"][0]["text"]
    assert finish == "stop" and usage == resp.json()["usage"]


async def test_child_argv_and_env(start_proxy: StartProxy, tmp_path: Path) -> None:
    record = tmp_path / "record"
    record.mkdir()
    proxy = await start_proxy(
        child_env={"FAKE_CODEX_RECORD": str(record), "PROXY_SECRET_THING": "must-not-leak"},
        force_provider="local", sandbox_mode="workspace-write",
    )
    async with proxy.client() as client:
        resp = await client.post(
            "/v1/chat/completions",
            json=chat_body("[x] \"quoted\"\nline", model="codex-5-high", user="u1"),
            headers=AUTH,
        )
    assert resp.status_code == 200
    await proxy.wait_idle()
    (recorded,) = [json.loads(p.read_text()) for p in record.glob("*.json")]
    argv = recorded["argv"]
    assert argv[1] == "proto"
    overrides = dict(arg.split("=", 1) for arg in argv[2:] if arg != "-c")
    assert overrides["model"] == '"gpt-5"'
    assert overrides["model_reasoning_effort"] == '"high"'
    assert overrides["sandbox_mode"] == '"workspace-write"'
    assert overrides["model_provider"] == '"local"'
    assert overrides["approval_policy"] == '"never"'
    assert not any(key.startswith("PROXY_") for key in recorded["env"])
    assert recorded["env"]["CODEX_HOME"] == str((tmp_path / "codex-home").resolve())
    assert Path(recorded["cwd"]).resolve() == (tmp_path / "work").resolve()
    submission = json.loads(recorded["stdin_lines"][0])
    assert submission["op"]["type"] == "user_input"
    assert submission["op"]["items"][0]["text"] == '[user] [x] "quoted"\nline'
    assert submission["id"] == resp.headers["x-request-id"]


@pytest.mark.parametrize("size", [10, 3_000, 300_000])
async def test_the_whole_prompt_reaches_the_child(
    start_proxy: StartProxy, tmp_path: Path, size: int
) -> None:
    """A submission that fits a fresh pipe is written before the turn starts, a longer one
    while the turn runs (a pipe holds 64 KiB at most): either way the child reads all of it,
    once, on one line."""
    record = tmp_path / "record"
    record.mkdir()
    proxy = await start_proxy(child_env={"FAKE_CODEX_RECORD": str(record)})
    prompt = "SCENARIO=normal " + "w" * size
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(prompt), headers=AUTH)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == (
        "Hello! This is a streamed answer from the fake upstream.")
    await proxy.wait_idle()
    (recorded,) = [json.loads(p.read_text()) for p in record.glob("*.json")]
    (line,) = recorded["stdin_lines"]
    assert json.loads(line)["op"]["items"][0]["text"] == "[user] " + prompt


async def test_prompt_flattening_of_parts_and_roles(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    record = tmp_path / "record"
    record.mkdir()
    proxy = await start_proxy(child_env={"FAKE_CODEX_RECORD": str(record)})
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:..."}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions",
                                 json={"model": "codex-5", "messages": messages}, headers=AUTH)
    assert resp.status_code == 200
    await proxy.wait_idle()
    (recorded,) = [json.loads(p.read_text()) for p in record.glob("*.json")]
    text = json.loads(recorded["stdin_lines"][0])["op"]["items"][0]["text"]
    assert text == (
        "[system] be brief\n[user] look\n[image]\n[assistant] [tool_call c1] f({})\n[tool c1] 42"
    )


# ---------------------------------------------------------------------------- spawn failure


@pytest.mark.parametrize("problem", ["missing", "not-executable"])
async def test_spawn_failure_is_503_everywhere(
    start_proxy: StartProxy, tmp_path: Path, problem: str
) -> None:
    if problem == "missing":
        codex = tmp_path / "missing" / "codex"
    else:
        codex = tmp_path / "codex-noexec"
        codex.write_text("#!/bin/sh\nexit 0\n")
        codex.chmod(0o644)
    proxy = await start_proxy(codex_bin=str(codex))
    async with proxy.client() as client:
        for path, body in (("/v1/chat/completions", chat_body()),
                           ("/v1/completions", {"model": "codex-5", "prompt": "hi"})):
            for stream in (False, True):
                resp = await client.post(path, json=body | {"stream": stream}, headers=AUTH)
                envelope = assert_envelope(resp, 503, "backend_unavailable")
                assert "CODEX_BIN" in envelope["error"]["message"]
        assert (await client.get("/healthz")).status_code == 200
    assert proxy.state.admission.occupancy.turns == 0


async def test_spawn_failure_race_after_resolution(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    """A binary that resolves but cannot be exec'd (bad interpreter) is still a clean 503."""
    codex = tmp_path / "codex-badinterp"
    codex.write_text("#!/nonexistent/interpreter\n")
    codex.chmod(0o755)
    proxy = await start_proxy(codex_bin=str(codex))
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers=AUTH)
    assert_envelope(resp, 503, "backend_unavailable")
    assert proxy.state.admission.occupancy.turns == 0


async def test_codex_on_path_lookup(start_proxy: StartProxy, fast_fake: Path) -> None:
    proxy = await start_proxy(
        codex_bin="codex", child_env={"PATH": f"{fast_fake.parent}{os.pathsep}{os.environ['PATH']}"}
    )
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert resp.status_code == 200


@pytest.mark.parametrize("backend", ["app-server", "proto"])
async def test_demo_backend(start_proxy: StartProxy, backend: str) -> None:
    """--demo needs no codex at all, and runs on either backend (app-server by default)."""
    proxy = await start_proxy(demo=True, backend=backend, codex_bin="definitely-not-installed")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    conversation = chat_body("ping")
    conversation["messages"] = [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "first question"},
                                {"role": "assistant", "content": "first answer"},
                                {"role": "user", "content": "What is   the capital\nof France?"}]
    async with proxy.client() as client:
        ready = await client.get("/readyz")
        resp = await client.post("/v1/chat/completions", json=chat_body("ping"), headers=AUTH)
        _, raw = await read_stream(client, "/v1/chat/completions",
                                   chat_body("ping", stream=True,
                                             stream_options={"include_usage": True}))
        legacy = await client.post("/v1/completions", headers=AUTH,
                                   json={"model": "codex-5", "prompt": "say pong"})
        history = await client.post("/v1/chat/completions", json=conversation, headers=AUTH)
        with_tools = await client.post("/v1/chat/completions", json=chat_body(tools=tools),
                                       headers=AUTH)
    assert ready.json() == {"ok": True, "backend": backend, "codex_version": "demo"}
    assert resp.status_code == 200
    answer = resp.json()["choices"][0]["message"]["content"]
    assert "demo backend" in answer and "\u201cping\u201d" in answer
    assert resp.json()["choices"][0]["finish_reason"] == "stop"
    usage = resp.json()["usage"]
    assert usage["completion_tokens"] == math.ceil(len(answer) / 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=True))
    assert contract.collect_stream_content(raw)[0] == answer
    assert legacy.status_code == 200 and "\u201csay pong\u201d" in legacy.json()["choices"][0][
        "text"]
    # The last user message is quoted (whitespace collapsed), whatever came before it.
    assert "\u201cWhat is the capital of France?\u201d" in (
        history.json()["choices"][0]["message"]["content"])
    # No function calling in the demo: a clean 400, never a 500.
    assert_envelope(with_tools, 400, "unsupported_parameter")
    assert with_tools.json()["error"]["param"] == "tools"


async def test_usage_records_and_endpoints(proxy: Proxy) -> None:
    async with proxy.client() as client:
        await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        await proxy.wait_idle()
        with trio.fail_after(60):
            await proxy.state.usage_log.written.wait_value(1)
        raw = await client.get("/v1/usage/raw?limit=5", headers=AUTH)
        summary = await client.get("/v1/usage?group=hour", headers=AUTH)
        metrics = await client.get("/metrics")
    (record,) = raw.json()["data"]
    assert record["counts_source"] == "codex"
    assert record["prompt_tokens"] == 1200 and record["finish_reason"] == "stop"
    assert record["outcome"] == "ok" and record["status"] == 200
    assert summary.json()["data"][0]["requests"] == 1
    assert b"quartproxy_requests_total" in metrics.content


async def test_proto_event_log(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(log_proto=True)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    await proxy.wait_idle()
    assert proxy.state.proto_log is not None
    with trio.fail_after(60):
        await proxy.state.proto_log.written.wait_value(lambda n: n >= 15)
    lines = [json.loads(line) for line in proxy.settings.proto_log_path.read_text().splitlines()]
    assert {line["req_id"] for line in lines} == {resp.headers["x-request-id"]}
    types = [json.loads(line["line"])["msg"]["type"] for line in lines]
    assert types[0] == "session_configured" and types[-1] == "task_complete"


async def test_no_proto_log_by_default(proxy: Proxy) -> None:
    assert proxy.state.proto_log is None


async def test_double_slash_path_is_a_404_envelope_not_a_redirect(proxy: Proxy) -> None:
    async with proxy.client() as client:
        resp = await client.post("/v1//chat/completions", json=chat_body("hi"), headers=AUTH)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
