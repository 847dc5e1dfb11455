"""Every documented request parameter is type-checked, even those with no effect here.

OpenAI answers ``"temperature": "x"`` with a 400 that names the field; this server used to
answer 200, hiding the client's bug until it met the real API. Each case below lists values
OpenAI documents as valid (accepted) and invalid (400, ``param`` naming the field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quartproxy.config import Settings
from quartproxy.errors import ApiError
from quartproxy.models import ModelCatalog
from quartproxy.validation import CHAT_PARAMS, LEGACY_PARAMS, parse_chat, parse_legacy

from .conftest import AUTH, Proxy, chat_body

USER = [{"role": "user", "content": "hi"}]

# field -> (accepted values, rejected values with the param the 400 must name)
COMMON: dict[str, tuple[list[Any], list[tuple[Any, str]]]] = {
    "temperature": ([0, 0.7, 2, 2.0], [("x", "temperature"), (2.01, "temperature"),
                                       (-0.1, "temperature"), (True, "temperature"),
                                       ([1], "temperature")]),
    "top_p": ([0, 0.5, 1], [("1", "top_p"), (1.5, "top_p"), (-1, "top_p")]),
    "presence_penalty": ([-2, 0, 1.5, 2], [("0", "presence_penalty"), (2.5, "presence_penalty"),
                                           (-3, "presence_penalty")]),
    "frequency_penalty": ([-2, 2], [({}, "frequency_penalty"), (-2.1, "frequency_penalty")]),
    "seed": ([0, -5, 2**40], [(1.5, "seed"), ("7", "seed"), (False, "seed")]),
    "stop": (["\n", ["a"], ["a", "b", "c", "d"], []],
             [(5, "stop"), ([1], "stop[0]"), (["a", "b", "c", "d", "e"], "stop"),
              ({"a": 1}, "stop")]),
    "logit_bias": ([{}, {"50256": -100}, {"1": 100, "2": 0.5}],
                   [([1], "logit_bias"), ({"50256": 101}, "logit_bias.50256"),
                    ({"abc": 1}, "logit_bias"), ({"1": "x"}, "logit_bias.1"),
                    ({"-1": 1}, "logit_bias")]),
    "n": ([1], [(0, "n"), ("1", "n"), (1.0, "n"), (True, "n")]),
    "max_tokens": ([1, 100], [(0, "max_tokens"), ("9", "max_tokens"), (2.5, "max_tokens")]),
    "stream": ([True, False], [("true", "stream"), (1, "stream")]),
    "stream_options": ([{}, {"include_usage": True}, {"include_obfuscation": False}],
                       [("x", "stream_options"),
                        ({"include_usage": 1}, "stream_options.include_usage"),
                        ({"include_obfuscation": "no"}, "stream_options.include_obfuscation")]),
    "user": (["alice"], [(42, "user"), (["a"], "user")]),
    "model": (["codex-5"], [(5, "model"), ({"id": "x"}, "model")]),
}

CHAT_ONLY: dict[str, tuple[list[Any], list[tuple[Any, str]]]] = {
    "max_completion_tokens": ([1, 4096], [(0, "max_completion_tokens"),
                                          ("1", "max_completion_tokens")]),
    "logprobs": ([True, False], [(1, "logprobs"), ("true", "logprobs")]),
    "top_logprobs": ([0, 20], [(21, "top_logprobs"), (-1, "top_logprobs"),
                               (1.5, "top_logprobs")]),
    "response_format": ([{"type": "text"}, {"type": "json_object"},
                         {"type": "json_schema", "json_schema": {"name": "x", "schema": {},
                                                                 "strict": True}}],
                        [("json", "response_format"), ({}, "response_format.type"),
                         ({"type": "yaml"}, "response_format.type"),
                         ({"type": "json_schema"}, "response_format.json_schema"),
                         ({"type": "json_schema", "json_schema": {"schema": []}},
                          "response_format.json_schema.schema"),
                         ({"type": "json_schema", "json_schema": {"strict": "yes"}},
                          "response_format.json_schema.strict")]),
    "tools": ([[]], [("x", "tools"), ({"type": "function"}, "tools"), ([5], "tools[0]")]),
    "tool_choice": (["auto", "none"], [(5, "tool_choice"), (["auto"], "tool_choice")]),
    "parallel_tool_calls": ([True, False], [("false", "parallel_tool_calls"),
                                            (0, "parallel_tool_calls")]),
    "functions": ([], [("x", "functions"), ([1], "functions[0]")]),
    "function_call": ([], [(5, "function_call"), ([], "function_call")]),
    "metadata": ([{}, {"k": "v"}, {f"k{i}": "v" for i in range(16)}],
                 [("x", "metadata"), ({"k": 1}, "metadata.k"),
                  ({f"k{i}": "v" for i in range(17)}, "metadata"),
                  ({"k" * 65: "v"}, "metadata"), ({"k": "v" * 513}, "metadata.k")]),
    "store": ([True, False], [("yes", "store"), (1, "store")]),
    "service_tier": (["auto", "default", "flex", "priority"], [(1, "service_tier"),
                                                               (["auto"], "service_tier")]),
    "modalities": ([["text"], ["text", "audio"]], [("text", "modalities"),
                                                   (["video"], "modalities[0]"),
                                                   ([1], "modalities[0]")]),
    "audio": ([{"voice": "alloy", "format": "wav"}], [("alloy", "audio"), ([1], "audio")]),
    "prediction": ([{"type": "content", "content": "x"}], [("x", "prediction"),
                                                           ({"type": 1}, "prediction.type")]),
    "web_search_options": ([{}, {"search_context_size": "low"}],
                           [(True, "web_search_options"), ("low", "web_search_options")]),
    "reasoning_effort": (["low", "high"], [(3, "reasoning_effort"),
                                           (["low"], "reasoning_effort")]),
    "prompt_cache_key": (["k"], [(1, "prompt_cache_key")]),
    "safety_identifier": (["user-1"], [(1, "safety_identifier"), ({}, "safety_identifier")]),
    "verbosity": (["low", "medium", "high"], [(1, "verbosity")]),
    "reasoning": ([{"effort": "low"}], [("high", "reasoning")]),
    "prompt_cache_retention": (["24h"], [(24, "prompt_cache_retention")]),
    "prompt_cache_options": ([{"mode": "implicit"}], [("30m", "prompt_cache_options")]),
    "moderation": ([{}], [(True, "moderation")]),
}

LEGACY_ONLY: dict[str, tuple[list[Any], list[tuple[Any, str]]]] = {
    "echo": ([True, False], [("true", "echo"), (1, "echo")]),
    "suffix": (["end"], [(1, "suffix"), (["x"], "suffix")]),
    "best_of": ([0, 1, 20], [(21, "best_of"), (-1, "best_of"), ("2", "best_of")]),
    "logprobs": ([0, 5], [(6, "logprobs"), (True, "logprobs"), (-1, "logprobs"),
                          (1.5, "logprobs")]),
}


def cases(table: dict[str, tuple[list[Any], list[tuple[Any, str]]]],
          good: bool) -> list[Any]:
    out: list[Any] = []
    for field, (accepted, rejected) in table.items():
        if good:
            out += [pytest.param(field, value, None, id=f"{field}={value!r}"[:60])
                    for value in [*accepted, None]]
        else:
            out += [pytest.param(field, value, param, id=f"{field}={value!r}"[:60])
                    for value, param in rejected]
    return out


@pytest.fixture
def catalog(tmp_path: Path) -> ModelCatalog:
    return ModelCatalog(Settings(_env_file=None, codex_home=tmp_path))  # type: ignore[call-arg]


def chat(catalog: ModelCatalog, **fields: Any) -> Any:
    return parse_chat({"messages": USER, **fields}, catalog, max_prompt_tokens=0)


def legacy(catalog: ModelCatalog, **fields: Any) -> Any:
    return parse_legacy({"prompt": "hi", **fields}, catalog, max_prompt_tokens=0)


@pytest.mark.parametrize(("field", "value", "param"), cases(COMMON | CHAT_ONLY, good=True))
def test_chat_accepts_documented_values(
    catalog: ModelCatalog, field: str, value: Any, param: None
) -> None:
    chat(catalog, **{field: value})


@pytest.mark.parametrize(("field", "value", "param"), cases(COMMON | CHAT_ONLY, good=False))
def test_chat_rejects_wrong_types_and_ranges(
    catalog: ModelCatalog, field: str, value: Any, param: str
) -> None:
    with pytest.raises(ApiError) as info:
        chat(catalog, **{field: value})
    assert (info.value.status, info.value.type, info.value.param) == (
        400, "invalid_request_error", param)
    assert field in info.value.message


@pytest.mark.parametrize(("field", "value", "param"), cases(COMMON | LEGACY_ONLY, good=True))
def test_legacy_accepts_documented_values(
    catalog: ModelCatalog, field: str, value: Any, param: None
) -> None:
    legacy(catalog, **{field: value})


@pytest.mark.parametrize(("field", "value", "param"), cases(COMMON | LEGACY_ONLY, good=False))
def test_legacy_rejects_wrong_types_and_ranges(
    catalog: ModelCatalog, field: str, value: Any, param: str
) -> None:
    with pytest.raises(ApiError) as info:
        legacy(catalog, **{field: value})
    assert (info.value.status, info.value.type, info.value.param) == (
        400, "invalid_request_error", param)
    assert field in info.value.message


def test_every_table_entry_is_exercised() -> None:
    """A parameter added to a table without a case here is not tested: fail until it is."""
    assert set(CHAT_PARAMS) - {"messages"} <= set(COMMON | CHAT_ONLY)  # messages: elsewhere
    assert set(LEGACY_PARAMS) <= set(COMMON | LEGACY_ONLY)


def test_unknown_fields_are_still_accepted(catalog: ModelCatalog) -> None:
    chat(catalog, something_new={"x": [1, "y"]}, another=5, temperature_v2="x")
    legacy(catalog, something_new=True)


async def test_temperature_string_is_400_over_http(proxy: Proxy) -> None:
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(temperature="x"),
                                 headers=AUTH)
        legacy_resp = await client.post(
            "/v1/completions", json={"model": "codex-5", "prompt": "hi", "logprobs": 6},
            headers=AUTH)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "temperature"
    assert legacy_resp.status_code == 400
    assert legacy_resp.json()["error"]["param"] == "logprobs"
    assert proxy.pids() == []
