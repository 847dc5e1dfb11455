"""What the proxy sends to ``codex app-server``, checked against what the real 0.169.0 binary was
sent (and accepted) in the captures: worker argv, ``initialize``, the thread plan of each kind of
request, and the version rules that decide which of them apply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from quartproxy.backends.appserver.params import (
    OPT_OUT_METHODS,
    RESERVED_TOOL_NAMES,
    ThreadPlan,
    dynamic_tool,
    initialize_params,
    plan_thread,
    turn_start_params,
    worker_argv,
)
from quartproxy.backends.appserver.version import (
    BackendKind,
    CodexVersion,
    Features,
    UnsupportedVersion,
    choose_backend,
    features_for,
)
from quartproxy.backends.base import TurnRequest
from quartproxy.config import Settings
from quartproxy.conversation import (
    Conversation,
    FunctionTool,
    Item,
    ToolCallRef,
    ToolRequest,
)

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "fixtures" / "captures" / "codex-0.169.0"

FULL = features_for(CodexVersion(0, 169, 0))
NO_TOOLS = features_for(CodexVersion(0, 140, 0))
REDUCED = features_for(CodexVersion(0, 119, 0))
CWD = "<CWD>"
TOOLS_BASE = "You are a helpful assistant. Use the provided functions when they help."


def client_messages(scenario: str) -> list[dict[str, Any]]:
    path = CAPTURES / f"app-server.{scenario}.transcript.jsonl"
    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["dir"] == "client->server" and "method" in record["msg"]:
            out.append(record["msg"])
    return out


def sent(scenario: str, method: str) -> list[dict[str, Any]]:
    return [msg["params"] for msg in client_messages(scenario) if msg["method"] == method]


def meta(scenario: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (CAPTURES / f"app-server.{scenario}.meta.json").read_text()
    )
    return data


# A small OpenAI → Conversation mapping for the tests (the real one validates much more).
def conversation(messages: list[dict[str, Any]]) -> Conversation:
    items = []
    for message in messages:
        calls = tuple(
            ToolCallRef(call["id"], call["function"]["name"], call["function"]["arguments"])
            for call in message.get("tool_calls") or ()
        )
        items.append(
            Item(
                message["role"],
                message.get("content") or "",
                tool_calls=calls,
                tool_call_id=message.get("tool_call_id"),
            )
        )
    return Conversation(tuple(items))


def function_tools(tools: list[dict[str, Any]]) -> tuple[FunctionTool, ...]:
    return tuple(
        FunctionTool(
            tool["function"]["name"],
            tool["function"].get("description", ""),
            tool["function"].get("parameters"),
        )
        for tool in tools
    )


def request(
    *items: Item,
    tools: ToolRequest | None = None,
    instructions: str | None = None,
    **extra: Any,
) -> TurnRequest:
    return TurnRequest(
        "req-1", Conversation(tuple(items), instructions=instructions), "gpt-5", tools=tools,
        **extra,
    )


def plan(req: TurnRequest, features: Features = FULL) -> ThreadPlan:
    return plan_thread(
        req, cwd=CWD, sandbox="read-only", features=features, tools_base_instructions=TOOLS_BASE
    )


BASE_START = {"cwd": CWD, "model": "gpt-5", "approvalPolicy": "never", "sandbox": "read-only"}
TOOL_CONFIG = {
    "features": {
        "shell_tool": False,
        "unified_exec": False,
        "view_image": False,
        "goals": False,
        "multi_agent": False,
    }
}
WEATHER = FunctionTool(
    "get_weather",
    "Get the current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = FunctionTool("get_time", "", None, strict=True)


# --------------------------------------------------------------------------------------------
# Plain threads


def test_plain_user_message() -> None:
    p = plan(request(Item("user", "hi")))
    assert p == ThreadPlan(
        thread_start=BASE_START,
        inject=[],
        turn_input=[{"type": "text", "text": "hi"}],
        declared=frozenset(),
        injected_call_ids=frozenset(),
        tool_thread=False,
    )
    assert turn_start_params("th", p, request(Item("user", "hi"))) == {
        "threadId": "th",
        "input": [{"type": "text", "text": "hi"}],
    }


def test_instructions_and_history_match_the_history_capture() -> None:
    """Case C of the history run: developer instructions, then user/assistant injected, then the
    last user message as the input. The instructions get the blank line codex does not add."""
    (start, *_) = [p for p in sent("history", "thread/start") if "developerInstructions" in p][2:]
    (inject,) = sent("history", "thread/inject_items")[:1]
    turn = next(p for p in sent("history", "turn/start") if p["threadId"] == inject["threadId"])
    last_user = turn["input"][0]["text"]
    req = request(
        Item("system", "DEV: You are a pirate."),
        Item("developer", "Answer in pirate speak."),
        Item("user", "My name is Ada."),
        Item("assistant", "Nice to meet you, Ada."),
        Item("user", last_user),
    )
    p = plan(req)
    assert start["developerInstructions"] == "DEV: You are a pirate. Answer in pirate speak."
    assert p.thread_start == {
        **BASE_START,
        "developerInstructions": "DEV: You are a pirate.\n\nAnswer in pirate speak.\n\n",
    }
    assert p.inject == inject["items"]
    assert p.turn_input == turn["input"]
    assert not p.tool_thread and p.injected_call_ids == frozenset()


def test_responses_instructions_come_first() -> None:
    p = plan(request(Item("system", "sys"), Item("user", "u"), instructions="top\n"))
    assert p.thread_start["developerInstructions"] == "top\n\n\nsys\n\n"


def test_conversation_ending_with_assistant_answers_the_history() -> None:
    p = plan(request(Item("user", "q"), Item("assistant", "Once upon")))
    assert p.inject == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Once upon"}],
        },
    ]
    assert p.turn_input == []


def test_tool_history_without_tools_is_native() -> None:
    """On 0.140+ tool history goes in as function_call/function_call_output even when the request
    declares no tools; the thread is still a plain one."""
    req = request(
        Item("system", "s"),
        Item("user", "q"),
        Item("assistant", "Let me check.", tool_calls=(ToolCallRef("c1", "f", '{"a": 1}'),)),
        Item("tool", "42", tool_call_id="c1"),
        Item("user", "and?"),
    )
    p = plan(req, NO_TOOLS)
    assert p.inject == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Let me check."}],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ]
    assert p.injected_call_ids == frozenset({"c1"})
    assert p.turn_input == [{"type": "text", "text": "and?"}]
    assert p.thread_start == {**BASE_START, "developerInstructions": "s\n\n"}
    assert not p.tool_thread


def test_history_items_edge_cases() -> None:
    """An empty assistant message says nothing; a tool result that names no call cannot go in
    natively (codex would drop an orphan output) and is kept as text."""
    req = request(Item("user", "q"), Item("assistant", ""), Item("tool", "42"), Item("user", "u"))
    p = plan(req)
    assert p.inject == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "[tool] 42"}],
        },
    ]
    assert p.injected_call_ids == frozenset()


def test_reduced_mode_flattens_everything() -> None:
    req = request(
        Item("system", "Be a pirate."),
        Item("user", "My name is Ada."),
        Item("assistant", "Nice to meet you."),
        Item("user", "What is my name?"),
    )
    p = plan(req, REDUCED)
    assert p.thread_start == BASE_START
    assert p.inject == []
    assert p.turn_input == [{"type": "text", "text": req.prompt}]
    assert req.prompt.startswith("[system] Be a pirate.\n[user] My name is Ada.")


def test_effort_and_output_schema_go_to_turn_start() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    req = request(Item("user", "hi"), effort="low", output_schema=schema)
    p = plan(req)
    assert turn_start_params("th", p, req) == {
        "threadId": "th",
        "input": [{"type": "text", "text": "hi"}],
        "effort": "low",
        "outputSchema": schema,
    }


# --------------------------------------------------------------------------------------------
# Tool threads


def test_tool_thread_matches_the_e2e_capture() -> None:
    openai = meta("dyntool_e2e")["openai_request_1"]
    captured = sent("dyntool_e2e", "thread/start")[0]
    req = TurnRequest(
        "r1",
        conversation(openai["messages"]),
        "gpt-5",
        tools=ToolRequest(function_tools(openai["tools"])),
    )
    p = plan(req)
    assert p.thread_start == {**BASE_START, **captured}
    assert p.thread_start["dynamicTools"] == captured["dynamicTools"]
    assert p.thread_start["config"] == captured["config"] == TOOL_CONFIG
    assert p.thread_start["experimentalRawEvents"] is True
    assert p.thread_start["baseInstructions"] == TOOLS_BASE
    assert "developerInstructions" not in p.thread_start
    assert p.declared == frozenset({"get_weather", "get_time"})
    assert p.tool_thread
    assert p.inject == []
    (turn,) = [t for t in sent("dyntool_e2e", "turn/start") if t["input"]]
    assert turn_start_params(turn["threadId"], p, req) == turn


def test_tool_follow_up_matches_the_e2e_capture() -> None:
    openai = meta("dyntool_e2e")["openai_request_2"]
    (inject,) = sent("dyntool_e2e", "thread/inject_items")
    req = TurnRequest(
        "r2",
        conversation(openai["messages"]),
        "gpt-5",
        tools=ToolRequest(function_tools(openai["tools"])),
    )
    p = plan(req)
    assert p.inject == inject["items"]
    assert p.turn_input == []
    assert p.injected_call_ids == frozenset({"call_fake_165_0", "call_fake_165_1"})
    assert p.thread_start == {**BASE_START, **sent("dyntool_e2e", "thread/start")[1]}
    assert turn_start_params(inject["threadId"], p, req) == sent("dyntool_e2e", "turn/start")[1]


@pytest.mark.parametrize("case", [0, 1], ids=["R1_single", "R4_parallel"])
def test_tool_follow_up_matches_the_resume_capture(case: int) -> None:
    captured = sent("dyntool_resume", "thread/inject_items")[case]["items"]
    user = captured[0]["content"][0]["text"]
    calls = tuple(
        ToolCallRef(item["call_id"], item["name"], item["arguments"])
        for item in captured
        if item["type"] == "function_call"
    )
    results = [
        Item("tool", item["output"], tool_call_id=item["call_id"])
        for item in captured
        if item["type"] == "function_call_output"
    ]
    req = request(
        Item("user", user),
        Item("assistant", "", tool_calls=calls),
        *results,
        tools=ToolRequest((WEATHER, TIME)),
    )
    p = plan(req)
    assert p.inject == captured
    assert p.turn_input == []
    assert p.injected_call_ids == {call.call_id for call in calls}


def test_client_instructions_replace_the_persona_on_tool_threads() -> None:
    req = request(
        Item("system", "You are terse."),
        Item("developer", "Use metric units."),
        Item("user", "weather?"),
        tools=ToolRequest((WEATHER,)),
    )
    p = plan(req)
    assert p.thread_start["baseInstructions"] == "You are terse.\n\nUse metric units."
    assert "developerInstructions" not in p.thread_start


def test_dynamic_tool_mapping() -> None:
    assert dynamic_tool(WEATHER) == {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "inputSchema": WEATHER.parameters,
    }
    # description and inputSchema are required by codex; strict has no counterpart.
    assert dynamic_tool(TIME) == {
        "type": "function",
        "name": "get_time",
        "description": "",
        "inputSchema": {"type": "object", "properties": {}},
    }


def test_tool_choice_none_declares_nothing() -> None:
    p = plan(request(Item("user", "hi"), tools=ToolRequest((WEATHER, TIME), choice="none")))
    assert p.thread_start["dynamicTools"] == []
    assert p.thread_start["config"] == TOOL_CONFIG
    assert p.thread_start["baseInstructions"] == TOOLS_BASE
    assert p.declared == frozenset()
    assert p.tool_thread


def test_tool_choice_required_appends_the_nudge() -> None:
    p = plan(request(Item("user", "hi"), tools=ToolRequest((WEATHER, TIME), choice="required")))
    assert [tool["name"] for tool in p.thread_start["dynamicTools"]] == ["get_weather", "get_time"]
    assert p.thread_start["baseInstructions"] == (
        f"{TOOLS_BASE}\n\nYou must call one or more of the provided functions in this response."
    )


def test_tool_choice_function_declares_only_that_one() -> None:
    tools = ToolRequest((TIME,), choice="function")
    p = plan(request(Item("system", "S"), Item("user", "hi"), tools=tools))
    assert [tool["name"] for tool in p.thread_start["dynamicTools"]] == ["get_time"]
    assert p.declared == frozenset({"get_time"})
    assert p.thread_start["baseInstructions"] == "S\n\nCall the function get_time now."


def test_nudge_alone_when_no_instructions_at_all() -> None:
    req = request(Item("user", "hi"), tools=ToolRequest((TIME,), choice="function"))
    p = plan_thread(req, cwd=CWD, sandbox="read-only", features=FULL, tools_base_instructions="")
    assert p.thread_start["baseInstructions"] == "Call the function get_time now."


def test_tools_on_a_release_without_dynamic_tools_plan_a_plain_thread() -> None:
    req = request(Item("system", "s"), Item("user", "hi"), tools=ToolRequest((WEATHER,)))
    p = plan(req, NO_TOOLS)
    assert not p.tool_thread
    assert p.thread_start == {**BASE_START, "developerInstructions": "s\n\n"}
    assert p.declared == frozenset()


def test_plans_do_not_share_mutable_state() -> None:
    first = plan(request(Item("user", "hi"), tools=ToolRequest((TIME,))))
    first.thread_start["config"]["features"]["goals"] = True
    first.thread_start["dynamicTools"][0]["inputSchema"]["x"] = 1
    second = plan(request(Item("user", "hi"), tools=ToolRequest((TIME,))))
    assert second.thread_start["config"] == TOOL_CONFIG
    assert second.thread_start["dynamicTools"][0]["inputSchema"] == {
        "type": "object",
        "properties": {},
    }


def test_reserved_names() -> None:
    assert {"exec_command", "shell_command", "shell", "request_user_input"} == RESERVED_TOOL_NAMES


# --------------------------------------------------------------------------------------------
# Worker start


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_worker_argv() -> None:
    argv = worker_argv(
        ["/usr/bin/codex"],
        settings(
            force_provider="local", codex_model="gpt-5.1-codex", sandbox_mode="workspace-write"
        ),
    )
    assert argv == [
        "/usr/bin/codex",
        "app-server",
        "-c", 'model_provider="local"',
        "-c", 'model="gpt-5.1-codex"',
        "-c", 'sandbox_mode="workspace-write"',
        "-c", 'approval_policy="never"',
        "-c", "project_doc_max_bytes=0",
        "-c", 'history.persistence="none"',
        "-c", "features.shell_snapshot=false",
        "-c", "features.unbounded_connection_retries=false",
        "-c", 'web_search="disabled"',
    ]  # fmt: skip


def test_worker_argv_without_provider() -> None:
    argv = worker_argv(["python", "fake.py"], settings(force_provider="", codex_model="gpt-5"))
    assert argv[:3] == ["python", "fake.py", "app-server"]
    assert not any(arg.startswith("model_provider=") for arg in argv)
    assert 'model="gpt-5"' in argv


def test_initialize_params() -> None:
    assert initialize_params("1.2.3", experimental=True, opt_out=True) == {
        "clientInfo": {"name": "quartproxy", "title": None, "version": "1.2.3"},
        "capabilities": {
            "experimentalApi": True,
            "optOutNotificationMethods": list(OPT_OUT_METHODS),
        },
    }
    assert initialize_params("1", experimental=False, opt_out=False) == {
        "clientInfo": {"name": "quartproxy", "title": None, "version": "1"}
    }
    assert initialize_params("1", experimental=False, opt_out=True)["capabilities"] == {
        "optOutNotificationMethods": list(OPT_OUT_METHODS)
    }


def test_opt_out_never_hides_what_the_translator_needs() -> None:
    needed = {
        "item/agentMessage/delta",
        "item/completed",
        "thread/tokenUsage/updated",
        "error",
        "turn/completed",
        "rawResponseItem/completed",
        "rawResponse/completed",
    }
    assert not needed & set(OPT_OUT_METHODS)
    assert not any(method.startswith("item/reasoning/") for method in OPT_OUT_METHODS)
    assert len(set(OPT_OUT_METHODS)) == len(OPT_OUT_METHODS)
    # Everything listed was seen on the wire of 0.169.0 (so the names are real).
    seen: set[str] = set()
    for path in CAPTURES.glob("app-server.*.transcript.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["dir"] == "server->client" and "method" in record["msg"]:
                seen.add(record["msg"]["method"])
    assert set(OPT_OUT_METHODS) <= seen


# --------------------------------------------------------------------------------------------
# Versions


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("codex-cli 0.169.0", (0, 169, 0)),
        ("codex-cli 0.169.0\n", (0, 169, 0)),
        ("0.42.0", (0, 42, 0)),
        ("codex-cli 0.170.0-alpha.2", (0, 170, 0)),
        (
            "quartproxy/0.169.0 (Debian 12.0.0; x86_64) xterm (quartproxy; 0.0.1)",
            (0, 169, 0),
        ),
        ("capture-harness/0.140.0 (Ubuntu 22.4.0; x86_64) xterm", (0, 140, 0)),
        ("app2.1.1/0.119.3 (Debian 12.0.0)", (0, 119, 3)),
        ("1.0.10", (1, 0, 10)),
    ],
)
def test_version_parse(text: str, version: tuple[int, int, int]) -> None:
    parsed = CodexVersion.parse(text)
    assert parsed == CodexVersion(*version)
    assert str(parsed) == ".".join(map(str, version))


@pytest.mark.parametrize("text", ["", "codex-cli", "0.169", "v1", "codex-cli 0.169.x"])
def test_version_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        CodexVersion.parse(text)


def test_versions_order_numerically() -> None:
    assert CodexVersion(0, 9, 0) < CodexVersion(0, 10, 0) < CodexVersion(0, 100, 0)
    assert CodexVersion(1, 0, 0) > CodexVersion(0, 999, 999)


@pytest.mark.parametrize(
    ("version", "kind"),
    [
        ("0.8.0", BackendKind.PROTO),
        ("0.36.0", BackendKind.PROTO),
        ("0.42.0", BackendKind.PROTO),
        ("0.42.9", BackendKind.PROTO),
        ("0.100.0", BackendKind.APP_SERVER_REDUCED),
        ("0.119.0", BackendKind.APP_SERVER_REDUCED),
        ("0.139.9", BackendKind.APP_SERVER_REDUCED),
        ("0.140.0", BackendKind.APP_SERVER),
        ("0.169.0", BackendKind.APP_SERVER),
        ("1.2.0", BackendKind.APP_SERVER),
    ],
)
def test_choose_backend(version: str, kind: BackendKind) -> None:
    assert choose_backend(CodexVersion.parse(version)) is kind


@pytest.mark.parametrize("version", ["0.0.1", "0.7.9", "0.43.0", "0.44.0", "0.77.0", "0.99.9"])
def test_unsupported_versions(version: str) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        choose_backend(CodexVersion.parse(version))
    message = str(info.value)
    assert f"codex {version} is not supported" in message
    for part in ("0.8.0–0.42.x", "0.100.0–0.139.x", "0.140.0", "0.169.0"):
        assert part in message
    assert info.value.version == CodexVersion.parse(version)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.100.0", Features(False, False, False, True, True)),
        ("0.119.9", Features(False, False, False, True, True)),
        ("0.120.0", Features(False, False, False, False, True)),
        ("0.139.0", Features(False, False, False, False, True)),
        ("0.140.0", Features(True, True, False, False, True)),
        ("0.168.9", Features(True, True, False, False, True)),
        ("0.169.0", Features(True, True, True, False, True)),
        ("0.200.0", Features(True, True, True, False, True)),
    ],
)
def test_features(version: str, expected: Features) -> None:
    assert features_for(CodexVersion.parse(version)) == expected
