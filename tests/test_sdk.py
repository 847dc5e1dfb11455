"""The real openai Python SDK as a client, unchanged, against the proxy on loopback."""

from __future__ import annotations

import openai
import pytest
import trio

from .conftest import API_KEY, Proxy

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
