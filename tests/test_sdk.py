"""The real openai Python SDK as a client, unchanged, against the proxy on loopback."""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest
import trio

from .conftest import API_KEY, Proxy, StartProxy

pytestmark = pytest.mark.trio

NORMAL_TEXT = "Hello! This is a streamed answer from the fake upstream."
MESSAGES = [{"role": "user", "content": "hi"}]


def sync_client(proxy: Proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key=API_KEY, max_retries=0)


async def test_async_chat_non_stream(proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key=API_KEY, max_retries=0)
    async with client:
        completion = await client.chat.completions.create(model="codex-5", messages=MESSAGES)
    assert completion.choices[0].message.content == NORMAL_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 1214
    assert completion.usage.prompt_tokens_details is not None


async def test_async_chat_stream_with_usage(proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key=API_KEY, max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="codex-5-low", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == NORMAL_TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and
                c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 14
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def _sync_calls(proxy: Proxy) -> tuple[str | None, str, str]:
    client = sync_client(proxy)
    with client:
        chat = client.chat.completions.create(model="codex-5", messages=MESSAGES)  # type: ignore[arg-type]
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="codex-5", messages=MESSAGES, stream=True  # type: ignore[arg-type]
            )
            if chunk.choices
        )
        legacy = client.completions.create(model="codex-5", prompt="hi")
        legacy_stream = "".join(
            chunk.choices[0].text
            for chunk in client.completions.create(model="codex-5", prompt="hi", stream=True)
            if chunk.choices
        )
    assert legacy.choices[0].finish_reason == "stop"
    assert legacy_stream == legacy.choices[0].text
    return chat.choices[0].message.content, streamed, legacy.choices[0].text


async def test_sync_client_chat_and_legacy(proxy: Proxy) -> None:
    chat, streamed, legacy = await trio.to_thread.run_sync(_sync_calls, proxy)
    assert chat == streamed == legacy == NORMAL_TEXT


def _sync_errors(proxy: Proxy) -> list[type[Exception]]:
    raised: list[type[Exception]] = []
    client = sync_client(proxy)
    with client:
        for call in (
            lambda: client.chat.completions.create(model="gpt-4o", messages=MESSAGES),  # type: ignore[arg-type]
            lambda: openai.OpenAI(base_url=f"{proxy.base_url}/v1", api_key="wrong",
                                  max_retries=0).models.list(),
        ):
            try:
                call()
            except openai.APIStatusError as exc:
                raised.append(type(exc))
    return raised


async def test_sdk_maps_error_envelopes(start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = await start_proxy(protect_models=True)
    raised = await trio.to_thread.run_sync(_sync_errors, proxy)
    assert raised == [openai.NotFoundError, openai.AuthenticationError]


async def test_sdk_stream_sees_midstream_error(proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key=API_KEY, max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="codex-5", messages=[{"role": "user", "content": "SCENARIO=error"}],
            stream=True,
        )
        with pytest.raises(openai.APIError, match="400 Bad Request"):
            async for _ in stream:
                pass


# ---------------------------------------------------------------------------- Responses API


async def test_async_responses_create_and_stream(proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key=API_KEY, max_retries=0)
    async with client:
        response = await client.responses.create(
            model="codex-5", input="hi", instructions="Be brief.", metadata={"k": "v"},
        )
        async with client.responses.stream(model="codex-5-low", input="hi") as stream:
            types = [event.type async for event in stream]
            final = await stream.get_final_response()
        raw = await client.responses.create(model="codex-5", input="hi", stream=True)
        raw_types = [event.type async for event in raw]
    assert response.output_text == NORMAL_TEXT and response.status == "completed"
    assert response.id.startswith("resp_") and response.metadata == {"k": "v"}
    assert response.instructions == "Be brief."
    assert response.usage is not None and response.usage.total_tokens == 1214
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 10
    assert final.output_text == NORMAL_TEXT and final.model == "codex-5-low"
    assert final.usage is not None and final.usage.output_tokens == 14
    assert raw_types == types


def _sync_responses(proxy: Proxy) -> tuple[str, str, list[str], str | None]:
    client = sync_client(proxy)
    with client:
        response = client.responses.create(model="codex-5", input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        ])
        with client.responses.stream(model="codex-5", input="hi") as stream:
            deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
            final = stream.get_final_response()
        cut = client.responses.create(model="codex-5", input="SCENARIO=long",
                                      max_output_tokens=10)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert len(cut.output_text) == 40
    return response.output_text, final.output_text, deltas, cut.incomplete_details.reason


async def test_sync_responses_create_and_stream(proxy: Proxy) -> None:
    created, streamed, deltas, reason = await trio.to_thread.run_sync(_sync_responses, proxy)
    assert created == streamed == "".join(deltas) == NORMAL_TEXT
    assert len(deltas) == 10 and reason == "max_output_tokens"


async def test_sdk_responses_stream_failure_and_errors(proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=f"{proxy.base_url}/v1", api_key=API_KEY, max_retries=0)
    async with client:
        stream = await client.responses.create(
            model="codex-5", input="SCENARIO=retry_diverge", stream=True)
        events = [event async for event in stream]
        with pytest.raises(openai.BadRequestError) as bad:
            await client.responses.create(model="codex-5", input="hi",
                                          previous_response_id="resp_1")
        with pytest.raises(openai.BadRequestError) as overflow:
            await client.responses.create(model="codex-5", input="SCENARIO=error")
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.error is not None
    assert failed.response.error.code == "upstream_retry_diverged"  # type: ignore[comparison-overlap]
    assert failed.response.output_text == "This stream will be"
    assert bad.value.code == "unsupported_parameter" and bad.value.param == "previous_response_id"
    assert overflow.value.code == "context_length_exceeded"


# ---------------------------------------------------------------------------- function calling
#
# The app-server backend (fixtures/fake_app_server.py as the worker) runs client tools natively:
# the fake calls the declared tools in order with arguments built from their schemas, and a
# follow-up request whose history ends with the results is answered "Tool results: <id>=<out>; …".

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"]}
TIME = {"type": "object", "properties": {"tz": {"type": "string"}}}
CHAT_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time.",
                                      "parameters": TIME}},
]
RESPONSES_TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "Weather.", "parameters": WEATHER},
    {"type": "function", "name": "get_time", "description": "Time.", "parameters": TIME},
]
ASK = "Weather and time in Paris? SCENARIO=tool_calls_parallel"
EXPECTED_CALLS = [("get_weather", {"city": "Paris", "unit": "celsius"}),
                  ("get_time", {"tz": "Europe/Paris"})]
CALL_ID = re.compile(r"call_fake_\d+_\d+")


@pytest.fixture
async def app_proxy(start_proxy: StartProxy) -> Proxy:
    proxy = await start_proxy(backend="app-server", workers=1)
    await proxy.wait_ready()
    return proxy


def call_list(calls: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, parsed arguments) of SDK tool-call objects, checking their ids on the way."""
    assert calls, "no tool calls"
    ids = [call.id for call in calls]
    assert len(set(ids)) == len(ids) and all(CALL_ID.fullmatch(i) for i in ids), ids
    return [(call.function.name, json.loads(call.function.arguments)) for call in calls]


def accumulate(chunks: list[Any]) -> tuple[list[dict[str, Any]], str | None]:
    """delta.tool_calls put together by index, as SDK users do: (calls, finish_reason)."""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for part in choice.delta.tool_calls or []:
            call = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = part.id or call["id"]
            if part.function is not None:
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish


def follow_up_messages(message: Any, outputs: list[str]) -> list[Any]:
    """The conversation an agent sends back: the assistant's calls, then one result each."""
    return [
        {"role": "user", "content": ASK},
        message,  # the SDK's own message object, as the openai docs do it
        *({"role": "tool", "tool_call_id": call.id, "content": output}
          for call, output in zip(message.tool_calls, outputs, strict=True)),
    ]


def check_answer(text: str | None, ids: list[str], outputs: list[str]) -> None:
    assert text == "Tool results: " + "; ".join(
        f"{i}={o}" for i, o in zip(ids, outputs, strict=True))


async def test_async_chat_tool_calls_round_trip(app_proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=f"{app_proxy.base_url}/v1", api_key=API_KEY,
                                max_retries=0)
    outputs = ["18C and sunny", "14:05"]
    async with client:
        first = await client.chat.completions.create(
            model="codex-5", messages=[{"role": "user", "content": ASK}], tools=CHAT_TOOLS)
        stream = await client.chat.completions.create(
            model="codex-5", messages=[{"role": "user", "content": ASK}], tools=CHAT_TOOLS,
            stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        message = first.choices[0].message
        answer = await client.chat.completions.create(
            model="codex-5", messages=follow_up_messages(message, outputs), tools=CHAT_TOOLS)
    assert first.choices[0].finish_reason == "tool_calls" and message.content is None
    assert call_list(message.tool_calls) == EXPECTED_CALLS
    streamed, finish = accumulate(chunks)
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == EXPECTED_CALLS
    assert all(CALL_ID.fullmatch(c["id"]) for c in streamed)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 1200
    assert answer.choices[0].finish_reason == "stop"
    check_answer(answer.choices[0].message.content,
                 [call.id for call in message.tool_calls or []], outputs)


async def test_async_responses_function_calls_round_trip(app_proxy: Proxy) -> None:
    client = openai.AsyncOpenAI(base_url=f"{app_proxy.base_url}/v1", api_key=API_KEY,
                                max_retries=0)
    async with client:
        response = await client.responses.create(model="codex-5", input=ASK,
                                                 tools=RESPONSES_TOOLS)
        async with client.responses.stream(model="codex-5", input=ASK,
                                           tools=RESPONSES_TOOLS) as stream:
            final = await stream.get_final_response()
        calls = [item for item in response.output if item.type == "function_call"]
        outputs = [f"out-{i}" for i in range(len(calls))]
        # The agent loop the SDK docs show: the response's output items go back as input,
        # followed by one function_call_output per call.
        answer = await client.responses.create(model="codex-5", tools=RESPONSES_TOOLS, input=[
            {"role": "user", "content": ASK}, *response.output,
            *({"type": "function_call_output", "call_id": c.call_id, "output": o}
              for c, o in zip(calls, outputs, strict=True))])
    assert response.status == "completed"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == EXPECTED_CALLS
    assert all(CALL_ID.fullmatch(c.call_id) and c.id.startswith("fc_") for c in calls)
    streamed = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in streamed] == EXPECTED_CALLS
    assert answer.status == "completed"
    check_answer(answer.output_text, [c.call_id for c in calls], outputs)


def _sync_tool_session(proxy: Proxy) -> dict[str, Any]:
    client = sync_client(proxy)
    outputs = ["18C and sunny", "14:05"]
    with client:
        first = client.chat.completions.create(
            model="codex-5", messages=[{"role": "user", "content": ASK}], tools=CHAT_TOOLS)
        chunks = list(client.chat.completions.create(
            model="codex-5", messages=[{"role": "user", "content": ASK}], tools=CHAT_TOOLS,
            stream=True))
        # The SDK's own stream accumulator (it checks indexes and ids as it goes).
        with client.chat.completions.stream(
            model="codex-5", messages=[{"role": "user", "content": ASK}], tools=CHAT_TOOLS,
        ) as helper:
            helped = helper.get_final_completion()
        message = first.choices[0].message
        answer = client.chat.completions.create(
            model="codex-5", messages=follow_up_messages(message, outputs), tools=CHAT_TOOLS)
        response = client.responses.create(model="codex-5", input=ASK, tools=RESPONSES_TOOLS)
        calls = [item for item in response.output if item.type == "function_call"]
        responses_answer = client.responses.create(model="codex-5", tools=RESPONSES_TOOLS, input=[
            {"role": "user", "content": ASK}, *calls,
            *({"type": "function_call_output", "call_id": c.call_id, "output": o}
              for c, o in zip(calls, outputs, strict=True))])
    return {"first": first, "chunks": chunks, "helped": helped, "answer": answer,
            "outputs": outputs, "calls": calls, "responses_answer": responses_answer}


async def test_sync_tool_calls_round_trip(app_proxy: Proxy) -> None:
    got = await trio.to_thread.run_sync(_sync_tool_session, app_proxy)
    message = got["first"].choices[0].message
    assert call_list(message.tool_calls) == EXPECTED_CALLS
    streamed, finish = accumulate(got["chunks"])
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == EXPECTED_CALLS
    helped = got["helped"].choices[0]
    assert helped.finish_reason == "tool_calls"
    assert call_list(helped.message.tool_calls) == EXPECTED_CALLS
    check_answer(got["answer"].choices[0].message.content,
                 [call.id for call in message.tool_calls], got["outputs"])
    calls = got["calls"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == EXPECTED_CALLS
    check_answer(got["responses_answer"].output_text, [c.call_id for c in calls],
                 got["outputs"])
