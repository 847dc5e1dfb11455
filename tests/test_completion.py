"""The completion state machine and its two renderings, sans-io.

The core of this file is the agreement table: every row is one event sequence (plus an optional
end cause and max_tokens) covering a row of lifecycle.md's finish_reason table. Each row is fed to
a stream Completion rendered as SSE by :class:`StreamRenderer` and to a non-stream Completion
rendered by :func:`json_body` (or the error envelope); both bodies go through the contract
checker, and content, finish_reason and usage must be identical between them.

Stream and non-stream differ ON PURPOSE in exactly two situations (lifecycle.md, Content), which
are therefore not in the table but tested separately with explicit expectations:

1. a retry whose new attempt diverges from what was already streamed: the stream cannot take the
   text back and ends with an error frame ``upstream_retry_diverged``; non-stream simply answers
   with the full second attempt;
2. an ``agent_message`` contradicting its deltas: the stream keeps what it sent; non-stream
   answers with the message ("message wins").
"""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import pytest

from quartproxy import completion as completion_module
from quartproxy.backends.proto.codec import (
    Counts,
    Delta,
    Error,
    Event,
    Message,
    Other,
    Retry,
    TaskComplete,
    TokenCount,
    TurnAborted,
    parse_token_count,
)
from quartproxy.completion import (
    Completion,
    Content,
    End,
    Failed,
    Finished,
    Output,
    backend_message,
)
from quartproxy.contract import (
    assert_valid,
    check_chat_json,
    check_chat_stream,
    check_completion_json,
    check_completion_stream,
    check_error_json,
    collect_stream_content,
    parse_sse,
)
from quartproxy.errors import ApiError
from quartproxy.events import ErrorKind, ResponseDone, ToolCall
from quartproxy.render import StreamRenderer, json_body
from quartproxy.usage import estimate_tokens, make_usage

PROMPT_CHARS = 41  # -> 11 estimated prompt tokens
MODEL = "codex-5"
CREATED = 1710000000

USAGE_FIELDS = {
    "input_tokens": 1200,
    "cached_input_tokens": 1024,
    "output_tokens": 90,
    "reasoning_output_tokens": 64,
    "total_tokens": 1290,
}
FLAT = parse_token_count({"type": "token_count", **USAGE_FIELDS})
NESTED = parse_token_count(
    {
        "type": "token_count",
        "info": {
            "total_token_usage": USAGE_FIELDS,
            "last_token_usage": {**USAGE_FIELDS, "input_tokens": 7, "output_tokens": 1},
            "model_context_window": 272000,
        },
    }
)
NESTED_RATE = parse_token_count(
    {
        "type": "token_count",
        "info": {"total_token_usage": USAGE_FIELDS, "last_token_usage": USAGE_FIELDS},
        "rate_limits": {"primary": {"used_percent": 42.5}, "secondary": None},
    }
)
LEGACY = parse_token_count({"type": "token_count", "prompt_tokens": 30, "completion_tokens": 5})
INFO_NULL = parse_token_count({"type": "token_count", "info": None, "rate_limits": None})
FULL_USAGE = (1200, 90, 1024, 64)
EARLY = Counts(input_tokens=100, output_tokens=1, cached_input_tokens=0, reasoning_output_tokens=0)


# --------------------------------------------------------------------------------------------
# The agreement table


@dataclass(frozen=True)
class Row:
    name: str
    events: tuple[Event, ...]
    end: End | None = None
    max_tokens: int | None = None
    finish: str | None = None  # expected finish_reason; None for a failure row
    text: str = ""
    usage: tuple[int, int, int, int] | None = None  # codex counts; None = estimate
    error: tuple[int, str] | None = None  # (status, code) for a failure row
    error_message: str | None = None
    source: str | None = None  # counts_source; default: "codex" with usage, else "estimate"

    @property
    def counts_source(self) -> str:
        if self.source is not None:
            return self.source
        return "estimate" if self.usage is None else "codex"


ROWS = [
    # task_complete after text -> stop (or the reason task_complete carries, if valid)
    Row(
        "stop_after_text",
        (Delta("Hel"), Delta("lo"), Message("Hello"), TokenCount(Counts(12, 2, 0, 0)),
         TaskComplete("Hello")),
        finish="stop", text="Hello", usage=(12, 2, 0, 0),
    ),
    Row("tc_length", (Delta("Hi"), TaskComplete("Hi", "length")), finish="length", text="Hi"),
    Row(
        "tc_content_filter", (Delta("Hi"), TaskComplete("Hi", "content_filter")),
        finish="content_filter", text="Hi",
    ),
    Row(
        # A finish_reason of tool_calls without any collected call would make clients look for
        # calls that are not there: it becomes stop.
        "tc_tool_calls", (Delta("Hi"), TaskComplete("Hi", "tool_calls")),
        finish="stop", text="Hi",
    ),
    Row("tc_invalid_reason", (Delta("Hi"), TaskComplete("Hi", "eos")), finish="stop", text="Hi"),
    Row("tc_empty_reason", (Delta("Hi"), TaskComplete("Hi", "")), finish="stop", text="Hi"),
    # max_tokens reached: text cut at max_tokens*4 chars, finish length
    Row(
        "max_tokens_across_deltas",
        (Delta("abcdef"), Delta("ghijkl"), Message("abcdefghijkl"), TaskComplete("abcdefghijkl")),
        max_tokens=2, finish="length", text="abcdefgh",
    ),
    Row(
        "max_tokens_one_big_delta", (Delta("abcdefghij"), TaskComplete("abcdefghij")),
        max_tokens=1, finish="length", text="abcd",
    ),
    Row(
        "max_tokens_exact_then_more", (Delta("abcd"), Delta("e"), TaskComplete("abcde")),
        max_tokens=1, finish="length", text="abcd",
    ),
    Row(
        "max_tokens_message_only", (Message("abcdefghijkl"), TaskComplete("abcdefghijkl")),
        max_tokens=2, finish="length", text="abcdefgh",
    ),
    Row(
        "max_tokens_message_extends_deltas",
        (Delta("abc"), Message("abcdefghijkl"), TaskComplete("abcdefghijkl")),
        max_tokens=2, finish="length", text="abcdefgh",
    ),
    Row(
        "max_tokens_second_message",
        (Delta("abc"), Message("abc"), Delta("defghijk"), Message("defghijk"),
         TaskComplete("defghijk")),
        max_tokens=2, finish="length", text="abc\n\ndef",
    ),
    Row(
        "max_tokens_not_reached", (Delta("abc"), Message("abc"), TaskComplete("abc")),
        max_tokens=100, finish="stop", text="abc",
    ),
    Row(
        "max_tokens_with_counts",
        (TokenCount(FLAT), Delta("abcdefghij"), TaskComplete("abcdefghij")),
        max_tokens=1, finish="length", text="abcd", usage=FULL_USAGE,
    ),
    # child's stdout closed with text -> length
    Row("eof_with_text", (Delta("partial"),), end=End.EOF, finish="length", text="partial"),
    Row(
        "eof_with_text_and_counts", (TokenCount(NESTED), Delta("partial")), end=End.EOF,
        finish="length", text="partial", usage=FULL_USAGE,
    ),
    # deadlines / early finalize / shutdown with text -> length
    Row("timeout_with_text", (Delta("part"),), end=End.TIMEOUT, finish="length", text="part"),
    Row("idle_with_text", (Delta("part"),), end=End.IDLE, finish="length", text="part"),
    Row(
        "early_finalize_with_text", (Delta("part"),), end=End.EARLY_FINALIZE,
        finish="length", text="part",
    ),
    Row("shutdown_with_text", (Delta("part"),), end=End.SHUTDOWN, finish="length", text="part"),
    # error with no text -> 502 backend_error, message = codex's first line
    Row(
        "error_no_text",
        (Retry("stream error: retrying 1/5"), Error("boom happened\nsecond line"),
         TaskComplete(None)),
        error=(502, "backend_error"), error_message="boom happened",
    ),
    Row(
        "error_no_text_no_task_complete", (Other("task_started"), Error("upstream down")),
        error=(502, "backend_error"), error_message="upstream down",
    ),
    # error after text -> length (+ usage)
    Row(
        "error_after_text", (Delta("part"), Error("boom"), TaskComplete(None)),
        finish="length", text="part",
    ),
    Row(
        "error_after_text_with_counts",
        (TokenCount(NESTED_RATE), Delta("part"), Error("boom"), TaskComplete(None)),
        finish="length", text="part", usage=FULL_USAGE,
    ),
    # no text + EOF / timeout / idle
    Row(
        "no_text_eof", (Other("task_started"), TokenCount(INFO_NULL)), end=End.EOF,
        error=(502, "backend_error"),
    ),
    Row("no_text_timeout", (), end=End.TIMEOUT, error=(504, "request_timeout")),
    Row("no_text_idle", (Other("task_started"),), end=End.IDLE, error=(504, "idle_timeout")),
    Row("no_text_early_finalize", (), end=End.EARLY_FINALIZE, error=(504, "request_timeout")),
    # turn_aborted: text in hand -> length; none -> 502
    Row(
        "aborted_with_text", (Delta("Streaming is"), TurnAborted("interrupted")),
        finish="length", text="Streaming is",
    ),
    Row("aborted_no_text", (TurnAborted("interrupted"),), error=(502, "backend_error")),
    # a retry that replays identically: no duplicate text
    Row(
        "retry_identical",
        (Delta("Hello "), Delta("wor"), Retry("retrying 1/5"), Delta("Hello world"),
         Message("Hello world"), TokenCount(LEGACY), TaskComplete("Hello world")),
        finish="stop", text="Hello world", usage=(30, 5, 0, 0),
    ),
    Row(
        "retry_identical_split_differently",
        (Delta("Hel"), Delta("lo wor"), Retry("r"), Delta("H"), Delta("ello w"),
         Delta("orld!"), Message("Hello world!"), TaskComplete("Hello world!")),
        finish="stop", text="Hello world!",
    ),
    Row(
        "retry_twice_identical",
        (Delta("Hi "), Retry("r1"), Delta("Hi "), Delta("there"), Retry("r2"),
         Delta("Hi there, friend"), Message("Hi there, friend"), TaskComplete("Hi there, friend")),
        finish="stop", text="Hi there, friend",
    ),
    Row(
        "retry_before_any_text",
        (Retry("r"), Retry("r"), Delta("ok"), TaskComplete("ok")), finish="stop", text="ok",
    ),
    Row(
        "retry_identical_multi_message",
        (Delta("One."), Message("One."), Delta("Tw"), Retry("r"), Delta("One."), Message("One."),
         Delta("Two."), Message("Two."), TaskComplete("Two.")),
        finish="stop", text="One.\n\nTwo.",
    ),
    Row(
        "retry_identical_then_error",
        (Delta("This stream"), Retry("r"), Delta("This stream will"), Error("gone"),
         TaskComplete(None)),
        finish="length", text="This stream will",
    ),
    # several assistant messages in one turn: blank line between them
    Row(
        "multi_message",
        (Delta("First."), Message("First."), Other("exec_command_begin"),
         Other("exec_command_end"), TokenCount(EARLY), Delta("Sec"), Delta("ond."),
         Message("Second."), TokenCount(NESTED), TaskComplete("Second.")),
        finish="stop", text="First.\n\nSecond.", usage=FULL_USAGE,
    ),
    Row(
        "multi_message_only_messages",
        (Message("A"), Message("B"), Message("C"), TaskComplete("C")),
        finish="stop", text="A\n\nB\n\nC",
    ),
    # agent_message without deltas; task_complete's last_agent_message alone
    Row("message_only", (Message("Whole answer"), TaskComplete("Whole answer")),
        finish="stop", text="Whole answer"),
    Row("task_complete_only", (TaskComplete("From last message"),),
        finish="stop", text="From last message"),
    Row(
        "message_extends_deltas", (Delta("Hel"), Message("Hello"), TaskComplete("Hello")),
        finish="stop", text="Hello",
    ),
    Row(
        "empty_message_after_deltas", (Delta("Hi"), Message(""), TaskComplete("Hi")),
        finish="stop", text="Hi",
    ),
    Row("empty_turn", (Other("task_started"), TaskComplete(None)), finish="stop", text=""),
    # reasoning / tool activity is not answer text
    Row(
        "reasoning_not_text",
        (Other("agent_reasoning_section_break"), Other("agent_reasoning_delta"),
         Other("agent_reasoning"), Delta("Answer."), Message("Answer."), TokenCount(FLAT),
         TaskComplete("Answer.")),
        finish="stop", text="Answer.", usage=FULL_USAGE,
    ),
    # token_count in every shape, info:null after real counts, later replaces earlier
    Row("counts_flat", (Delta("x"), TokenCount(FLAT), TaskComplete("x")),
        finish="stop", text="x", usage=FULL_USAGE),
    Row("counts_nested", (Delta("x"), TokenCount(NESTED), TaskComplete("x")),
        finish="stop", text="x", usage=FULL_USAGE),
    Row("counts_nested_rate_limits", (Delta("x"), TokenCount(NESTED_RATE), TaskComplete("x")),
        finish="stop", text="x", usage=FULL_USAGE),
    Row("counts_legacy", (Delta("x"), TokenCount(LEGACY), TaskComplete("x")),
        finish="stop", text="x", usage=(30, 5, 0, 0)),
    Row(
        "counts_info_null_after_real",
        (TokenCount(INFO_NULL), Delta("x"), TokenCount(NESTED), TokenCount(INFO_NULL),
         TaskComplete("x")),
        finish="stop", text="x", usage=FULL_USAGE,
    ),
    Row(
        "counts_later_replaces_earlier",
        (TokenCount(EARLY), Delta("x"), TokenCount(FLAT), TaskComplete("x")),
        finish="stop", text="x", usage=FULL_USAGE,
    ),
    Row(
        "counts_partial_is_estimate_for_missing",
        (Delta("abcdefgh"), TokenCount(Counts(input_tokens=500)), TaskComplete("abcdefgh")),
        finish="stop", text="abcdefgh",
        usage=(500, 2, 0, 0), source="estimate",  # completion estimated from 8 chars
    ),
    # events after the terminal change nothing
    Row(
        "events_after_terminal_ignored",
        (Delta("done"), TaskComplete("done"), Delta(" more"), TokenCount(FLAT), Error("late")),
        finish="stop", text="done",
    ),
    # codex's error kinds decide the status when there is no answer text; with text -> length
    Row("err_usage_limit", (Error("You've hit your usage limit.", ErrorKind.USAGE_LIMIT),
                            TaskComplete(None)), error=(429, "insufficient_quota")),
    Row("err_rate_limit", (Error("exceeded retry limit, last status: 429", ErrorKind.RATE_LIMIT),
                           TaskComplete(None)), error=(429, "rate_limit_exceeded")),
    Row("err_context", (Error("ran out of room", ErrorKind.CONTEXT_WINDOW), TaskComplete(None)),
        error=(400, "context_length_exceeded")),
    Row("err_kind_after_text", (Delta("Hi"), Error("usage limit", ErrorKind.USAGE_LIMIT),
                                TaskComplete(None)), finish="length", text="Hi"),
    # the app-server worker carrying the turn died / a slow client overflowed the turn's buffer
    Row("worker_exit_text", (Delta("Hi"),), end=End.WORKER_EXIT, finish="length", text="Hi"),
    Row("worker_exit_no_text", (), end=End.WORKER_EXIT, error=(502, "worker_exited")),
    Row("overflow_text", (Delta("Hi"),), end=End.OVERFLOW, finish="length", text="Hi"),
    Row("overflow_no_text", (), end=End.OVERFLOW, error=(502, "backend_error")),
    # app-server per-response usage adds up when no whole-turn total came
    Row("response_counts", (Delta("Hi"), ResponseDone(EARLY), ResponseDone(EARLY),
                            TaskComplete(None)), finish="stop", text="Hi", usage=(200, 2, 0, 0)),
    Row("total_beats_response_counts", (Delta("Hi"), ResponseDone(EARLY), TokenCount(NESTED),
                                        TaskComplete(None)),
        finish="stop", text="Hi", usage=FULL_USAGE),
]


@dataclass
class Rendered:
    completion: Completion
    body: bytes
    outputs: list[Output] = field(default_factory=list)


def _renderer(legacy: bool, include_usage: bool) -> StreamRenderer:
    return StreamRenderer(
        legacy=legacy,
        completion_id="cmpl-test" if legacy else "chatcmpl-test",
        created=CREATED,
        model=MODEL,
        include_usage=include_usage,
    )


def run_stream(
    events: tuple[Event, ...] | list[Event], end: End | None = None, *, legacy: bool = False,
    include_usage: bool = False, max_tokens: int | None = None,
) -> Rendered:
    completion = Completion(stream=True, prompt_chars=PROMPT_CHARS, max_tokens=max_tokens)
    renderer = _renderer(legacy, include_usage)
    parts = [renderer.opening()]
    outputs: list[Output] = []
    for event in events:
        out = completion.feed(event)
        outputs += out
        parts.append(renderer.render(out, completion))
    if end is not None:
        out = completion.end(end)
        outputs += out
        parts.append(renderer.render(out, completion))
    return Rendered(completion, b"".join(parts), outputs)


def run_plain(
    events: tuple[Event, ...] | list[Event], end: End | None = None,
    *, max_tokens: int | None = None,
) -> Completion:
    completion = Completion(stream=False, prompt_chars=PROMPT_CHARS, max_tokens=max_tokens)
    for event in events:
        completion.feed(event)
    if end is not None:
        completion.end(end)
    return completion


def plain_body(completion: Completion, *, legacy: bool) -> dict[str, Any]:
    """What the non-stream route answers: json_body when finished, else the error envelope."""
    if isinstance(completion.outcome, Failed):
        return completion.outcome.error.payload()
    assert isinstance(completion.outcome, Finished)
    return json_body(
        completion, legacy=legacy, completion_id="cmpl-test" if legacy else "chatcmpl-test",
        created=CREATED, model=MODEL,
    )


def stream_error_frame(body: bytes) -> dict[str, Any] | None:
    errors = [f.json for f in parse_sse(body) if isinstance(f.json, dict) and "error" in f.json]
    assert len(errors) <= 1
    return errors[0] if errors else None


def expected_usage(row: Row) -> dict[str, Any]:
    if row.usage is None:
        prompt, completion = estimate_tokens(PROMPT_CHARS), estimate_tokens(len(row.text))
        cached = reasoning = 0
    else:
        prompt, completion, cached, reasoning = row.usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def test_table_covers_every_end_cause_and_finish_reason() -> None:
    ends = {row.end for row in ROWS}
    assert ends >= {None, End.EOF, End.TIMEOUT, End.IDLE, End.EARLY_FINALIZE, End.SHUTDOWN,
                    End.WORKER_EXIT, End.OVERFLOW}
    finishes = {row.finish for row in ROWS}
    assert finishes >= {"stop", "length", "content_filter", None}
    codes = {row.error[1] for row in ROWS if row.error}
    assert codes == {"backend_error", "request_timeout", "idle_timeout", "insufficient_quota",
                     "rate_limit_exceeded", "context_length_exceeded", "worker_exited"}
    assert len({row.name for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("include_usage", [False, True], ids=["no_usage", "usage"])
@pytest.mark.parametrize("legacy", [False, True], ids=["chat", "legacy"])
@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.name)
def test_stream_and_non_stream_agree(row: Row, legacy: bool, include_usage: bool) -> None:
    stream = run_stream(
        row.events, row.end, legacy=legacy, include_usage=include_usage,
        max_tokens=row.max_tokens,
    )
    plain = run_plain(row.events, row.end, max_tokens=row.max_tokens)
    assert stream.completion.done and plain.done

    # Both bodies satisfy the wire contract.
    check_stream = check_completion_stream if legacy else check_chat_stream
    assert_valid(check_stream(stream.body, include_usage=include_usage, model=MODEL))
    doc = plain_body(plain, legacy=legacy)
    stream_text, stream_reason, stream_usage = collect_stream_content(stream.body)
    assert stream.body.endswith(b"data: [DONE]\n\n")
    assert stream.body.count(b"data: [DONE]") == 1
    # exactly one terminal output, and it is the last one
    terminals = [o for o in stream.outputs if isinstance(o, Finished | Failed)]
    assert terminals == [stream.outputs[-1]]

    if row.error is not None:
        status, code = row.error
        assert_valid(check_error_json(doc))
        assert isinstance(plain.outcome, Failed)
        assert plain.outcome.error.status == status
        assert doc["error"]["code"] == code
        frame = stream_error_frame(stream.body)
        assert frame is not None, "a failing stream ends with an error frame"
        assert frame["error"]["code"] == doc["error"]["code"]
        assert frame["error"]["message"] == doc["error"]["message"]
        if row.error_message is not None:
            assert doc["error"]["message"] == row.error_message
        assert stream_reason is None
        assert stream_text == plain.text() == ""
        assert stream_usage is None
        return

    assert stream_error_frame(stream.body) is None
    assert_valid((check_completion_json if legacy else check_chat_json)(doc, model=MODEL))
    choice = doc["choices"][0]
    plain_text = choice["text"] if legacy else choice["message"]["content"]
    assert plain_text == stream_text == row.text
    assert choice["finish_reason"] == stream_reason == row.finish
    assert doc["usage"] == expected_usage(row)
    if include_usage:
        assert stream_usage == doc["usage"]
        usage_chunks = [
            f for f in parse_sse(stream.body)
            if isinstance(f.json, dict) and f.json.get("choices") == []
        ]
        assert len(usage_chunks) == 1
    else:
        assert stream_usage is None
        assert b'"usage"' not in stream.body
    assert plain.usage().source == stream.completion.usage().source == row.counts_source


# --------------------------------------------------------------------------------------------
# The two deliberate differences


def test_diverging_retry_stream_errors_non_stream_answers_second_attempt() -> None:
    events: list[Event] = [
        Delta("This stream"), Delta(" will be"), Retry("stream error: retrying 1/5"),
        Delta("Hello!"), Delta(" A new answer."), Message("Hello! A new answer."),
        TaskComplete("Hello! A new answer."),
    ]
    stream = run_stream(events, include_usage=True)
    assert_valid(check_chat_stream(stream.body, include_usage=True))
    text, reason, usage = collect_stream_content(stream.body)
    assert text == "This stream will be"  # what went out before the retry; nothing after
    assert reason is None and usage is None
    frame = stream_error_frame(stream.body)
    assert frame is not None
    assert frame["error"]["code"] == "upstream_retry_diverged"
    assert isinstance(stream.completion.outcome, Failed)
    assert stream.completion.outcome.error.status == 502

    plain = run_plain(events)
    assert plain.finish_reason == "stop"
    assert plain.text() == "Hello! A new answer."
    assert plain.attempts == 2


def test_diverging_retry_after_partial_replay() -> None:
    events: list[Event] = [Delta("Hello world"), Retry("r"), Delta("Hello"), Delta(" there")]
    stream = run_stream(events)
    frame = stream_error_frame(stream.body)
    assert frame is not None and frame["error"]["code"] == "upstream_retry_diverged"
    assert collect_stream_content(stream.body)[0] == "Hello world"
    plain = run_plain([*events, TaskComplete("Hello there")])
    assert plain.text() == "Hello there"


def test_message_contradicting_deltas() -> None:
    events: list[Event] = [
        Delta("Hello"), Delta(" wrld"), Message("Hello world"), TaskComplete("Hello world"),
    ]
    stream = run_stream(events, include_usage=True)
    assert_valid(check_chat_stream(stream.body, include_usage=True))
    text, reason, _ = collect_stream_content(stream.body)
    assert (text, reason) == ("Hello wrld", "stop")  # the stream keeps what it sent
    plain = run_plain(events)
    assert (plain.text(), plain.finish_reason) == ("Hello world", "stop")  # message wins


def test_message_shorter_than_deltas() -> None:
    events: list[Event] = [Delta("Hello world"), Message("Hello"), TaskComplete("Hello")]
    assert run_stream(events).completion.text() == "Hello world"
    assert run_plain(events).text() == "Hello"


# --------------------------------------------------------------------------------------------
# Regressions: bugs these tests found, now fixed


def test_max_tokens_cut_inside_message_separator_agrees() -> None:
    events: list[Event] = [
        Delta("abc"), Message("abc"), Delta("xyz"), Message("xyz"), TaskComplete("xyz"),
    ]
    stream = run_stream(events, max_tokens=1)
    plain = run_plain(events, max_tokens=1)
    assert stream.completion.finish_reason == plain.finish_reason == "length"
    assert stream.completion.text() == "abc\n"  # cut at exactly max_tokens*4 = 4 chars
    assert plain.text() == stream.completion.text()


def test_retry_shorter_than_sent_text_is_divergence() -> None:
    events: list[Event] = [Delta("Hello world"), Retry("r"), Delta("Hello"), Message("Hello"),
              TaskComplete("Hello")]
    plain = run_plain(events)
    assert plain.text() == "Hello"
    stream = run_stream(events)
    assert isinstance(stream.completion.outcome, Failed)
    assert stream.completion.outcome.error.code == "upstream_retry_diverged"


def test_retry_then_error_without_new_text() -> None:
    """Spec gap, pinned as the code behaves: the abandoned attempt's text was already streamed,
    so the stream finishes 'length' ("error after answer text was delivered"); non-stream
    discarded that text and has none, so it fails 502. Not one of the two documented
    differences; see the report."""
    events: list[Event] = [Delta("Hello"), Retry("r"), Error("boom"), TaskComplete(None)]
    stream = run_stream(events)
    assert (stream.completion.finish_reason, stream.completion.text()) == ("length", "Hello")
    plain = run_plain(events)
    assert isinstance(plain.outcome, Failed)
    assert plain.outcome.error.code == "backend_error"


# --------------------------------------------------------------------------------------------
# State rules


def test_later_token_count_replaces_earlier() -> None:
    completion = Completion(stream=False, prompt_chars=PROMPT_CHARS)
    completion.feed(TokenCount(EARLY))
    assert completion.counts == EARLY
    completion.feed(TokenCount(FLAT))
    assert completion.counts == FLAT
    completion.feed(TokenCount(None))
    assert completion.counts == FLAT


@pytest.mark.parametrize("stream", [True, False])
def test_outputs_after_terminal_are_empty(stream: bool) -> None:
    completion = Completion(stream=stream, prompt_chars=PROMPT_CHARS)
    assert completion.feed(Delta("a")) == [Content("a")]
    assert completion.feed(TaskComplete("a")) == [Finished("stop")]
    for event in (Delta("b"), Message("ab"), Retry("r"), Error("e"), TaskComplete("x"),
                  TurnAborted("r"), TokenCount(FLAT)):
        assert completion.feed(event) == []
    for cause in End:
        assert completion.end(cause) == []
    assert completion.abort(ApiError(500, "x")) == []
    assert completion.outcome == Finished("stop")
    assert completion.text() == "a"
    assert completion.counts is None
    assert completion.end_cause is None


@pytest.mark.parametrize("stream", [True, False])
def test_failed_is_terminal_too(stream: bool) -> None:
    completion = Completion(stream=stream, prompt_chars=PROMPT_CHARS)
    out = completion.feed(Error("boom"))
    assert len(out) == 1 and isinstance(out[0], Failed)
    assert completion.feed(TaskComplete(None)) == []
    assert completion.feed(Delta("late")) == []
    assert completion.end(End.EOF) == []
    assert completion.error is not None and completion.error.code == "backend_error"
    assert completion.backend_error_text == "boom"


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("with_text", [True, False])
def test_disconnect_yields_nothing(stream: bool, with_text: bool) -> None:
    completion = Completion(stream=stream, prompt_chars=PROMPT_CHARS)
    if with_text:
        completion.feed(Delta("partial"))
    assert completion.end(End.DISCONNECT) == []
    assert completion.done
    assert completion.outcome is None
    assert completion.finish_reason is None and completion.error is None
    assert completion.end_cause is End.DISCONNECT
    assert completion.feed(TaskComplete("partial")) == []
    assert completion.end(End.EOF) == []
    assert completion.outcome is None
    # usage is still computable for the usage record
    assert completion.usage().completion_tokens == (2 if with_text else 0)


def test_shutdown_without_text_stream_finishes_length() -> None:
    stream = run_stream([Other("task_started")], End.SHUTDOWN, include_usage=True)
    assert stream.completion.outcome == Finished("length")
    assert_valid(check_chat_stream(stream.body, include_usage=True))
    text, reason, usage = collect_stream_content(stream.body)
    assert (text, reason) == ("", "length")
    assert usage is not None and usage["completion_tokens"] == 0


def test_shutdown_without_text_non_stream_is_503() -> None:
    plain = run_plain([Other("task_started")], End.SHUTDOWN)
    assert isinstance(plain.outcome, Failed)
    assert plain.outcome.error.status == 503
    assert plain.outcome.error.code == "shutting_down"
    assert_valid(check_error_json(plain.outcome.error.payload()))


def test_abort_ends_with_the_given_error() -> None:
    completion = Completion(stream=True, prompt_chars=PROMPT_CHARS)
    completion.feed(Delta("x"))
    error = ApiError(500, "Internal server error.", "server_error", "internal_error")
    assert completion.abort(error) == [Failed(error)]
    assert completion.error is error


def test_end_records_cause() -> None:
    completion = Completion(stream=False, prompt_chars=PROMPT_CHARS)
    completion.feed(Delta("x"))
    assert completion.end(End.IDLE) == [Finished("length")]
    assert completion.end_cause is End.IDLE


def test_attempts_are_counted() -> None:
    completion = run_plain([Retry("a"), Retry("b"), Delta("x"), TaskComplete("x")])
    assert completion.attempts == 3


def test_content_outputs_carry_only_new_text() -> None:
    completion = Completion(stream=True, prompt_chars=PROMPT_CHARS)
    outs: list[Output] = []
    for event in (Delta("Hel"), Delta("lo"), Message("Hello!"), Retry("r"), Delta("Hello!"),
                  Delta(" More"), Message("Hello! More"), TaskComplete("Hello! More")):
        outs += completion.feed(event)
    assert outs == [
        Content("Hel"), Content("lo"), Content("!"), Content(" More"), Finished("stop"),
    ]


# --------------------------------------------------------------------------------------------
# backend_message


def test_backend_message_strips_paths() -> None:
    raw = "failed to load /home/u/.codex/config.toml: missing field `base_url`"
    assert backend_message(raw) == "failed to load <path>: missing field `base_url`"
    assert backend_message("cannot open ~/.codex/auth.json") == "cannot open <path>"
    assert backend_message("see ./logs/codex.log and ../x/y") == "see <path> and <path>"
    assert "/home" not in backend_message("error at /home/user/project/src/main.rs line 3")


def test_backend_message_keeps_urls() -> None:
    raw = "error sending request for url (http://127.0.0.1:18199/v1/responses)"
    assert backend_message(raw) == raw
    usage = "You've hit your usage limit. Upgrade to Pro (https://openai.com/chatgpt/pricing)."
    assert backend_message(usage) == usage
    assert backend_message("status 400/500 and/or retry") == "status 400/500 and/or retry"


def test_backend_message_first_non_empty_line() -> None:
    assert backend_message("\n\n  first line  \nsecond line\nthird") == "first line"
    assert backend_message("only\r\nnext") == "only"
    assert backend_message("") == "codex reported an error"
    assert backend_message("\n   \n") == "codex reported an error"


def test_backend_message_is_capped() -> None:
    message = backend_message("x" * 5000)
    assert 0 < len(message) <= 500
    assert message.startswith("xxx")
    assert backend_message("y" * 500) == "y" * 500


def test_error_event_message_is_sanitized() -> None:
    completion = run_plain(
        [Error("failed to read /home/u/.codex/config.toml\nstack trace line")]
    )
    assert completion.error is not None
    assert completion.error.message == "failed to read <path>"
    assert completion.backend_error_text == (
        "failed to read /home/u/.codex/config.toml\nstack trace line"
    )


# --------------------------------------------------------------------------------------------
# Usage


def test_usage_estimate_without_counts() -> None:
    completion = run_plain([Delta("abcdefghi"), TaskComplete("abcdefghi")])
    usage = completion.usage()
    assert usage.source == "estimate"
    assert usage.prompt_tokens == math.ceil(PROMPT_CHARS / 4) == 11
    assert usage.completion_tokens == math.ceil(9 / 4) == 3
    assert usage.total_tokens == 14
    assert usage.cached_tokens == usage.reasoning_tokens == 0


@pytest.mark.parametrize(("chars", "tokens"), [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2), (9, 3)])
def test_estimate_tokens_is_ceil_quarter(chars: int, tokens: int) -> None:
    assert estimate_tokens(chars) == tokens


def test_usage_from_codex_counts() -> None:
    usage = make_usage(FLAT, PROMPT_CHARS, 9)
    assert usage.source == "codex"
    assert (usage.prompt_tokens, usage.completion_tokens) == (1200, 90)
    assert usage.cached_tokens == 1024
    assert usage.reasoning_tokens == 64
    assert usage.total_tokens == 1290
    assert usage.openai() == {
        "prompt_tokens": 1200,
        "completion_tokens": 90,
        "total_tokens": 1290,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 64},
    }


def test_usage_total_is_prompt_plus_completion_not_codex_total() -> None:
    counts = parse_token_count(
        {"input_tokens": 10, "output_tokens": 5, "total_tokens": 999}
    )
    usage = make_usage(counts, 0, 0)
    assert usage.total_tokens == 15


def test_usage_missing_details_are_zero_not_invented_counts() -> None:
    usage = make_usage(Counts(input_tokens=7, output_tokens=3), PROMPT_CHARS, 100)
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 3)
    assert usage.cached_tokens == usage.reasoning_tokens == 0
    assert usage.source == "codex"


def test_usage_partial_counts_fill_with_estimate() -> None:
    usage = make_usage(Counts(output_tokens=3), PROMPT_CHARS, 100)
    assert usage.prompt_tokens == 11 and usage.completion_tokens == 3
    assert usage.source == "estimate"


def test_usage_uses_counts_from_completion() -> None:
    completion = run_plain([Delta("x"), TokenCount(NESTED), TaskComplete("x")])
    assert completion.usage().source == "codex"
    assert completion.usage().openai()["completion_tokens_details"] == {"reasoning_tokens": 64}


# --------------------------------------------------------------------------------------------
# Linearity (not timed)


def test_many_one_char_deltas_stay_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """100k one-character deltas: one Content per delta, and none of the O(answer) helpers
    (joining all deltas of a message) runs per delta — that would make a stream O(n^2)."""
    calls = {"n": 0}
    message_cls = completion_module._Message
    original_delta_text = message_cls.delta_text
    original_answer = message_cls.answer

    def counting_delta_text(self: Any) -> str:
        calls["n"] += 1
        return original_delta_text(self)

    def counting_answer(self: Any) -> str:
        calls["n"] += 1
        return original_answer(self)

    monkeypatch.setattr(message_cls, "delta_text", counting_delta_text)
    monkeypatch.setattr(message_cls, "answer", counting_answer)

    n = 100_000
    completion = Completion(stream=True, prompt_chars=PROMPT_CHARS)
    contents = 0
    delta = Delta("x")
    for _ in range(n):
        for output in completion.feed(delta):
            assert isinstance(output, Content)
            contents += 1
    assert contents == n
    assert calls["n"] <= 2  # constant, not proportional to the number of deltas
    out = completion.feed(Message("x" * n)) + completion.feed(TaskComplete("x" * n))
    assert out == [Finished("stop")]
    assert len(completion.text()) == n
    assert completion.usage().completion_tokens == n // 4


# --------------------------------------------------------------------------------------------
# Client function calls (chat only: the legacy endpoint has no tools)

CALL_A = ToolCall("call_a", "get_weather", '{"city": "Paris"}')
CALL_B = ToolCall("call_b", "get_time", '{"tz": "Europe/Paris"}')


@dataclass(frozen=True)
class CallRow:
    name: str
    events: tuple[Event, ...]
    end: End | None = None
    calls: tuple[ToolCall, ...] = ()
    text: str = ""
    finish: str = "tool_calls"
    parallel: bool = True


CALL_ROWS = [
    CallRow("one_call", (CALL_A, ResponseDone(EARLY)), calls=(CALL_A,)),
    CallRow("parallel", (CALL_A, CALL_B, ResponseDone(EARLY)), calls=(CALL_A, CALL_B)),
    CallRow("text_then_call", (Delta("Let me"), Delta(" check."), CALL_A, ResponseDone(EARLY)),
            calls=(CALL_A,), text="Let me check."),
    CallRow("not_parallel", (CALL_A, CALL_B, ResponseDone(EARLY)), calls=(CALL_A,),
            parallel=False),
    # the stream was cut after complete calls: they are final, the finish is tool_calls
    CallRow("cut_by_timeout", (CALL_A,), end=End.TIMEOUT, calls=(CALL_A,)),
    CallRow("cut_by_worker_exit", (CALL_A, CALL_B), end=End.WORKER_EXIT, calls=(CALL_A, CALL_B)),
    CallRow("cut_by_shutdown", (Delta("x"), CALL_A), end=End.SHUTDOWN, calls=(CALL_A,),
            text="x"),
    CallRow("error_after_call", (CALL_A, Error("boom"), TaskComplete(None)), calls=(CALL_A,)),
    # a response that ends without calls is followed by text as usual
    CallRow("no_call", (ResponseDone(EARLY), Delta("Hi"), TaskComplete(None)), text="Hi",
            finish="stop"),
]


@pytest.mark.parametrize("include_usage", [False, True], ids=["no_usage", "usage"])
@pytest.mark.parametrize("row", CALL_ROWS, ids=lambda row: row.name)
def test_tool_calls_stream_and_non_stream_agree(row: CallRow, include_usage: bool) -> None:
    stream_completion = Completion(stream=True, prompt_chars=PROMPT_CHARS,
                                   parallel_calls=row.parallel)
    plain = Completion(stream=False, prompt_chars=PROMPT_CHARS, parallel_calls=row.parallel)
    renderer = _renderer(False, include_usage)
    parts = [renderer.opening()]
    for event in row.events:
        parts.append(renderer.render(stream_completion.feed(event), stream_completion))
        plain.feed(event)
    if row.end is not None:
        parts.append(renderer.render(stream_completion.end(row.end), stream_completion))
        plain.end(row.end)
    body = b"".join(parts)
    assert_valid(check_chat_stream(body, include_usage=include_usage, model=MODEL))
    doc = plain_body(plain, legacy=False)
    assert_valid(check_chat_json(doc, model=MODEL))
    message = doc["choices"][0]["message"]
    assert doc["choices"][0]["finish_reason"] == row.finish
    assert message["content"] == (row.text or (None if row.calls else ""))
    expected = [{"id": c.call_id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}} for c in row.calls]
    assert message.get("tool_calls", []) == expected
    # The stream carries the same calls: a header chunk then the arguments, per call.
    streamed: dict[int, dict[str, Any]] = {}
    for frame in parse_sse(body):
        if not isinstance(frame.json, dict):
            continue
        for choice in frame.json.get("choices") or []:
            for entry in choice.get("delta", {}).get("tool_calls") or []:
                call = streamed.setdefault(entry["index"], {"arguments": ""})
                call.update({k: entry[k] for k in ("id", "type") if k in entry})
                call.setdefault("name", entry["function"].get("name"))
                call["arguments"] += entry["function"]["arguments"]
    assert [(c["id"], c["name"], c["arguments"]) for _, c in sorted(streamed.items())] == [
        (c.call_id, c.name, c.arguments) for c in row.calls]
    text, finish, usage = collect_stream_content(body)
    assert (text, finish) == (row.text, row.finish)
    if include_usage:
        assert usage == doc["usage"]
    if row.events and isinstance(row.events[-1], ResponseDone):
        assert doc["usage"]["prompt_tokens"] == EARLY.input_tokens  # the responses' own usage


@pytest.mark.parametrize("param", ["messages", "prompt", "input"])
def test_context_window_error_names_the_routes_prompt_field(param: str) -> None:
    """A codex context-window overflow blames the field that carried the prompt on this route
    (chat ``messages``, legacy ``prompt``, Responses ``input``), as the prompt guard does."""
    completion = Completion(stream=False, prompt_chars=PROMPT_CHARS, prompt_param=param)
    completion.feed(Error("ran out of room", ErrorKind.CONTEXT_WINDOW))
    assert completion.error is not None
    assert (completion.error.status, completion.error.code, completion.error.param) == (
        400, "context_length_exceeded", param)


@pytest.mark.parametrize("cls", [Delta, completion_module.Content])
def test_hot_values_stay_frozen_values(cls: Any) -> None:
    """Delta and Content set their one field through the slot (they are made per word): they
    must still be values — equal by content, hashable, printable, and not assignable."""
    value = cls("word ")
    assert value == cls("word ") and value != cls("other")
    assert hash(value) == hash(cls("word "))
    assert repr(value) == f"{cls.__name__}(text='word ')"
    with pytest.raises(FrozenInstanceError):
        value.text = "changed"
    assert value.text == "word "


@pytest.mark.parametrize("stream", [True, False])
def test_a_batch_gives_what_its_events_give_one_by_one(stream: bool) -> None:
    """The relay feeds whole batches; the outputs must be those of feeding each event, and
    nothing after the event that decided the outcome is looked at."""
    batch: list[Event] = [Delta("Hel"), Delta("lo"), Retry("reconnecting"), Delta("Hel"),
                          Delta("lo!"), TaskComplete("Hello!"), Delta("late")]
    one_by_one = Completion(stream=stream, prompt_chars=5)
    expected: list[Output] = []
    for event in batch:
        expected += one_by_one.feed(event)
    batched = Completion(stream=stream, prompt_chars=5)
    outputs = batched.feed_batch(batch)
    assert outputs == expected
    assert outputs[-1] == Finished("stop")
    assert Content("late") not in outputs
    assert batched.text() == one_by_one.text() == "Hello!"
    assert batched.feed_batch([Delta("after")]) == []
