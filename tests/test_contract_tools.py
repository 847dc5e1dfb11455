"""The contract checker on tool-call streams and bodies: a valid one passes, and each broken
rule is reported by name (one mutation per rule)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quartproxy.contract import check_chat_json, check_chat_stream

PREFIX = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
          "system_fingerprint": None}


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    doc = {**PREFIX, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": finish}]}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def head(index: int, call_id: str, name: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "id": call_id, "type": "function",
                            "function": {"name": name, "arguments": ""}}]}


def args(index: int, text: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": text}}]}


ROLE = chunk({"role": "assistant", "content": ""})
DONE = b"data: [DONE]\n\n"
VALID = [ROLE, chunk(head(0, "c0", "f")), chunk(args(0, '{"a":')), chunk(args(0, " 1}")),
         chunk(head(1, "c1", "g")), chunk(args(1, "{}")), chunk({}, "tool_calls"), DONE]


def rules(frames: list[bytes]) -> set[str]:
    return {v.rule for v in check_chat_stream(b"".join(frames), include_usage=False)}


def test_valid_tool_call_stream_passes() -> None:
    assert rules(VALID) == set()


@pytest.mark.parametrize(("frames", "rule"), [
    ([ROLE, chunk(head(1, "c1", "g")), chunk(args(1, "{}")), chunk({}, "tool_calls"), DONE],
     "tool-call-index"),
    ([ROLE, chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
      chunk({}, "tool_calls"), DONE], "bad-tool-call"),
    ([ROLE, chunk(head(0, "c0", "f")), chunk(args(0, "{}")), chunk({}, "stop"), DONE],
     "finish-without-tool-calls"),
    ([ROLE, chunk({"content": "hi"}), chunk({}, "tool_calls"), DONE],
     "tool-calls-finish-without-calls"),
    ([ROLE, chunk(head(0, "c0", "f")), chunk(args(0, '{"a"')), chunk({}, "tool_calls"), DONE],
     "bad-tool-arguments"),
    ([ROLE, chunk(head(0, "c0", "f")), chunk({}, "tool_calls"), chunk(args(0, "{}")), DONE],
     "content-after-finish"),
    ([ROLE, chunk({"tool_calls": [], "content": ""}), chunk({}, "stop"), DONE],
     "bad-tool-call"),
])
def test_each_broken_rule_is_named(frames: list[bytes], rule: str) -> None:
    assert rule in rules(frames)


def body(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m",
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2,
                      "prompt_tokens_details": {"cached_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}}}


CALL = {"id": "c0", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def json_rules(message: dict[str, Any], finish: str) -> set[str]:
    return {v.rule for v in check_chat_json(body(message, finish))}


def test_valid_tool_call_body_passes() -> None:
    message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [CALL]}
    assert json_rules(message, "tool_calls") == set()
    message_with_text = {**message, "content": "Let me check."}
    assert json_rules(message_with_text, "tool_calls") == set()


@pytest.mark.parametrize(("message", "finish", "rule"), [
    ({"role": "assistant", "content": None, "refusal": None, "tool_calls": [CALL]}, "stop",
     "finish-without-tool-calls"),
    ({"role": "assistant", "content": "x", "refusal": None}, "tool_calls",
     "tool-calls-finish-without-calls"),
    ({"role": "assistant", "content": None, "refusal": None}, "stop", "bad-message"),
    ({"role": "assistant", "content": None, "refusal": None,
      "tool_calls": [{**CALL, "type": "tool"}]}, "tool_calls", "bad-tool-call"),
    ({"role": "assistant", "content": None, "refusal": None,
      "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{"}}]}, "tool_calls",
     "bad-tool-arguments"),
])
def test_each_broken_body_rule_is_named(message: dict[str, Any], finish: str, rule: str) -> None:
    assert rule in json_rules(message, finish)
