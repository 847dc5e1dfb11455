"""The Responses rendering, sans-io: events fed to a Completion, rendered as JSON and as SSE.

Every stream is run through the contract checker, every event and object through the openai
SDK's strict models, and completed streams through the SDK's own stream accumulator. Tool
calls are fed as the app-server backend produces them (ToolCall events, then ResponseDone).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from quartproxy import contract
from quartproxy.completion import Completion, End
from quartproxy.events import (
    Counts,
    Delta,
    Error,
    ErrorKind,
    Event,
    Message,
    ReasoningDelta,
    ReasoningPart,
    ResponseDone,
    Retry,
    TaskComplete,
    TokenCount,
    ToolCall,
)
from quartproxy.render_responses import (
    ResponseHead,
    ResponsesStreamRenderer,
    response_json,
    status_of,
)

from .responses_support import sdk_accumulate, sdk_events, sdk_response

COUNTS = TokenCount(Counts(input_tokens=100, output_tokens=20, cached_input_tokens=8,
                           reasoning_output_tokens=6))
HELLO = [Delta("Hello"), Delta(", world"), COUNTS, TaskComplete("Hello, world")]
CALL_A = ToolCall("call_a", "get_weather", '{"city":"Paris"}')
CALL_B = ToolCall("call_b", "get_time", "{}")
REASONING = [ReasoningPart(), ReasoningDelta("Thinking "), ReasoningDelta("hard."),
             ReasoningPart(), ReasoningDelta("Second part.")]


def ids() -> Callable[[str], str]:
    counter = itertools.count()
    return lambda prefix: f"{prefix}_{next(counter)}"


def head() -> ResponseHead:
    return ResponseHead("resp_test", 1_700_000_000, "codex-5", {"metadata": {"k": "v"}})


def stream(events: Sequence[Event], *, end: End | None = None, batched: bool = False,
           **options: Any) -> tuple[bytes, Completion]:
    """The SSE body for ``events`` (one render per event, or all in one batch)."""
    completion = Completion(stream=True, prompt_chars=40, **options)
    renderer = ResponsesStreamRenderer(head(), ids=ids())
    body = renderer.opening()
    outputs = []
    for event in events:
        fed = completion.feed(event)
        if batched:
            outputs += fed
        else:
            body += renderer.render(fed, completion)
    if end is not None:
        outputs_end = completion.end(end)
        if batched:
            outputs += outputs_end
        else:
            body += renderer.render(outputs_end, completion)
    if batched:
        body += renderer.render(outputs, completion)
    return body, completion


def non_stream(events: Sequence[Event], *, end: End | None = None,
               **options: Any) -> tuple[dict[str, Any], Completion]:
    completion = Completion(stream=False, prompt_chars=40, **options)
    for event in events:
        completion.feed(event)
    if end is not None:
        completion.end(end)
    return response_json(completion, head(), ids=ids()), completion


def checked_stream(body: bytes) -> contract.ResponsesTranscript:
    contract.assert_valid(contract.check_responses_stream(body, model="codex-5"))
    sdk_events(body)
    transcript = contract.collect_responses_stream(body)
    assert transcript.response is not None
    sdk_response(transcript.response)
    return transcript


def checked_json(doc: dict[str, Any]) -> dict[str, Any]:
    contract.assert_valid(contract.check_responses_json(doc, model="codex-5"))
    sdk_response(doc)
    return doc


def without_ids(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k != "id"} for item in output]


# ---------------------------------------------------------------------------- plain answers


def test_plain_answer_json_and_stream_agree() -> None:
    doc, _ = non_stream(HELLO)
    checked_json(doc)
    assert doc["status"] == "completed" and doc["incomplete_details"] is None
    assert doc["output"] == [{"type": "message", "id": "msg_0", "status": "completed",
                              "role": "assistant", "content": [
                                  {"type": "output_text", "annotations": [],
                                   "text": "Hello, world"}]}]
    assert doc["usage"] == {"input_tokens": 100, "input_tokens_details": {
                                "cached_tokens": 8, "cache_write_tokens": 0},
                            "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 6},
                            "total_tokens": 120}
    assert doc["metadata"] == {"k": "v"}
    assert sdk_response(doc).output_text == "Hello, world"

    body, _ = stream(HELLO)
    transcript = checked_stream(body)
    assert transcript.text == "Hello, world" and transcript.terminal == "response.completed"
    assert transcript.response is not None
    assert without_ids(transcript.response["output"]) == without_ids(doc["output"])
    assert transcript.usage == doc["usage"]
    assert transcript.types() == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert [e["sequence_number"] for e in transcript.events] == list(range(10))
    types, final = sdk_accumulate(body)
    assert final is not None and final.output_text == "Hello, world"
    assert types[-1] == "response.completed"


def test_batching_does_not_change_the_bytes() -> None:
    events = [*REASONING, Delta("a"), Delta("b"), CALL_A, CALL_B, ResponseDone(None)]
    one_by_one, _ = stream(events)
    together, _ = stream(events, batched=True)
    assert one_by_one == together


def test_text_deltas_are_sent_as_they_come_and_done_has_the_whole_text() -> None:
    pieces = ["Héllo", ' "quoted"', "\nline\u2028", " 👋🏽", " back\\slash"]
    body, completion = stream([*map(Delta, pieces), TaskComplete(None)])
    transcript = checked_stream(body)
    deltas = [e["delta"] for e in transcript.events if e["type"] == "response.output_text.delta"]
    assert deltas == pieces
    (done,) = [e for e in transcript.events if e["type"] == "response.output_text.done"]
    assert done["text"] == "".join(pieces) == completion.text()


def test_empty_answer_is_an_empty_message() -> None:
    doc, _ = non_stream([COUNTS, TaskComplete(None)])
    checked_json(doc)
    assert doc["output"][0]["content"][0]["text"] == ""
    body, _ = stream([COUNTS, TaskComplete(None)])
    transcript = checked_stream(body)
    assert transcript.response is not None
    assert without_ids(transcript.response["output"]) == without_ids(doc["output"])


def test_two_messages_are_one_item_joined_like_chat() -> None:
    events = [Delta("One."), Message("One."), Delta("Two."), Message("Two."), TaskComplete(None)]
    doc, _ = non_stream(events)
    body, _ = stream(events)
    assert sdk_response(doc).output_text == "One.\n\nTwo."
    assert checked_stream(body).text == "One.\n\nTwo."


# ---------------------------------------------------------------------------- reasoning


def test_reasoning_item_precedes_the_message() -> None:
    events = [*REASONING, *HELLO]
    doc, _ = non_stream(events)
    checked_json(doc)
    assert doc["output"][0] == {"type": "reasoning", "id": "rs_0", "summary": [
        {"type": "summary_text", "text": "Thinking hard."},
        {"type": "summary_text", "text": "Second part."}]}
    assert doc["output"][1]["type"] == "message"

    body, _ = stream(events)
    transcript = checked_stream(body)
    assert transcript.types()[2:14] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
    ]
    assert transcript.response is not None
    assert without_ids(transcript.response["output"]) == without_ids(doc["output"])
    _, final = sdk_accumulate(body)
    assert final is not None and final.output[0].type == "reasoning"


def test_reasoning_without_answer_text_still_ends_with_a_message() -> None:
    body, _ = stream([*REASONING, TaskComplete(None)])
    transcript = checked_stream(body)
    assert transcript.response is not None
    assert [item["type"] for item in transcript.response["output"]] == ["reasoning", "message"]


def test_reasoning_after_the_text_started_is_only_in_the_json() -> None:
    """The stream cannot insert an item before one it already sent: what it announced is what
    its final response lists."""
    events = [Delta("Hi"), ReasoningDelta("late thought"), TaskComplete(None)]
    body, _ = stream(events)
    transcript = checked_stream(body)
    assert transcript.response is not None
    assert [item["type"] for item in transcript.response["output"]] == ["message"]
    doc, _ = non_stream(events)
    assert [item["type"] for item in doc["output"]] == ["reasoning", "message"]


# ---------------------------------------------------------------------------- function calls


def test_tool_calls_after_text() -> None:
    events = [Delta("Let me check."), CALL_A, CALL_B, ResponseDone(Counts(50, 10))]
    doc, completion = non_stream(events)
    checked_json(doc)
    assert completion.finish_reason == "tool_calls" and doc["status"] == "completed"
    assert without_ids(doc["output"]) == [
        {"type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "annotations": [], "text": "Let me check."}]},
        {"type": "function_call", "call_id": "call_a", "name": "get_weather",
         "arguments": '{"city":"Paris"}', "status": "completed"},
        {"type": "function_call", "call_id": "call_b", "name": "get_time", "arguments": "{}",
         "status": "completed"},
    ]
    body, _ = stream(events)
    transcript = checked_stream(body)
    assert transcript.response is not None
    assert without_ids(transcript.response["output"]) == without_ids(doc["output"])
    # The message is done before the first call is added; each call is one block.
    assert transcript.types()[2:] == [
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    types, final = sdk_accumulate(body)
    assert final is not None and "response.function_call_arguments.delta" in types
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_a", "get_weather", '{"city":"Paris"}'), ("call_b", "get_time", "{}")]


def test_tool_calls_without_text_have_no_message_item() -> None:
    events = [*REASONING, CALL_A, ResponseDone(None)]
    doc, _ = non_stream(events)
    checked_json(doc)
    assert [item["type"] for item in doc["output"]] == ["reasoning", "function_call"]
    body, _ = stream(events)
    transcript = checked_stream(body)
    assert transcript.response is not None
    assert without_ids(transcript.response["output"]) == without_ids(doc["output"])
    _, final = sdk_accumulate(body)
    assert final is not None and final.output_text == ""


def test_a_call_without_arguments_has_no_delta() -> None:
    body, _ = stream([ToolCall("call_e", "ping", ""), ResponseDone(None)])
    transcript = checked_stream(body)
    assert "response.function_call_arguments.delta" not in transcript.types()
    assert transcript.response is not None
    assert transcript.response["output"][0]["arguments"] == ""


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    events = [CALL_A, CALL_B, ResponseDone(None)]
    doc, _ = non_stream(events, parallel_calls=False)
    body, _ = stream(events, parallel_calls=False)
    assert [item["call_id"] for item in doc["output"]] == ["call_a"]
    transcript = checked_stream(body)
    assert transcript.response is not None
    assert [item["call_id"] for item in transcript.response["output"]] == ["call_a"]


def test_a_deadline_after_a_call_still_completes_with_the_call() -> None:
    body, _ = stream([CALL_A], end=End.TIMEOUT)
    transcript = checked_stream(body)
    assert transcript.status == "completed"
    doc, _ = non_stream([CALL_A], end=End.TIMEOUT)
    assert doc["status"] == "completed" and doc["output"][0]["type"] == "function_call"


# ---------------------------------------------------------------------------- cut answers


@pytest.mark.parametrize(
    ("events", "end"),
    [
        ([Delta("0123456789abcdef")], None),  # max_output_tokens (limit 2 tokens: 8 chars)
        ([Delta("partial")], End.EOF),  # truncation
        ([Delta("partial")], End.TIMEOUT),
        ([Delta("partial")], End.IDLE),
        ([Delta("partial")], End.SHUTDOWN),
        ([Delta("partial"), Error("boom")], None),  # a codex error after text
        ([Delta("partial"), TaskComplete(None, "length")], None),  # codex's own length
    ],
    ids=["max_output_tokens", "eof", "timeout", "idle", "shutdown", "error_after_text",
         "codex_length"],
)
def test_every_cut_is_incomplete_max_output_tokens(events: list[Event], end: End | None) -> None:
    options = {"max_tokens": 2} if end is None and len(events) == 1 else {}
    body, completion = stream(events, end=end, **options)
    transcript = checked_stream(body)
    assert completion.finish_reason == "length"
    assert transcript.terminal == "response.incomplete"
    assert transcript.response is not None
    assert transcript.response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert transcript.response["output"][-1]["status"] == "incomplete"
    types, final = sdk_accumulate(body)
    assert types[-1] == "response.incomplete" and final is None
    doc, _ = non_stream(events, end=end, **options)
    checked_json(doc)
    assert doc["status"] == "incomplete" and doc["incomplete_details"] == {
        "reason": "max_output_tokens"}
    assert doc["output"][0]["status"] == "incomplete"
    assert sdk_response(doc).output_text == transcript.text


def test_max_output_tokens_cut_text() -> None:
    events = [Delta("0123456789abcdef"), TaskComplete(None)]
    body, _ = stream(events, max_tokens=2)
    doc, _ = non_stream(events, max_tokens=2)
    assert checked_stream(body).text == "01234567" == sdk_response(doc).output_text


def test_content_filter_is_incomplete_content_filter() -> None:
    doc, _ = non_stream([Delta("x"), TaskComplete(None, "content_filter")])
    assert status_of(Completion(stream=False, prompt_chars=0)).status == "completed"
    assert doc["status"] == "incomplete"
    assert doc["incomplete_details"] == {"reason": "content_filter"}


# ---------------------------------------------------------------------------- failures


def test_error_before_text_fails_the_stream_with_the_chat_code() -> None:
    events = [Error("unexpected status 400: context window exceeded", ErrorKind.CONTEXT_WINDOW)]
    body, completion = stream(events)
    transcript = checked_stream(body)
    assert completion.error is not None and completion.error.status == 400
    assert transcript.terminal == "response.failed"
    assert transcript.response is not None
    assert transcript.response["error"] == {"code": "context_length_exceeded",
                                            "message": completion.error.message}
    assert transcript.response["output"] == []
    assert transcript.response["status"] == "failed"
    types, final = sdk_accumulate(body)
    assert types[-1] == "response.failed" and final is None


def test_retry_divergence_fails_after_the_sent_text() -> None:
    events = [Delta("This stream"), Retry("again"), Delta("Something else"), TaskComplete(None)]
    body, _ = stream(events)
    transcript = checked_stream(body)
    assert transcript.text == "This stream"
    assert transcript.response is not None
    assert transcript.response["error"]["code"] == "upstream_retry_diverged"
    (message,) = transcript.response["output"]
    assert message["status"] == "incomplete"
    assert message["content"][0]["text"] == "This stream"
    # Non-stream never showed the abandoned attempt: it answers with the retry.
    doc, _ = non_stream(events)
    assert sdk_response(doc).output_text == "Something else"


def test_timeout_without_text() -> None:
    body, _ = stream([COUNTS], end=End.TIMEOUT)
    transcript = checked_stream(body)
    assert transcript.response is not None
    assert transcript.response["error"]["code"] == "request_timeout"
    _, completion = non_stream([COUNTS], end=End.TIMEOUT)
    assert completion.error is not None and completion.error.status == 504


def test_disconnect_renders_nothing() -> None:
    completion = Completion(stream=True, prompt_chars=1)
    renderer = ResponsesStreamRenderer(head(), ids=ids())
    renderer.opening()
    renderer.render(completion.feed(Delta("x")), completion)
    assert completion.end(End.DISCONNECT) == []
    assert renderer.render([], completion) == b""


def test_nothing_is_rendered_after_the_terminal_event() -> None:
    completion = Completion(stream=True, prompt_chars=1)
    renderer = ResponsesStreamRenderer(head(), ids=ids())
    body = renderer.opening() + renderer.render(completion.feed(Delta("x")), completion)
    outputs = completion.feed(TaskComplete(None))
    # Anything after the terminal output in the same batch is dropped.
    body += renderer.render([*outputs, *completion.feed(Delta("late")), *outputs], completion)
    assert renderer.render(outputs, completion) == b""
    checked_stream(body)
    assert body.endswith(b"\n\n") and body.count(b"event: response.completed") == 1


def test_keepalive_is_a_comment() -> None:
    renderer = ResponsesStreamRenderer(head(), ids=ids())
    assert renderer.keepalive(123) == b": keepalive 123\n\n"


def test_opening_is_created_then_in_progress() -> None:
    events = contract.parse_responses_sse(ResponsesStreamRenderer(head(), ids=ids()).opening())
    docs = [event.json for event in events]
    assert [d["type"] for d in docs] == ["response.created", "response.in_progress"]
    assert all(d["response"]["status"] == "in_progress" and d["response"]["output"] == []
               and d["response"]["usage"] is None for d in docs)
    assert [event.name for event in events] == ["response.created", "response.in_progress"]


def test_event_bytes_are_event_line_then_one_data_line() -> None:
    body, _ = stream(HELLO)
    for block in body.split(b"\n\n")[:-1]:
        event_line, data_line = block.split(b"\n")
        name = event_line.removeprefix(b"event: ")
        assert json.loads(data_line.removeprefix(b"data: "))["type"] == name.decode()


def test_tool_block_gate_text_is_what_was_streamed() -> None:
    """With PROXY_STOP_AFTER_TOOLS the gate holds text back and releases it later; the done
    events carry exactly the released text."""
    from quartproxy.toolblocks import ToolPolicy

    policy = ToolPolicy(stop_after=True, mode="first", grace_s=0.3, max_blocks=0,
                        suppress_tail=True)
    events = [Delta("Intro <use_to"), Delta('ol name="x">{}</use_tool>'), Delta(" tail"),
              TaskComplete(None)]
    body, completion = stream(events, tools=policy)
    transcript = checked_stream(body)
    assert completion.finish_reason == "stop"
    assert transcript.text == completion.text() == 'Intro <use_tool name="x">{}</use_tool>'
    doc, _ = non_stream(events, tools=policy)
    assert sdk_response(doc).output_text == transcript.text
