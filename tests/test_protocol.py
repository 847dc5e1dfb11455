"""The proto wire format, sans-io: real codex captures in, typed events and outcomes out.

Every capture under ``fixtures/captures`` is discovered with a glob, parsed line by line and fed
to a :class:`~quartproxy.completion.Completion`; the expected outcome of each scenario is written
down in :data:`EXPECTATIONS` (a new capture without an expectation fails the suite, so it gets
looked at). The rest checks the pieces: :class:`LineBuffer` across arbitrary read boundaries,
:func:`parse_line` envelopes, the ``token_count`` shapes and the submission line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from quartproxy.backends.proto.codec import (
    Counts,
    Delta,
    Error,
    Event,
    LineBuffer,
    Message,
    NotAnEvent,
    Other,
    Retry,
    SessionConfigured,
    TaskComplete,
    TokenCount,
    TurnAborted,
    parse_line,
    parse_token_count,
    submission,
)
from quartproxy.completion import Completion, End, Failed, Finished
from quartproxy.events import ReasoningDelta, ReasoningPart

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "fixtures" / "captures"
CAPTURE_FILES = sorted(CAPTURES.glob("codex-*/*.stdout.jsonl"))
PROMPT_CHARS = 100

NORMAL = "Hello! This is a streamed answer from the fake upstream."
SLOW = (
    "Streaming is a technique where the server sends partial results as soon as they are ready, "
    "instead of waiting for the en"
)
TOOL = "The command ran; see the output above."
REASONED = "Hello there! Reasoned answer."
INCOMPLETE = "This answer is going to be cut off because the output token limit was"
PARTIAL_SLOW = "Streaming is a technique where"


def _version(path: Path) -> str:
    return path.parent.name.removeprefix("codex-")


def _scenario(path: Path) -> str:
    return path.name.removesuffix(".stdout.jsonl")


def _capture_id(path: Path) -> str:
    return f"{_version(path)}/{_scenario(path)}"


# --------------------------------------------------------------------------------------------
# Expectations


@dataclass(frozen=True)
class Expect:
    """What a capture must produce in a non-stream completion.

    ``outcome``: "stop" / "length" (Finished with that reason) or "failed" (502 backend_error
    whose message is the first line of codex's last ``error`` event).
    ``usage``: (prompt, completion, cached, reasoning) from codex, or None for an estimate.
    ``needs_eof``: the capture has no terminal event; End.EOF is what the relay would report.
    ``text_prefix``: only the start of the text is pinned (the slow answers are long).
    """

    outcome: str
    text: str = ""
    usage: tuple[int, int, int, int] | None = None
    needs_eof: bool = False
    text_prefix: bool = False


STOP_NORMAL = Expect("stop", NORMAL, (1200, 14, 0, 0))
STOP_SLOW = Expect("stop", SLOW, (1200, 96, 0, 0), text_prefix=True)
STOP_TOOL = Expect("stop", TOOL, (2800, 40, 1152, 0))
STOP_REASONED = Expect("stop", REASONED, (1200, 90, 1024, 64))
FAILED = Expect("failed")
CUT_SLOW = Expect("length", PARTIAL_SLOW)

# Keyed by scenario name; a (version, scenario) key overrides it for one codex version.
EXPECTATIONS: dict[str | tuple[str, str], Expect] = {
    "normal": STOP_NORMAL,
    "normal_ratelimits": STOP_NORMAL,
    "invalid_submission": STOP_NORMAL,  # a bogus first stdin line changes nothing on stdout
    "sigterm_idle": STOP_NORMAL,
    "stdin_close_after_submit": STOP_NORMAL,
    "second_submission_sequential": STOP_NORMAL,  # the second turn comes after the terminal
    "drop_once": STOP_NORMAL,  # first attempt abandoned, only the second attempt's text
    "slow": STOP_SLOW,
    "second_submission_during_stream": STOP_SLOW,
    "second_submission_during_stream_then_third": STOP_SLOW,
    "reasoning": STOP_REASONED,
    "reasoning_raw": STOP_REASONED,
    # Tool turns: usage from the LAST token_count. 0.34+ report total_token_usage (whole turn);
    # the flat shape of 0.8-0.29 carries one response's numbers and the last one is used as is.
    "tool_shell": STOP_TOOL,
    # Flat (0.8-0.29) counts are per model response and add up over the tool turn.
    ("0.29.0", "tool_shell"): Expect("stop", TOOL, (2800, 40, 1152, 0)),
    ("0.8.0", "tool_shell"): Expect("stop", NORMAL, (2500, 44, 0, 0)),
    "tool_exec": STOP_TOOL,
    "tool_plan": STOP_TOOL,
    "tool_shell_onfailure": STOP_TOOL,
    "tool_shell_onrequest": STOP_TOOL,
    "tool_shell_untrusted": STOP_TOOL,
    "tool_shell_write": STOP_TOOL,
    "tool_shell_write_fullaccess": STOP_TOOL,
    # error after the last attempt's text: length with that attempt's partial text
    "incomplete": Expect("length", INCOMPLETE),
    "drop": Expect("length", "This stream will be"),
    "drop_rst": Expect("length", "This stream will"),
    # error with no answer text: 502 backend_error (0.8.0 err_seq has no task_complete after it)
    "err_seq": FAILED,
    "err400ctx": FAILED,
    "err429": FAILED,
    "err429_usage": FAILED,
    "err500": FAILED,
    "conn_refused": FAILED,
    "failed_ctx": FAILED,
    "failed_rate": FAILED,
    # turn_aborted after text: cut with what was delivered (lifecycle.md: text in hand -> length)
    "interrupt_op": CUT_SLOW,
    # no terminal event at all: the relay sees stdout close -> End.EOF -> length with the text
    "sigint_midstream": Expect("length", PARTIAL_SLOW, needs_eof=True),
    "sigint_then_eof": Expect("length", PARTIAL_SLOW, needs_eof=True),
    "sigterm_midstream": Expect("length", PARTIAL_SLOW, needs_eof=True),
}


def expectation(path: Path) -> Expect | None:
    return EXPECTATIONS.get((_version(path), _scenario(path))) or EXPECTATIONS.get(_scenario(path))


def raw_messages(path: Path) -> list[dict[str, Any]]:
    """The ``msg`` objects of a capture, read with the stdlib (independent of the parser)."""
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            out.append(json.loads(line)["msg"])
    return out


def parse_capture(path: Path) -> list[Event]:
    events: list[Event] = []
    for line in path.read_bytes().split(b"\n"):
        event = parse_line(line)  # NotAnEvent would fail the test
        if event is not None:
            events.append(event)
    return events


def run_capture(path: Path, *, stream: bool) -> Completion:
    completion = Completion(stream=stream, prompt_chars=PROMPT_CHARS)
    for event in parse_capture(path):
        completion.feed(event)
    if not completion.done:
        completion.end(End.EOF)
    return completion


# --------------------------------------------------------------------------------------------
# Captures


def test_captures_are_discovered() -> None:
    versions = {_version(path) for path in CAPTURE_FILES}
    assert versions >= {"0.8.0", "0.20.0", "0.29.0", "0.34.0", "0.36.0", "0.42.0"}
    assert len(CAPTURE_FILES) >= 60


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=_capture_id)
def test_capture_has_an_expectation(path: Path) -> None:
    assert expectation(path) is not None, (
        f"capture {_capture_id(path)} has no entry in EXPECTATIONS; add one"
    )


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=_capture_id)
def test_capture_parses_every_line(path: Path) -> None:
    raw = raw_messages(path)
    events = parse_capture(path)
    assert len(events) == len(raw)
    meta = json.loads(path.with_name(_scenario(path) + ".meta.json").read_text())
    assert len(events) == len(meta["event_timeline"])
    assert isinstance(events[0], SessionConfigured)
    kinds = {
        Delta: {"agent_message_delta"},
        Message: {"agent_message"},
        TokenCount: {"token_count"},
        Retry: {"stream_error", "background_event"},
        Error: {"error"},
        TaskComplete: {"task_complete"},
        TurnAborted: {"turn_aborted"},
        SessionConfigured: {"session_configured"},
        ReasoningPart: {"agent_reasoning_section_break"},
        ReasoningDelta: {"agent_reasoning_delta"},
    }
    for event, msg in zip(events, raw, strict=True):
        if isinstance(event, Other):
            assert event.type == msg["type"]
            assert all(msg["type"] not in names for names in kinds.values())
        else:
            assert msg["type"] in kinds[type(event)]
        if isinstance(event, Delta):
            assert event.text == msg["delta"]
        if isinstance(event, Message):
            assert event.text == msg["message"]


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=_capture_id)
def test_capture_outcome(path: Path) -> None:
    expect = expectation(path)
    if expect is None:
        pytest.fail(f"no expectation for {_capture_id(path)}")
    completion = Completion(stream=False, prompt_chars=PROMPT_CHARS)
    for event in parse_capture(path):
        completion.feed(event)
    assert completion.done is not expect.needs_eof
    if expect.needs_eof:
        completion.end(End.EOF)
    outcome = completion.outcome

    if expect.outcome == "failed":
        assert isinstance(outcome, Failed)
        errors = [msg["message"] for msg in raw_messages(path) if msg["type"] == "error"]
        # What codex said decides the status: its usage limit and an exhausted 429 budget are
        # 429s, an overflowing context window is the client's 400, anything else is 502.
        expected = {
            "You've hit your usage limit": (429, "insufficient_quota", "insufficient_quota"),
            "context window": (400, "context_length_exceeded", "invalid_request_error"),
            "429 Too Many Requests": (429, "rate_limit_exceeded", "rate_limit_error"),
            "Rate limit reached": (429, "rate_limit_exceeded", "rate_limit_error"),
        }
        status, code, kind = next(
            (value for marker, value in expected.items() if marker in errors[-1]),
            (502, "backend_error", "server_error"),
        )
        assert (outcome.error.status, outcome.error.code, outcome.error.type) == (
            status, code, kind)
        first_line = next(line.strip() for line in errors[-1].splitlines() if line.strip())
        assert outcome.error.message == first_line
        assert completion.text() == ""
        return

    assert isinstance(outcome, Finished)
    assert outcome.reason == expect.outcome
    text = completion.text()
    if expect.text_prefix:
        assert text.startswith(expect.text)
        assert len(text) > len(expect.text)
    else:
        assert text == expect.text
    usage = completion.usage()
    if expect.usage is None:
        assert usage.source == "estimate"
        assert usage.prompt_tokens == math.ceil(PROMPT_CHARS / 4)
        assert usage.completion_tokens == math.ceil(len(text) / 4)
    else:
        assert usage.source == "codex"
        got = (
            usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
            usage.reasoning_tokens,
        )
        assert got == expect.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# drop_once is the real diverging retry: the first attempt streamed "This stream will be", the
# retry answered "Hello! ...". Non-stream answers with the retry; a stream cannot take back what
# it sent and must end with upstream_retry_diverged (see test_drop_once_stream_diverges).
DIVERGING_CAPTURES = {"drop_once"}


@pytest.mark.parametrize(
    "path", [p for p in CAPTURE_FILES if _scenario(p) not in DIVERGING_CAPTURES], ids=_capture_id
)
def test_capture_stream_agrees_with_non_stream(path: Path) -> None:
    """Captures without a deliberate stream/non-stream difference: both must agree."""
    plain = run_capture(path, stream=False)
    stream = run_capture(path, stream=True)
    assert type(stream.outcome) is type(plain.outcome)
    if isinstance(plain.outcome, Failed):
        assert isinstance(stream.outcome, Failed)
        assert stream.outcome.error.code == plain.outcome.error.code
        assert stream.outcome.error.message == plain.outcome.error.message
    else:
        assert stream.finish_reason == plain.finish_reason
        assert stream.text() == plain.text()
        assert stream.usage() == plain.usage()


@pytest.mark.parametrize(
    "path", [p for p in CAPTURE_FILES if _scenario(p) == "drop_once"], ids=_capture_id
)
def test_drop_once_stream_diverges(path: Path) -> None:
    completion = Completion(stream=True, prompt_chars=PROMPT_CHARS)
    outputs = []
    for event in parse_capture(path):
        outputs += completion.feed(event)
    assert completion.text() == "This stream will be"
    assert isinstance(completion.outcome, Failed)
    assert completion.outcome.error.code == "upstream_retry_diverged"
    assert outputs[-1] == completion.outcome
    assert run_capture(path, stream=False).text() == NORMAL


def test_conn_refused_message_keeps_the_url() -> None:
    path = CAPTURES / "codex-0.36.0" / "conn_refused.stdout.jsonl"
    error = run_capture(path, stream=False).error
    assert error is not None
    assert error.message == (
        "error sending request for url (http://127.0.0.1:18199/v1/responses)"
    )


def test_080_err_seq_fails_without_task_complete() -> None:
    path = CAPTURES / "codex-0.8.0" / "err_seq.stdout.jsonl"
    events = parse_capture(path)
    assert not any(isinstance(event, TaskComplete) for event in events)
    assert isinstance(events[-1], Error)
    completion = Completion(stream=False, prompt_chars=PROMPT_CHARS)
    for event in events:
        completion.feed(event)
    assert isinstance(completion.outcome, Failed)  # decided by the error event itself
    # The 400 it gave up on was a context-window overflow: the client's 400, not a 502.
    assert completion.outcome.error.status == 400
    assert completion.outcome.error.code == "context_length_exceeded"
    assert completion.attempts == 11  # ten background_event retries


@pytest.mark.parametrize(
    "path",
    [p for p in CAPTURE_FILES if _scenario(p).startswith("reasoning")],
    ids=_capture_id,
)
def test_reasoning_is_not_answer_text(path: Path) -> None:
    raw = raw_messages(path)
    reasoning = "".join(
        msg.get("delta", "") + msg.get("text", "")
        for msg in raw
        if msg["type"].startswith("agent_reasoning")
    )
    assert "Planning the greeting" in reasoning
    completion = run_capture(path, stream=False)
    answer = completion.text()
    assert answer == REASONED
    words = ["Planning", "greeting", "Double-checking", "tools"]
    if "raw" in _scenario(path):
        words.append("Raw chain")
    for word in words:
        assert word in reasoning
        assert word not in answer
    assert completion.usage().reasoning_tokens == 64


@pytest.mark.parametrize(
    "path",
    [p for p in CAPTURE_FILES if _scenario(p) == "tool_shell"],
    ids=_capture_id,
)
def test_tool_turn_usage_covers_the_whole_turn(path: Path) -> None:
    """Nested counts are turn totals (the last wins); flat ones are per response (they add)."""
    counts = [e for e in parse_capture(path) if isinstance(e, TokenCount) and e.counts]
    assert len(counts) >= 2  # one per model response
    usage = run_capture(path, stream=False).usage()
    if all(e.cumulative for e in counts):
        last = counts[-1].counts
        assert last is not None
        expected = (last.input_tokens, last.output_tokens)
    else:
        assert not any(e.cumulative for e in counts)
        expected = (
            sum(e.counts.input_tokens or 0 for e in counts if e.counts),
            sum(e.counts.output_tokens or 0 for e in counts if e.counts),
        )
    assert (usage.prompt_tokens, usage.completion_tokens) == expected


@pytest.mark.parametrize(
    "path",
    [p for p in CAPTURE_FILES if _scenario(p) == "interrupt_op"],
    ids=_capture_id,
)
def test_interrupt_capture_turn_aborted(path: Path) -> None:
    """turn_aborted follows lifecycle.md's "text in hand -> length, none -> error" rule."""
    events = parse_capture(path)
    assert isinstance(events[-1], TurnAborted)
    assert events[-1].reason == "interrupted"
    assert not any(isinstance(event, TaskComplete) for event in events)
    with_text = run_capture(path, stream=False)
    assert with_text.finish_reason == "length"
    assert with_text.text() == PARTIAL_SLOW
    # The same abort before any text: no answer -> 502 backend_error (like an error event).
    no_text = Completion(stream=False, prompt_chars=PROMPT_CHARS)
    for event in events:
        if not isinstance(event, Delta):
            no_text.feed(event)
    assert isinstance(no_text.outcome, Failed)
    assert no_text.outcome.error.status == 502
    assert no_text.outcome.error.code == "backend_error"
    assert "interrupted" in no_text.outcome.error.message


def test_second_turn_after_terminal_is_ignored() -> None:
    path = CAPTURES / "codex-0.36.0" / "second_submission_sequential.stdout.jsonl"
    events = parse_capture(path)
    completes = [i for i, e in enumerate(events) if isinstance(e, TaskComplete)]
    assert len(completes) == 2
    completion = Completion(stream=False, prompt_chars=PROMPT_CHARS)
    for event in events[: completes[0] + 1]:
        completion.feed(event)
    assert completion.done
    for event in events[completes[0] + 1 :]:
        assert completion.feed(event) == []
    assert completion.text() == NORMAL
    assert completion.usage().prompt_tokens == 1200  # not the session total of turn 2 (2400)


# --------------------------------------------------------------------------------------------
# LineBuffer


def _events_by_chunks(data: bytes, size: int) -> tuple[list[Event | None], bytes]:
    buffer = LineBuffer()
    events: list[Event | None] = []
    for start in range(0, len(data), size):
        for line in buffer.feed(data[start : start + size]):
            assert b"\n" not in line
            events.append(parse_line(line))
    return events, buffer.partial


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_line_buffer_chunked_reads_match_whole_lines(size: int) -> None:
    for path in CAPTURE_FILES:
        data = path.read_bytes()
        expected = [parse_line(line) for line in data.split(b"\n")[:-1]]
        events, partial = _events_by_chunks(data, size)
        assert events == expected, _capture_id(path)
        assert partial == b""


def test_line_buffer_split_at_every_offset() -> None:
    data = (CAPTURES / "codex-0.42.0" / "normal.stdout.jsonl").read_bytes()
    expected = data.split(b"\n")[:-1]
    for cut in range(len(data) + 1):
        buffer = LineBuffer()
        lines = buffer.feed(data[:cut]) + buffer.feed(data[cut:])
        assert lines == expected, cut
        assert buffer.partial == b""


def test_line_buffer_partial_last_line_is_never_returned() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b'{"id":"1","msg":{"type":"agent_message_delta","delta":"a"}}\n{"id"') == [
        b'{"id":"1","msg":{"type":"agent_message_delta","delta":"a"}}'
    ]
    assert buffer.partial == b'{"id"'
    assert buffer.feed(b':"1","msg":{"type":"task') == []
    assert buffer.partial == b'{"id":"1","msg":{"type":"task'
    assert buffer.feed(b"") == []
    assert buffer.partial == b'{"id":"1","msg":{"type":"task'
    # completing it releases exactly that line, and nothing is left over
    assert buffer.feed(b'_complete"}}\n') == [b'{"id":"1","msg":{"type":"task_complete"}}']
    assert buffer.partial == b""


def test_line_buffer_blank_and_consecutive_lines() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"a\n\nb\n") == [b"a", b"", b"b"]
    assert buffer.feed(b"\n") == [b""]
    assert buffer.feed(b"c") == []
    assert buffer.feed(b"\nd\n") == [b"c", b"d"]


def test_line_buffer_multibyte_utf8_split_across_reads() -> None:
    text = "héllo — 世界 🎉"
    line = orjson.dumps({"id": "1", "msg": {"type": "agent_message_delta", "delta": text}})
    data = line + b"\n"
    multibyte_at = [i for i in range(1, len(data)) if data[i] & 0xC0 == 0x80]
    assert multibyte_at  # there are cuts inside a character
    for cut in multibyte_at:
        buffer = LineBuffer()
        first = buffer.feed(data[:cut])
        assert first == []
        lines = buffer.feed(data[cut:])
        assert lines == [line]
        assert parse_line(lines[0]) == Delta(text)


def test_line_buffer_long_line_in_many_pieces() -> None:
    piece = b"x" * 1000
    buffer = LineBuffer()
    for _ in range(500):
        assert buffer.feed(piece) == []
    assert buffer.feed(b"\n") == [piece * 500]


# --------------------------------------------------------------------------------------------
# parse_line


def test_parse_line_current_envelope() -> None:
    line = b'{"id":"req-1","msg":{"type":"agent_message_delta","delta":"Hi"}}'
    assert parse_line(line) == Delta("Hi")


def test_parse_line_old_fake_envelope() -> None:
    assert parse_line(b'{"type":"agent_message_delta","msg":{"delta":"Hi"}}') == Delta("Hi")
    assert parse_line(b'{"type":"agent_message","msg":{"message":"All"}}') == Message("All")
    event = parse_line(
        b'{"type":"token_count","msg":{"prompt_tokens":7,"completion_tokens":3}}'
    )
    assert event == TokenCount(Counts(input_tokens=7, output_tokens=3))
    assert parse_line(b'{"type":"task_complete","msg":{"last_agent_message":"x"}}') == (
        TaskComplete("x")
    )


@pytest.mark.parametrize("line", [b"", b"   ", b"\t", b"\r"])
def test_parse_line_blank_is_none(line: bytes) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"\x1b[2m2025-01-01T00:00:00Z\x1b[0m INFO codex: starting",
        b'{"id":"1","msg":{"type":"agent_message_delta"',
        b'[{"type":"task_complete"}]',
        b'"task_complete"',
        b"42",
        b"null",
        b'{"id":"1","msg":{"delta":"no type"}}',
        b'{"id":"1","msg":{"type":5}}',
        b"\xff\xfe",
    ],
)
def test_parse_line_junk_is_not_an_event(line: bytes) -> None:
    with pytest.raises(NotAnEvent):
        parse_line(line)


def test_parse_line_unknown_type_is_other() -> None:
    assert parse_line(b'{"id":"1","msg":{"type":"brand_new_event","x":1}}') == (
        Other("brand_new_event")
    )
    assert parse_line(b'{"id":"1","msg":{"type":"agent_reasoning_delta","delta":"t"}}') == (
        ReasoningDelta("t")
    )
    assert parse_line(b'{"id":"1","msg":{"type":"agent_reasoning","text":"t"}}') == (
        Other("agent_reasoning")
    )
    assert parse_line(b'{"id":"1","msg":{"type":"exec_command_begin"}}') == (
        Other("exec_command_begin")
    )


def test_parse_line_events() -> None:
    def msg(body: dict[str, Any]) -> bytes:
        return orjson.dumps({"id": "1", "msg": body})

    assert parse_line(msg({"type": "stream_error", "message": "retrying 1/5"})) == (
        Retry("retrying 1/5")
    )
    assert parse_line(msg({"type": "background_event", "message": "m"})) == Retry("m")
    assert parse_line(msg({"type": "error", "message": "boom"})) == Error("boom")
    assert parse_line(msg({"type": "task_complete", "last_agent_message": None})) == (
        TaskComplete(None)
    )
    assert parse_line(
        msg({"type": "task_complete", "last_agent_message": "a", "finish_reason": "length"})
    ) == TaskComplete("a", "length")
    assert parse_line(msg({"type": "turn_aborted", "reason": "interrupted"})) == (
        TurnAborted("interrupted")
    )
    assert parse_line(msg({"type": "session_configured", "session_id": "s"})) == (
        SessionConfigured()
    )
    # a wrong-typed text field never becomes text
    assert parse_line(msg({"type": "agent_message_delta", "delta": 5})) == Delta("")
    assert parse_line(msg({"type": "task_complete", "last_agent_message": 5})) == (
        TaskComplete(None)
    )


# --------------------------------------------------------------------------------------------
# token_count

FIELDS = {
    "input_tokens": 1200,
    "cached_input_tokens": 1024,
    "output_tokens": 90,
    "reasoning_output_tokens": 64,
    "total_tokens": 1290,
}
FULL = Counts(
    input_tokens=1200, output_tokens=90, cached_input_tokens=1024, reasoning_output_tokens=64
)


def test_token_count_flat() -> None:
    assert parse_token_count({"type": "token_count", **FIELDS}) == FULL


def test_token_count_nested_prefers_total_usage() -> None:
    last = {**FIELDS, "input_tokens": 1, "output_tokens": 2}
    msg = {
        "type": "token_count",
        "info": {
            "total_token_usage": FIELDS,
            "last_token_usage": last,
            "model_context_window": 272000,
        },
    }
    assert parse_token_count(msg) == FULL


def test_token_count_nested_with_rate_limits() -> None:
    msg = {
        "type": "token_count",
        "info": {"total_token_usage": FIELDS, "last_token_usage": FIELDS},
        "rate_limits": {
            "primary": {"used_percent": 42.5, "window_minutes": 300},
            "secondary": None,
        },
    }
    assert parse_token_count(msg) == FULL


def test_token_count_info_null_is_none() -> None:
    msg = {"type": "token_count", "info": None, "rate_limits": {"primary": None}}
    assert parse_token_count(msg) is None
    assert parse_line(orjson.dumps({"id": "1", "msg": msg})) == TokenCount(None)


def test_token_count_info_null_keeps_earlier_counts() -> None:
    completion = Completion(stream=False, prompt_chars=PROMPT_CHARS)
    completion.feed(TokenCount(parse_token_count({"info": {"total_token_usage": FIELDS}})))
    completion.feed(Delta("hi"))
    completion.feed(TokenCount(parse_token_count({"info": None})))
    completion.feed(TaskComplete("hi"))
    assert completion.counts == FULL
    usage = completion.usage()
    assert usage.source == "codex"
    assert (usage.prompt_tokens, usage.completion_tokens) == (1200, 90)


def test_token_count_legacy_fake_fields() -> None:
    msg = {"type": "token_count", "prompt_tokens": 12, "completion_tokens": 4}
    assert parse_token_count(msg) == Counts(input_tokens=12, output_tokens=4)


def test_token_count_missing_fields_stay_none() -> None:
    counts = parse_token_count({"type": "token_count", "input_tokens": 5})
    assert counts == Counts(input_tokens=5)
    assert counts is not None and counts.output_tokens is None
    assert counts.cached_input_tokens is None and counts.reasoning_output_tokens is None
    nested = parse_token_count({"info": {"total_token_usage": {"output_tokens": 3}}})
    assert nested == Counts(output_tokens=3)
    assert parse_token_count({"type": "token_count"}) is None
    assert parse_token_count({"type": "token_count", "total_tokens": 50}) is None
    assert parse_token_count({"info": {"model_context_window": 1}}) is None
    assert parse_token_count({"info": {"total_token_usage": None}}) is None


@pytest.mark.parametrize("bad", [-1, True, False, 1.5, "12", None, [1]])
def test_token_count_rejects_bad_numbers(bad: Any) -> None:
    counts = parse_token_count(
        {"input_tokens": bad, "output_tokens": 7, "cached_input_tokens": bad}
    )
    assert counts == Counts(output_tokens=7)
    assert parse_token_count({"input_tokens": bad, "output_tokens": bad}) is None
    assert parse_token_count({"prompt_tokens": bad, "completion_tokens": bad}) is None


def test_token_count_zero_is_a_real_count() -> None:
    assert parse_token_count({"input_tokens": 0, "output_tokens": 0}) == Counts(0, 0)


# --------------------------------------------------------------------------------------------
# What we send


def test_submission_exact_shape() -> None:
    line = submission("req-1", "[user] hi")
    assert line == (
        b'{"id":"req-1","op":{"type":"user_input","items":[{"type":"text","text":"[user] hi"}]}}\n'
    )


@pytest.mark.parametrize(
    "prompt",
    [
        'say "hi"\nand\\then',
        "line1\nline2\r\nline3\u2028\u2029",
        "unicode: é 世界 🎉 \u0000 \x7f \t",
        "",
        "}\n{\"id\":\"x\",\"op\":{\"type\":\"interrupt\"}}",
    ],
)
def test_submission_is_one_json_line_and_round_trips(prompt: str) -> None:
    line = submission("abc-123", prompt)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    doc = json.loads(line)
    assert doc == {
        "id": "abc-123",
        "op": {"type": "user_input", "items": [{"type": "text", "text": prompt}]},
    }


def test_line_buffer_drops_runaway_lines() -> None:
    from quartproxy.backends.proto.codec import LineBuffer

    buffer = LineBuffer(max_line=100)
    assert buffer.feed(b"x" * 60) == []
    assert buffer.feed(b"y" * 60) == []  # over the cap: dropped as it streams in
    assert buffer.feed(b"z" * 1000) == []
    assert buffer.feed(b'zz\n{"ok":1}\n') == [b"", b'{"ok":1}']
    assert buffer.dropped == 1
    assert buffer.feed(b"a" * 50) == [] and buffer.partial == b"a" * 50
