"""Tool-block handling: the sans-io gate, and each stop-after-tools mode over HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from quartproxy import contract
from quartproxy.backends.proto.codec import Delta, Message, TaskComplete
from quartproxy.completion import Completion, Content, End, Finished
from quartproxy.toolblocks import ToolBlockGate, ToolPolicy

from .conftest import AUTH, StartProxy, chat_body, read_stream

BLOCK_A = '<use_tool name="read">{"path":"a.txt"}</use_tool>'
BLOCK_B = '<use_tool name="list">{}</use_tool>'
PIECES = ["Let me check. ", "<use_", 'tool name="read">', '{"path":"a.txt"}', "</use", "_tool>",
          " then ", BLOCK_B, " I think the file says hi."]
FULL = "".join(PIECES) + " More after the pause."


def feed_all(pieces: list[str]) -> tuple[ToolBlockGate, list[str]]:
    gate = ToolBlockGate()
    return gate, [gate.feed(piece) for piece in pieces]


def test_gate_releases_plain_text_and_holds_partial_tags() -> None:
    gate, released = feed_all(["Hello <use", "_to", "ol x>", "body", "</use_tool>", " tail"])
    assert released == ["Hello ", "", "", "", "<use_tool x>body</use_tool>", ""]
    assert gate.blocks == 1
    assert gate.finish() == ""  # the tail after a complete block is dropped


def test_gate_releases_held_tail_when_another_block_completes() -> None:
    gate, released = feed_all(["<use_tool a>1</use_tool>", " between ", "<use_tool b>2",
                               "</use_tool>", " after"])
    assert released == ["<use_tool a>1</use_tool>", "", "", " between <use_tool b>2</use_tool>", ""]
    assert gate.blocks == 2


def test_gate_without_blocks_releases_everything_at_the_end() -> None:
    gate, released = feed_all(["a < b", " and <use", "less"])
    assert "".join(released) + gate.finish() == "a < b and <useless"
    gate, released = feed_all(["unclosed <use_tool x> never ends"])
    assert released == ["unclosed "]
    assert gate.finish() == "<use_tool x> never ends"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_gate_is_independent_of_how_text_is_split(size: int) -> None:
    text = "".join(PIECES)
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    gate, released = feed_all(pieces)
    assert "".join(released) == f"Let me check. {BLOCK_A} then {BLOCK_B}"
    assert gate.blocks == 2


def test_gate_is_linear_on_long_tails() -> None:
    gate = ToolBlockGate()
    gate.feed(BLOCK_A)
    for _ in range(100_000):
        assert gate.feed("x") == ""
    assert gate.blocks == 1


def policy(**kw: Any) -> ToolPolicy:
    base: dict[str, Any] = {"stop_after": False, "mode": "burst", "grace_s": 0.3,
                            "max_blocks": 0, "suppress_tail": False}
    base.update(kw)
    return ToolPolicy(**base)


@pytest.mark.parametrize("stream", [True, False])
def test_completion_cut_after_first_block(stream: bool) -> None:
    completion = Completion(stream=stream, prompt_chars=10,
                            tools=policy(stop_after=True, mode="first"))
    outputs = []
    for piece in PIECES:
        outputs += completion.feed(Delta(piece))
    assert isinstance(outputs[-1], Finished) and outputs[-1].reason == "stop"
    sent = "".join(o.text for o in outputs if isinstance(o, Content))
    assert sent == completion.text() == f"Let me check. {BLOCK_A}"


def test_completion_suppress_tail_only() -> None:
    completion = Completion(stream=True, prompt_chars=10, tools=policy(suppress_tail=True))
    for piece in PIECES:
        completion.feed(Delta(piece))
    completion.feed(Message("".join(PIECES)))
    completion.feed(TaskComplete("".join(PIECES)))
    assert completion.finish_reason == "stop"
    assert completion.text() == f"Let me check. {BLOCK_A} then {BLOCK_B}"


def test_completion_burst_cut_is_an_end_cause() -> None:
    completion = Completion(stream=False, prompt_chars=10, tools=policy(stop_after=True))
    for piece in PIECES:
        completion.feed(Delta(piece))
    assert not completion.done and completion.tool_blocks == 2
    assert completion.end(End.TOOL_CUT) == [Finished("stop")]
    assert completion.text() == f"Let me check. {BLOCK_A} then {BLOCK_B}"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, FULL),
        ({"suppress_tail_after_tools": True}, f"Let me check. {BLOCK_A} then {BLOCK_B}"),
        ({"stop_after_tools": True, "stop_after_tools_mode": "first"},
         f"Let me check. {BLOCK_A}"),
        ({"stop_after_tools": True, "tool_block_max": 2},
         f"Let me check. {BLOCK_A} then {BLOCK_B}"),
        # The grace runs in real time between the child's writes here, so the cut may come
        # after either block on a slow machine; its exact timing is in test_relay_timers.py.
        ({"stop_after_tools": True, "stop_after_tools_grace_ms": 200},
         (f"Let me check. {BLOCK_A}", f"Let me check. {BLOCK_A} then {BLOCK_B}")),
    ],
    ids=["off", "suppress_tail", "first", "max", "burst"],
)
async def test_tool_modes_over_http(
    start_proxy: StartProxy, settings: dict[str, Any], expected: str | tuple[str, ...]
) -> None:
    proxy = await start_proxy(**settings)
    # The child pauses 30 s after the tail: only a cut (or the end of the turn without
    # stop-after-tools) can finish these requests in time.
    pause = 30_000 if settings.get("stop_after_tools") else 0
    prompt = f"SCENARIO=tool_blocks PAUSE_MS={pause}"
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(prompt), headers=AUTH)
        _, raw = await read_stream(client, "/v1/chat/completions",
                                   chat_body(prompt, stream=True,
                                             stream_options={"include_usage": True}))
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] in allowed
    assert resp.json()["choices"][0]["finish_reason"] == "stop"
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=True))
    text, finish, usage = contract.collect_stream_content(raw)
    assert text in allowed and finish == "stop" and usage is not None
    await proxy.wait_idle()
