"""``/v1/responses`` request validation, sans-io: every field is honoured, accepted or a 400
that names it."""

from __future__ import annotations

from typing import Any

import pytest

from quartproxy.config import Settings
from quartproxy.conversation import Item, ToolCallRef
from quartproxy.errors import ApiError
from quartproxy.models import ModelCatalog
from quartproxy.responses_request import FIELDS, ResponsesRequest, parse_responses


@pytest.fixture
def catalog() -> ModelCatalog:
    return ModelCatalog(Settings(_env_file=None, codex_model="gpt-5"))  # type: ignore[call-arg]


def parse(catalog: ModelCatalog, *, structured: bool = False, max_prompt: int = 0,
          **body: Any) -> ResponsesRequest:
    body.setdefault("model", "codex-5")
    body.setdefault("input", "hi")
    return parse_responses(body, catalog, max_prompt_tokens=max_prompt,
                           structured_output=structured)


def error(catalog: ModelCatalog, **body: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(catalog, **body)
    return info.value


# ---------------------------------------------------------------------------- accepted shapes


def test_string_input_and_defaults(catalog: ModelCatalog) -> None:
    parsed = parse(catalog)
    req = parsed.request
    assert req.kind == "responses" and req.model == "codex-5" and req.effective_model == "gpt-5"
    assert req.prompt == "[user] hi"
    assert (req.stream, req.max_tokens, req.effort, req.user, req.tools) == (
        False, None, None, None, None)
    assert parsed.echo["store"] is False and parsed.echo["metadata"] == {}
    assert parsed.echo["text"] == {"format": {"type": "text"}}
    assert parsed.echo["tool_choice"] == "auto" and parsed.echo["tools"] == []
    assert parsed.echo["reasoning"] == {"effort": None, "summary": None}


def test_message_items_all_roles_and_part_kinds(catalog: ModelCatalog) -> None:
    parsed = parse(catalog, instructions="Be brief.", input=[
        {"type": "message", "role": "developer", "content": "dev rules"},
        {"role": "system", "content": [{"type": "input_text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                     {"type": "input_text", "text": "here"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "seen", "annotations": []}]},
        "plain string item",
    ])
    conversation = parsed.request.conversation
    assert conversation.instructions == "Be brief."
    assert conversation.items == (
        Item("developer", "dev rules"), Item("system", "sys"), Item("user", "look\nhere"),
        Item("assistant", "seen"), Item("user", "plain string item"),
    )
    assert conversation.instruction_text() == "Be brief.\n\ndev rules\n\nsys"
    assert parsed.request.prompt.startswith("[system] Be brief.\n[developer] dev rules")


def test_function_call_items_become_tool_calls(catalog: ModelCatalog) -> None:
    parsed = parse(catalog, input=[
        {"role": "user", "content": "weather and time?"},
        {"type": "reasoning", "id": "rs_1", "summary": []},  # replayed output: dropped
        {"type": "message", "role": "assistant", "content": "Checking."},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
        {"type": "function_call", "id": "fc_2", "call_id": "c2", "name": "time",
         "arguments": '{"tz":"UTC"}', "status": "completed"},
        {"type": "function_call_output", "call_id": "c2", "output": "12:00"},
        {"type": "function_call_output", "call_id": "c1",
         "output": [{"type": "input_text", "text": "sunny"}]},
        {"role": "user", "content": "thanks"},
    ])
    assert parsed.request.conversation.items == (
        Item("user", "weather and time?"),
        Item("assistant", "Checking.", (ToolCallRef("c1", "weather", "{}"),
                                        ToolCallRef("c2", "time", '{"tz":"UTC"}'))),
        Item("tool", "12:00", (), "c2"),
        Item("tool", "sunny", (), "c1"),
        Item("user", "thanks"),
    )
    assert parsed.request.conversation.has_tool_history


def test_call_without_a_preceding_assistant_message(catalog: ModelCatalog) -> None:
    parsed = parse(catalog, input=[
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"},
    ])
    assert parsed.request.conversation.items[1] == Item("assistant", "", (
        ToolCallRef("c1", "f", "{}"),))


def test_honoured_fields(catalog: ModelCatalog) -> None:
    parsed = parse(catalog, model="codex-5-low", stream=True, max_output_tokens=64,
                   user="u1", reasoning={"effort": "HIGH", "summary": "auto"},
                   metadata={"team": "a"}, store=True, temperature=0.2, top_p=0.5,
                   parallel_tool_calls=False, truncation="auto", top_logprobs=3,
                   prompt_cache_key="k", safety_identifier="s",
                   include=["reasoning.encrypted_content"], service_tier="flex",
                   stream_options={"include_obfuscation": False},
                   text={"format": {"type": "text"}, "verbosity": "low"})
    req = parsed.request
    assert (req.stream, req.max_tokens, req.user, req.effort) == (True, 64, "u1", "high")
    echo = parsed.echo
    assert echo["reasoning"] == {"effort": "high", "summary": "auto"}
    assert (echo["temperature"], echo["top_p"], echo["top_logprobs"]) == (0.2, 0.5, 3)
    assert echo["store"] is False  # accepted, but nothing is stored
    assert echo["service_tier"] == "default"
    assert echo["parallel_tool_calls"] is False and echo["truncation"] == "auto"
    assert echo["metadata"] == {"team": "a"} and echo["max_output_tokens"] == 64
    assert echo["text"] == {"format": {"type": "text"}, "verbosity": "low"}
    assert (echo["prompt_cache_key"], echo["safety_identifier"], echo["user"]) == (
        "k", "s", "u1")


def test_model_alias_effort(catalog: ModelCatalog) -> None:
    assert parse(catalog, model="codex-5-minimal").request.effort == "minimal"
    assert parse(catalog, model="codex-5-minimal",
                 reasoning={"effort": "high"}).request.effort == "high"


def test_function_tools(catalog: ModelCatalog) -> None:
    tool = {"type": "function", "name": "get_weather", "description": "d",
            "parameters": {"type": "object", "properties": {}}, "strict": True}
    parsed = parse(catalog, tools=[tool], tool_choice={"type": "function", "name": "get_weather"})
    assert parsed.request.tools is not None
    assert parsed.request.tools.choice == "function"
    assert parsed.echo["tools"] == [tool]
    assert parsed.echo["tool_choice"] == {"type": "function", "name": "get_weather"}


def test_json_schema_becomes_the_output_schema_on_app_server(catalog: ModelCatalog) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
    parsed = parse(catalog, structured=True, text={"format": fmt})
    assert parsed.request.output_schema == schema
    assert parsed.echo["text"] == {"format": fmt}


def test_prompt_guard_names_input(catalog: ModelCatalog) -> None:
    with pytest.raises(ApiError) as info:
        parse(catalog, max_prompt=5, input="word " * 100)
    assert (info.value.code, info.value.param) == ("context_length_exceeded", "input")


def test_every_refused_field_is_tested_below() -> None:
    """The field table and the 400 cases below stay in step."""
    refused = {name for name, rule in FIELDS.items() if rule.startswith("400") and " " not in name}
    assert refused == {"background", "previous_response_id", "conversation", "prompt",
                       "max_tool_calls"}
    assert refused <= {param for _, _, param, _ in BAD}


# ---------------------------------------------------------------------------- 400s

BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, body fields, param, code)
    ("not-stored", {"previous_response_id": "resp_1"}, "previous_response_id",
     "unsupported_parameter"),
    ("conversation", {"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
    ("background", {"background": True}, "background", "unsupported_parameter"),
    ("background-type", {"background": "yes"}, "background", "invalid_request_error"),
    ("prompt-template", {"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
    ("max-tool-calls", {"max_tool_calls": 3}, "max_tool_calls", "unsupported_parameter"),
    ("input-missing", {"input": None}, "input", "invalid_request_error"),
    ("input-empty-string", {"input": ""}, "input", "invalid_request_error"),
    ("input-empty-list", {"input": []}, "input", "invalid_request_error"),
    ("input-number", {"input": 5}, "input", "invalid_request_error"),
    ("item-not-object", {"input": [5]}, "input[0]", "invalid_request_error"),
    ("unknown-item", {"input": [{"type": "web_search_call", "id": "x"}]}, "input[0].type",
     "unsupported_parameter"),
    ("item-reference", {"input": [{"type": "item_reference", "id": "msg_1"}]},
     "input[0].type", "unsupported_parameter"),
    ("bad-role", {"input": [{"role": "tool", "content": "x"}]}, "input[0].role",
     "invalid_request_error"),
    ("no-content", {"input": [{"role": "user"}]}, "input[0].content", "invalid_request_error"),
    ("content-number", {"input": [{"role": "user", "content": 3}]}, "input[0].content",
     "invalid_request_error"),
    ("image", {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is this"},
        {"type": "input_image", "image_url": "data:..."}]}]}, "input[0].content[1].type",
     "unsupported_parameter"),
    ("file", {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type", "unsupported_parameter"),
    ("audio", {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "input[0].content[0].type", "unsupported_parameter"),
    ("unknown-part", {"input": [{"role": "user", "content": [{"type": "sticker"}]}]},
     "input[0].content[0].type", "invalid_request_error"),
    ("text-part-no-text", {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
     "input[0].content[0].text", "invalid_request_error"),
    ("call-no-id", {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input[0].call_id", "invalid_request_error"),
    ("call-args-not-str", {"input": [{"type": "function_call", "call_id": "c", "name": "f",
                                      "arguments": {}}]}, "input[0].arguments",
     "invalid_request_error"),
    ("output-unknown-call", {"input": [{"type": "function_call_output", "call_id": "c",
                                        "output": "x"}]}, "input[0].call_id",
     "invalid_request_error"),
    ("output-image", {"input": [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c",
         "output": [{"type": "input_image", "image_url": "x"}]}]},
     "input[1].output[0].type", "unsupported_parameter"),
    ("call-unanswered", {"input": [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"role": "user", "content": "next"}]}, "input[1]", "invalid_request_error"),
    ("call-unanswered-at-end", {"input": [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]},
     "input[1]", "invalid_request_error"),
    ("new-call-before-answers", {"input": [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "1"},
        {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"}]},
     "input[1]", "invalid_request_error"),
    ("duplicate-call-id", {"input": [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c", "name": "g", "arguments": "{}"}]},
     "input[1].call_id", "invalid_request_error"),
    ("instructions-type", {"instructions": ["a"]}, "instructions", "invalid_request_error"),
    ("model-type", {"model": 5}, "model", "invalid_request_error"),
    ("model-unknown", {"model": "gpt-4o"}, "model", "model_not_found"),
    ("stream-string", {"stream": "true"}, "stream", "invalid_request_error"),
    ("max-output-zero", {"max_output_tokens": 0}, "max_output_tokens", "invalid_request_error"),
    ("max-output-string", {"max_output_tokens": "9"}, "max_output_tokens",
     "invalid_request_error"),
    ("reasoning-type", {"reasoning": "high"}, "reasoning", "invalid_request_error"),
    ("effort", {"reasoning": {"effort": "max"}}, "reasoning.effort", "invalid_request_error"),
    ("summary", {"reasoning": {"summary": "long"}}, "reasoning.summary",
     "invalid_request_error"),
    ("metadata-type", {"metadata": ["a"]}, "metadata", "invalid_request_error"),
    ("metadata-value", {"metadata": {"a": 1}}, "metadata.a", "invalid_request_error"),
    ("metadata-too-many", {"metadata": {str(i): "v" for i in range(17)}}, "metadata",
     "invalid_request_error"),
    ("metadata-key-long", {"metadata": {"k" * 65: "v"}}, "metadata", "invalid_request_error"),
    ("store-type", {"store": "no"}, "store", "invalid_request_error"),
    ("user-type", {"user": 1}, "user", "invalid_request_error"),
    ("temperature-range", {"temperature": 2.5}, "temperature", "invalid_request_error"),
    ("temperature-type", {"temperature": "hot"}, "temperature", "invalid_request_error"),
    ("top-p-range", {"top_p": -0.1}, "top_p", "invalid_request_error"),
    ("top-p-bool", {"top_p": True}, "top_p", "invalid_request_error"),
    ("text-type", {"text": "plain"}, "text", "invalid_request_error"),
    ("text-format-type", {"text": {"format": "json"}}, "text.format", "invalid_request_error"),
    ("text-format-unknown", {"text": {"format": {"type": "yaml"}}}, "text.format.type",
     "invalid_request_error"),
    ("json-object", {"text": {"format": {"type": "json_object"}}}, "text.format",
     "unsupported_parameter"),
    ("json-schema-on-proto", {"text": {"format": {"type": "json_schema", "name": "a",
                                                  "schema": {"type": "object"}}}},
     "text.format", "unsupported_parameter"),
    ("json-schema-no-name", {"text": {"format": {"type": "json_schema",
                                                 "schema": {"type": "object"}}}},
     "text.format.name", "invalid_request_error"),
    ("json-schema-no-schema", {"text": {"format": {"type": "json_schema", "name": "a"}}},
     "text.format.schema", "invalid_request_error"),
    ("verbosity", {"text": {"verbosity": "loud"}}, "text.verbosity", "invalid_request_error"),
    ("web-search-tool", {"tools": [{"type": "web_search"}]}, "tools[0].type",
     "unsupported_parameter"),
    ("file-search-tool", {"tools": [{"type": "file_search", "vector_store_ids": []}]},
     "tools[0].type", "unsupported_parameter"),
    ("tool-name", {"tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name",
     "invalid_request_error"),
    ("tool-choice-unknown", {"tools": [{"type": "function", "name": "f"}],
                             "tool_choice": {"type": "function", "name": "g"}}, "tool_choice",
     "invalid_request_error"),
    ("tool-choice-builtin", {"tools": [{"type": "function", "name": "f"}],
                             "tool_choice": {"type": "file_search"}}, "tool_choice",
     "invalid_request_error"),
    ("parallel-type", {"parallel_tool_calls": "no"}, "parallel_tool_calls",
     "invalid_request_error"),
    ("include-type", {"include": "reasoning.encrypted_content"}, "include",
     "invalid_request_error"),
    ("include-items", {"include": [1]}, "include", "invalid_request_error"),
    ("truncation", {"truncation": "middle"}, "truncation", "invalid_request_error"),
    ("service-tier", {"service_tier": "gold"}, "service_tier", "invalid_request_error"),
    ("top-logprobs", {"top_logprobs": 21}, "top_logprobs", "invalid_request_error"),
    ("prompt-cache-key", {"prompt_cache_key": 1}, "prompt_cache_key", "invalid_request_error"),
    ("prompt-cache-retention", {"prompt_cache_retention": "1y"}, "prompt_cache_retention",
     "invalid_request_error"),
    ("safety-identifier", {"safety_identifier": ["x"]}, "safety_identifier",
     "invalid_request_error"),
    ("stream-options-type", {"stream_options": True}, "stream_options", "invalid_request_error"),
    ("stream-options-obfuscation", {"stream_options": {"include_obfuscation": "no"}},
     "stream_options.include_obfuscation", "invalid_request_error"),
]


@pytest.mark.parametrize(("body", "param", "code"), [pytest.param(*c[1:], id=c[0]) for c in BAD])
def test_bad_field_is_a_400_naming_it(
    catalog: ModelCatalog, body: dict[str, Any], param: str, code: str
) -> None:
    found = error(catalog, **body)
    assert (found.param, found.code) == (param, code), found
    assert found.status == (404 if code == "model_not_found" else 400)
    assert found.type == "invalid_request_error"


def test_refusal_messages_say_why(catalog: ModelCatalog) -> None:
    assert "send the whole conversation in 'input'" in error(
        catalog, previous_response_id="resp_1").message
    assert "nothing is stored" in error(catalog, conversation={"id": "c"}).message
    assert "app-server" in error(catalog, text={"format": {
        "type": "json_schema", "name": "a", "schema": {}}}).message
    assert "'web_search'" in error(catalog, tools=[{"type": "web_search"}]).message
    assert "input_image" in error(catalog, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": "x"}]}]).message


def test_body_must_be_an_object(catalog: ModelCatalog) -> None:
    for body in ([], "hi", None):
        with pytest.raises(ApiError) as info:
            parse_responses(body, catalog, max_prompt_tokens=0)
        assert info.value.status == 400


def test_nulls_mean_absent(catalog: ModelCatalog) -> None:
    parsed = parse(catalog, previous_response_id=None, background=False, prompt=None,
                   max_tool_calls=None, conversation=None, text=None, tools=None,
                   tool_choice=None, reasoning=None, metadata=None, temperature=None)
    assert parsed.request.tools is None and parsed.echo["metadata"] == {}
