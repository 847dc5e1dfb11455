"""Real client libraries, unchanged, against the proxy running as its own process.

The backend is ``fixtures/fake_codex.py`` (no Codex CLI needed), which answers
``NORMAL_TEXT`` with usage 1200/14. Clients: openai-python (sync and async), LangChain's
``ChatOpenAI`` and the openai npm SDK (``clients/openai-node-smoke.mjs``). Function calling needs
the app-server backend: those tests run the proxy with ``PROXY_BACKEND=app-server`` over
``fixtures/fake_app_server.py``.

Only the nox session ``clients`` runs this module (it sets ``E2E_CLIENTS=1``, installs
langchain-openai, and ``npm install``s the openai SDK into ``E2E_NODE_DIR``); the default test run
skips it at collection time. Each client test also skips, with the reason, when its own
dependency is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

if os.environ.get("E2E_CLIENTS") != "1":
    pytest.skip(
        "client e2e tests run in `nox -s clients` (set E2E_CLIENTS=1 to run them directly)",
        allow_module_level=True,
    )

import trio

openai = pytest.importorskip("openai", reason="openai-python is not installed")

from ..conftest import API_KEY, ROOT, pid_alive  # noqa: E402
from ..servers import ServerProcess  # noqa: E402

NORMAL_TEXT = "Hello! This is a streamed answer from the fake upstream."
PROMPT_TOKENS, COMPLETION_TOKENS = 1200, 14
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]
NODE_SCRIPT = ROOT / "clients" / "openai-node-smoke.mjs"


@pytest.fixture
async def server(tmp_path: Path, fast_fake: Path) -> AsyncIterator[ServerProcess]:
    # The fake speaks `codex proto` and has no `--version`: name the backend instead of probing.
    proc = ServerProcess(tmp_path, {"CODEX_BIN": str(fast_fake), "PROXY_BACKEND": "proto"})
    async with trio.open_nursery() as nursery:
        await proc.start(nursery)
        try:
            yield proc
        finally:
            await proc.stop()
            nursery.cancel_scope.cancel()
    leaked = [pid for pid in proc.child_pids() if pid_alive(pid)]
    assert not leaked, f"children left behind: {leaked}"


@pytest.fixture
async def app_server(tmp_path: Path, fast_fake_app: Path) -> AsyncIterator[ServerProcess]:
    """The proxy on the app-server backend: one fake ``codex app-server`` worker."""
    proc = ServerProcess(tmp_path, {"CODEX_BIN": str(fast_fake_app),
                                    "PROXY_BACKEND": "app-server", "PROXY_WORKERS": "1"})
    async with trio.open_nursery() as nursery:
        await proc.start(nursery)
        try:
            # The worker starts after the server listens: /readyz says when it accepts turns.
            async with httpx.AsyncClient(base_url=proc.base_url) as client:
                with trio.fail_after(30):
                    while (await client.get("/readyz")).status_code != 200:  # noqa: ASYNC110
                        await trio.sleep(0.02)
            yield proc
        finally:
            await proc.stop()
            nursery.cancel_scope.cancel()
    leaked = [pid for pid in proc.child_pids() if pid_alive(pid)]
    assert not leaked, f"workers left behind: {leaked}"


def base_url(server: ServerProcess) -> str:
    return f"{server.base_url}/v1"


def check_usage(usage: Any) -> None:
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        PROMPT_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS + COMPLETION_TOKENS
    )


# --------------------------------------------------------------------------- openai-python


def _sync_session(url: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0, timeout=30)
    with client:
        chat = client.chat.completions.create(model="codex-5", messages=MESSAGES)
        chunks = list(client.chat.completions.create(
            model="codex-5", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True},
        ))
        legacy = client.completions.create(model="codex-5", prompt="Say hello")
        legacy_chunks = list(client.completions.create(
            model="codex-5", prompt="Say hello", stream=True,
            stream_options={"include_usage": True},
        ))
    return {"chat": chat, "chunks": chunks, "legacy": legacy, "legacy_chunks": legacy_chunks}


def check_chat_chunks(chunks: list[Any]) -> None:
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == NORMAL_TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices
                and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    check_usage(chunks[-1].usage)
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def check_legacy_chunks(chunks: list[Any]) -> None:
    assert "".join(c.choices[0].text for c in chunks if c.choices) == NORMAL_TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices
                and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    check_usage(chunks[-1].usage)


async def test_openai_python_sync(server: ServerProcess) -> None:
    with trio.fail_after(60):
        got = await trio.to_thread.run_sync(_sync_session, base_url(server))
    chat = got["chat"]
    assert chat.object == "chat.completion" and chat.model == "codex-5"
    assert chat.choices[0].message.content == NORMAL_TEXT
    assert chat.choices[0].finish_reason == "stop"
    check_usage(chat.usage)
    assert chat.usage.prompt_tokens_details.cached_tokens == 0
    assert chat.usage.completion_tokens_details.reasoning_tokens == 0
    check_chat_chunks(got["chunks"])
    legacy = got["legacy"]
    assert legacy.object == "text_completion"
    assert legacy.choices[0].text == NORMAL_TEXT and legacy.choices[0].finish_reason == "stop"
    check_usage(legacy.usage)
    check_legacy_chunks(got["legacy_chunks"])


async def test_openai_python_async(server: ServerProcess) -> None:
    client = openai.AsyncOpenAI(base_url=base_url(server), api_key=API_KEY, max_retries=0,
                                timeout=30)
    with trio.fail_after(60):
        async with client:
            chat = await client.chat.completions.create(model="codex-5", messages=MESSAGES)
            stream = await client.chat.completions.create(
                model="codex-5-high", messages=MESSAGES, stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            legacy = await client.completions.create(model="codex-5", prompt="Say hello")
            legacy_stream = await client.completions.create(
                model="codex-5", prompt="Say hello", stream=True,
                stream_options={"include_usage": True},
            )
            legacy_chunks = [chunk async for chunk in legacy_stream]
            models = await client.models.list()
    assert chat.choices[0].message.content == NORMAL_TEXT
    check_usage(chat.usage)
    check_chat_chunks(chunks)
    assert chunks[0].model == "codex-5-high"
    assert legacy.choices[0].text == NORMAL_TEXT
    check_usage(legacy.usage)
    check_legacy_chunks(legacy_chunks)
    assert "codex-5" in {m.id for m in models.data}


async def test_openai_python_error_in_stream(server: ServerProcess) -> None:
    client = openai.AsyncOpenAI(base_url=base_url(server), api_key=API_KEY, max_retries=0)
    with trio.fail_after(60):
        async with client:
            stream = await client.chat.completions.create(
                model="codex-5", messages=[{"role": "user", "content": "SCENARIO=error"}],
                stream=True,
            )
            with pytest.raises(openai.APIError, match="400 Bad Request"):
                async for _ in stream:
                    pass
            with pytest.raises(openai.AuthenticationError):
                await client.with_options(api_key="wrong-key").chat.completions.create(
                    model="codex-5", messages=MESSAGES,
                )


# --------------------------------------------------------------------------- LangChain


def _langchain_session(url: str) -> dict[str, Any]:
    from langchain_openai import ChatOpenAI

    common: dict[str, Any] = {"base_url": url, "api_key": API_KEY, "model": "codex-5",
                              "max_retries": 0, "timeout": 30}
    # Chat Completions, asked for explicitly.
    chat = ChatOpenAI(**common, use_responses_api=False, stream_usage=True)
    invoked = chat.invoke("Say hello")
    chunks = list(chat.stream("Say hello"))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    plain = ChatOpenAI(**common, use_responses_api=False)
    plain_chunks = list(plain.stream([("system", "Be brief."), ("human", "Say hello")]))
    # The default: langchain-openai (1.x) sends every model whose name contains "codex" to the
    # Responses API (/v1/responses).
    default = ChatOpenAI(**common)
    responses_invoked = default.invoke([("system", "Be brief."), ("human", "Say hello")])
    responses_chunks = list(default.stream("Say hello"))
    responses_total = responses_chunks[0]
    for chunk in responses_chunks[1:]:
        responses_total = responses_total + chunk
    return {"invoked": invoked, "chunks": chunks, "total": total, "plain_chunks": plain_chunks,
            "default_uses_responses": default._use_responses_api({}),
            "responses_invoked": responses_invoked, "responses_chunks": responses_chunks,
            "responses_total": responses_total}


def check_usage_metadata(meta: Any) -> None:
    assert meta is not None
    assert meta["input_tokens"] == PROMPT_TOKENS
    assert meta["output_tokens"] == COMPLETION_TOKENS
    assert meta["total_tokens"] == PROMPT_TOKENS + COMPLETION_TOKENS


def _text(message: Any) -> str:
    """A LangChain message's text, whether content is a string or Responses content blocks."""
    text = getattr(message, "text", None)
    if isinstance(text, str):
        return text
    return str(text() if callable(text) else message.content)


@pytest.mark.skipif(importlib.util.find_spec("langchain_openai") is None,
                    reason="langchain-openai is not installed (`nox -s clients` installs it)")
async def test_langchain_chat_openai(server: ServerProcess) -> None:
    with trio.fail_after(90):
        got = await trio.to_thread.run_sync(_langchain_session, base_url(server))
    invoked = got["invoked"]
    assert invoked.content == NORMAL_TEXT
    assert invoked.response_metadata["finish_reason"] == "stop"
    assert invoked.response_metadata["model_name"] == "codex-5"
    check_usage_metadata(invoked.usage_metadata)
    assert len(got["chunks"]) > 2, "the answer should arrive in several chunks"
    total = got["total"]
    assert total.content == NORMAL_TEXT
    assert total.response_metadata.get("finish_reason") == "stop"
    check_usage_metadata(total.usage_metadata)  # stream_usage=True: the include_usage chunk
    assert "".join(str(c.content) for c in got["plain_chunks"]) == NORMAL_TEXT
    # ChatOpenAI's default for a "codex" model: the Responses API, which now just works.
    assert got["default_uses_responses"] is True
    responses_invoked = got["responses_invoked"]
    assert _text(responses_invoked) == NORMAL_TEXT
    assert responses_invoked.response_metadata["status"] == "completed"
    assert responses_invoked.response_metadata["model_name"] == "codex-5"
    assert str(responses_invoked.response_metadata["id"]).startswith("resp_")
    check_usage_metadata(responses_invoked.usage_metadata)
    assert len(got["responses_chunks"]) > 2, "the Responses stream should arrive in pieces"
    responses_total = got["responses_total"]
    assert _text(responses_total) == NORMAL_TEXT
    check_usage_metadata(responses_total.usage_metadata)


def _langchain_tool_session(url: str) -> dict[str, Any]:
    from langchain_core.messages import BaseMessage, HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, unit: str = "celsius") -> str:
        """The current weather in a city."""
        return f"18 degrees {unit} and sunny in {city}"

    found: dict[str, Any] = {}
    common: dict[str, Any] = {"base_url": url, "api_key": API_KEY, "model": "codex-5",
                              "max_retries": 0, "timeout": 30}
    # Chat Completions (asked for) and the Responses API (ChatOpenAI's default for "codex").
    for api, llm in (("chat", ChatOpenAI(**common, use_responses_api=False)),
                     ("responses", ChatOpenAI(**common))):
        bound = llm.bind_tools([get_weather])
        messages: list[BaseMessage] = [
            HumanMessage("What is the weather in Paris? SCENARIO=tool_call")]
        asked = bound.invoke(messages)
        messages.append(asked)
        for call in asked.tool_calls:
            messages.append(get_weather.invoke(call))  # a ToolMessage carrying the call's id
        answered = bound.invoke(messages)
        found[api] = {"asked": asked, "results": messages[2:], "answered": answered}
    return found


@pytest.mark.skipif(importlib.util.find_spec("langchain_openai") is None,
                    reason="langchain-openai is not installed (`nox -s clients` installs it)")
async def test_langchain_bind_tools_round_trip(app_server: ServerProcess) -> None:
    """bind_tools: the model asks for get_weather(Paris), LangChain runs it, and the result
    goes back in the next request, which codex answers from — on both APIs LangChain speaks."""
    with trio.fail_after(90):
        got = await trio.to_thread.run_sync(_langchain_tool_session, base_url(app_server))
    for api, turn in got.items():
        asked = turn["asked"]
        (call,) = asked.tool_calls
        assert call["name"] == "get_weather", api
        assert call["args"] == {"city": "Paris", "unit": "celsius"}, api
        assert call["id"].startswith("call_fake_"), api
        (result,) = turn["results"]
        assert result.tool_call_id == call["id"], api
        assert _text(turn["answered"]) == (
            f"Tool results: {call['id']}=18 degrees celsius and sunny in Paris"), api
        assert not turn["answered"].tool_calls, api
    assert got["chat"]["asked"].response_metadata["finish_reason"] == "tool_calls"
    assert got["chat"]["answered"].response_metadata["finish_reason"] == "stop"
    assert got["responses"]["answered"].response_metadata["status"] == "completed"


# --------------------------------------------------------------------------- openai (npm)


@pytest.mark.skipif(not os.environ.get("E2E_NODE_DIR"),
                    reason="E2E_NODE_DIR is not set (`nox -s clients` installs the openai npm SDK)")
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_openai_node_sdk(server: ServerProcess) -> None:
    node_dir = os.environ["E2E_NODE_DIR"]
    node = shutil.which("node")
    assert node is not None
    if not (Path(node_dir) / "node_modules" / "openai").is_dir():
        pytest.fail(f"E2E_NODE_DIR={node_dir} has no node_modules/openai")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PROXY_"))},
        "OPENAI_BASE_URL": base_url(server),
        "OPENAI_API_KEY": API_KEY,
        "E2E_NODE_DIR": node_dir,
        "EXPECTED_TEXT": NORMAL_TEXT,
    }
    with trio.fail_after(90):
        done = await trio.run_process(
            [node, str(NODE_SCRIPT)], env=env, capture_stdout=True, capture_stderr=True,
            check=False,
        )
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, f"node smoke failed ({done.returncode}):\n{out}\n" + \
        done.stderr.decode(errors="replace")
    summary = json.loads(out)
    assert summary["ok"] is True and summary["mismatches"] == []
    for name in ("chat", "chat_stream", "completion", "completion_stream"):
        assert summary["results"][name]["text"] == NORMAL_TEXT, name
        assert summary["results"][name]["finish_reason"] == "stop", name
    for name in ("chat", "chat_stream", "completion"):
        usage = summary["results"][name]["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
            PROMPT_TOKENS, COMPLETION_TOKENS), name
    for name in ("responses", "responses_stream", "responses_helper"):
        result = summary["results"][name]
        assert result["text"] == NORMAL_TEXT and result["status"] == "completed", name
        assert (result["usage"]["input_tokens"], result["usage"]["output_tokens"]) == (
            PROMPT_TOKENS, COMPLETION_TOKENS), name
    assert summary["results"]["responses_stream"]["events"] == 2 + 2 + 10 + 3 + 1
    print(f"openai npm SDK {summary['sdk_version']} on node {summary['node']}: ok")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_script_is_plain_esm() -> None:
    """The smoke script stays runnable by hand: shebang, ESM, nothing imported but node:*."""
    text = NODE_SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env node\n")
    imports = [line for line in text.splitlines() if line.startswith("import ")]
    assert imports and all('from "node:' in line for line in imports), imports
    subprocess.run(["node", "--check", str(NODE_SCRIPT)], check=True)
