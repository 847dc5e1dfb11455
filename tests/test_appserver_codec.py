"""The app-server wire, sans-io: real 0.169.0 transcripts in, JSON-RPC messages and events out.

Every ``app-server.*.transcript.jsonl`` under ``fixtures/captures`` is discovered with a glob and
replayed the way the worker layer will drive the codec: each stdout line goes through
:func:`parse_message`, notifications are routed by :func:`thread_id_of` to the thread's current
:class:`TurnTranslator` (its ``turn_id`` set from the ``turn/start`` result, its declared tools and
injected call ids taken from what the client sent), and the events of each thread are compared
with :data:`EXPECTATIONS`. A new capture without an expectation fails the suite, so it gets
looked at. The rest checks the pieces: message classification, the encoders, routing keys, error
kinds, and the answers to server requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from quartproxy.backends.appserver.rpc import (
    NotAMessage,
    Notification,
    Response,
    RpcError,
    ServerRequest,
    encode_error,
    encode_notification,
    encode_request,
    encode_result,
    error_message,
    parse_message,
    thread_id_of,
)
from quartproxy.backends.appserver.server_requests import answer_for
from quartproxy.backends.appserver.translate import TurnTranslator, counts_of, error_kind
from quartproxy.events import (
    Counts,
    Delta,
    Error,
    ErrorKind,
    Event,
    Message,
    Other,
    ReasoningDelta,
    ReasoningPart,
    ResponseDone,
    Retry,
    TaskComplete,
    TokenCount,
    ToolCall,
    TurnAborted,
)

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "fixtures" / "captures"
TRANSCRIPTS = sorted(CAPTURES.glob("codex-*/app-server.*.transcript.jsonl"))


def _scenario(path: Path) -> str:
    return path.name.removeprefix("app-server.").removesuffix(".transcript.jsonl")


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _transcript(scenario: str) -> Path:
    return CAPTURES / "codex-0.169.0" / f"app-server.{scenario}.transcript.jsonl"


# --------------------------------------------------------------------------------------------
# Replay: the routing the worker layer does, in a few lines


@dataclass
class ThreadRun:
    thread_id: str
    declared: frozenset[str]
    turns: list[TurnTranslator]
    events: list[Event] = field(default_factory=list)
    notes: list[Notification] = field(default_factory=list)
    server_requests: list[ServerRequest] = field(default_factory=list)
    turn_ids: list[str] = field(default_factory=list)


def replay(path: Path) -> list[ThreadRun]:
    """Threads in the order they were started, with every event their turns produced."""
    sent: dict[Any, dict[str, Any]] = {}
    runs: dict[str, ThreadRun] = {}
    for record in _records(path):
        msg = record["msg"]
        if record["dir"] == "client->server":
            if not isinstance(msg, dict) or "method" not in msg or "id" not in msg:
                continue
            sent[msg["id"]] = msg
            params = msg.get("params") or {}
            thread_id = params.get("threadId") if isinstance(params, dict) else None
            run = runs.get(thread_id) if isinstance(thread_id, str) else None
            if run is None:
                continue
            if msg["method"] == "thread/inject_items":
                # The real owner knows these before thread/start (they are in its ThreadPlan).
                run.turns[-1].injected_call_ids = frozenset(
                    item["call_id"] for item in params["items"] if "call_id" in item
                )
            elif msg["method"] == "turn/start" and run.turns[-1].turn_id is not None:
                last = run.turns[-1]
                run.turns.append(TurnTranslator(run.declared, last.injected_call_ids))
            continue
        if record["dir"] != "server->client":
            continue
        incoming = parse_message(json.dumps(msg).encode())
        if isinstance(incoming, Response):
            request = sent.get(incoming.id)
            if request is None or incoming.error is not None:
                continue
            if request["method"] == "thread/start":
                thread_id = incoming.result["thread"]["id"]
                tools = request["params"].get("dynamicTools", [])
                declared = frozenset(tool["name"] for tool in tools)
                runs[thread_id] = ThreadRun(thread_id, declared, [TurnTranslator(declared)])
            elif request["method"] == "turn/start" and request["params"]["threadId"] in runs:
                run = runs[request["params"]["threadId"]]
                run.turns[-1].turn_id = incoming.result["turn"]["id"]
                run.turn_ids.append(incoming.result["turn"]["id"])
        elif isinstance(incoming, (Notification, ServerRequest)):
            run = runs.get(thread_id_of(incoming) or "")
            if run is None:
                continue  # process-wide, or a thread nobody owns: dropped
            if isinstance(incoming, ServerRequest):
                run.server_requests.append(incoming)
            else:
                run.notes.append(incoming)
                run.events.extend(run.turns[-1].feed(incoming))
    return list(runs.values())


def significant(events: list[Event]) -> list[Event]:
    """Events without the activity-only :class:`Other`."""
    return [event for event in events if not isinstance(event, Other)]


# --------------------------------------------------------------------------------------------
# Expectations


NORMAL = "Hello! This is a streamed answer from the fake upstream."
DROPPED = ["This", " stream", " will", " be"]
INCOMPLETE = "This answer is going to be cut off because the output token limit was"
TOOL = "The command ran; see the output above."
WEATHER_ARGS = '{"city": "Paris", "unit": "celsius"}'
TIME_ARGS = '{"tz": "Europe/Paris"}'
USAGE_MSG = (
    "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
    "https://chatgpt.com/settings/usage to purchase more credits or try again later."
)
CONTEXT_MSG = (
    "Codex ran out of room in the model's context window. Start a new thread or clear earlier "
    "history before retrying."
)


def deltas(text: str) -> list[Event]:
    """One Delta per word as the scripted upstream streams it ("a b" -> "a", " b")."""
    return [Delta(word) for word in text.replace(" ", "\0 ").split("\0")]


def usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> Counts:
    return Counts(prompt, completion, cached, reasoning)


def tokens(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> TokenCount:
    return TokenCount(usage(prompt, completion, cached, reasoning), cumulative=True)


def retries(n: int) -> list[Event]:
    return [Retry(f"Reconnecting... {i}/5") for i in range(1, n + 1)]


DONE = TaskComplete(None)
ABORTED = TurnAborted("interrupted")
STOP_NORMAL = [*deltas(NORMAL), Message(NORMAL), tokens(1200, 14), DONE]
STOP_TOOL_EXEC = [tokens(1300, 30), *deltas(TOOL), Message(TOOL), tokens(2800, 40, 1152), DONE]


def answered(text: str, second: int = 42) -> list[Event]:
    """A dynamic tool call answered by the client: the model is sampled again in the turn."""
    return [tokens(1300, 30), *deltas(text), Message(text), tokens(2800, second, 1152), DONE]


def history_echo(text: str) -> list[Event]:
    return [Delta(text), Message(text), tokens(1200, 5), DONE]


# Per scenario: the significant events of each thread, in thread start order.
EXPECTATIONS: dict[str, list[list[Event]]] = {
    "normal": [STOP_NORMAL],
    # The first attempt's 4 deltas, the retry, then the whole answer again under a new item.
    "drop_once": [[*[Delta(w) for w in DROPPED], *retries(1), *STOP_NORMAL]],
    "drop": [
        [
            *[e for retry in retries(5) for e in (*map(Delta, DROPPED), retry)],
            *map(Delta, DROPPED),
            Error(
                "stream disconnected before completion: stream closed before response.completed",
                ErrorKind.OTHER,
            ),
            DONE,
        ]
    ],
    "incomplete": [
        [
            *deltas(INCOMPLETE),
            Message(INCOMPLETE),
            tokens(1200, 16),
            Error("Incomplete response returned, reason: max_output_tokens", ErrorKind.OTHER),
            DONE,
        ]
    ],
    "err429_usage": [[Error(USAGE_MSG, ErrorKind.USAGE_LIMIT), DONE]],
    # The 0/0 usage update codex sends on a context-window failure is not usage.
    "err400ctx": [[Error(CONTEXT_MSG, ErrorKind.CONTEXT_WINDOW), DONE]],
    "failed_ctx": [[Error(CONTEXT_MSG, ErrorKind.CONTEXT_WINDOW), DONE]],
    "err429": [
        [
            *retries(5),
            Error(
                "exceeded retry limit, last status: 429 Too Many Requests, request id: req_fake_18",
                ErrorKind.RATE_LIMIT,
            ),
            DONE,
        ]
    ],
    "err_seq": [
        [
            Error(
                "exceeded retry limit, last status: 429 Too Many Requests, request id: req_fake_10",
                ErrorKind.RATE_LIMIT,
            ),
            DONE,
        ]
    ],
    "err500": [
        [
            *retries(5),
            Error(
                "We’re currently experiencing high demand, which may cause temporary errors.",
                ErrorKind.OTHER,
            ),
            DONE,
        ]
    ],
    # Default connection retries are unbounded: the turn never ends by itself.
    "conn_refused": [[Retry("Reconnecting... waiting for network")] * 6],
    # Interrupted mid-stream, then a second, normal turn on the same thread.
    "interrupt": [[Delta("Streaming"), Delta(" is"), Delta(" a"), ABORTED, *STOP_NORMAL]],
    "reasoning": [
        [
            ReasoningPart(),
            *map(
                ReasoningDelta,
                [
                    "**Planning", " the", " greeting**", "\n\nThe", " user", " wants", " a",
                    " greeting,", " so", " I", " will", " answer", " briefly", " and",
                    " politely.",
                ],
            ),
            ReasoningPart(),
            *map(ReasoningDelta, ["**Double-checking**", "\n\nNo", " tools", " are", " needed."]),
            *deltas("Hello there! Reasoned answer."),
            Message("Hello there! Reasoned answer."),
            tokens(1200, 90, 1024, 64),
            DONE,
        ]
    ],
    "concurrent4": [[*deltas("w0 w1 w2 w3 w4"), Message("w0 w1 w2 w3 w4"), tokens(1200, 5), DONE]]
    * 4,
    "tool_exec": [STOP_TOOL_EXEC],
    "approval_never": [STOP_TOOL_EXEC],
    "approval_onrequest": [STOP_TOOL_EXEC],
    "approval_untrusted_accept": [STOP_TOOL_EXEC],
    "approval_error_reply": [STOP_TOOL_EXEC],
    "approval_untrusted_noanswer": [[tokens(1300, 30), ABORTED]],
    # Killed or stdin closed mid-turn: nothing more arrives (the relay sees EOF).
    "sigterm_midturn": [[Delta("Streaming"), Delta(" is")]],
    "stdin_close_midturn": [[Delta("Streaming"), Delta(" is")]],
    "steer_while_active": [[Delta("Streaming"), Delta(" is"), *STOP_NORMAL]],
    "thread_cleanup": [STOP_NORMAL, STOP_NORMAL, STOP_NORMAL, [Delta("Streaming"), ABORTED]],
    "protocol_errors": [[]],
    "history": [
        history_echo("items=developer:47,developer:2482,user:431,user:44"),
        history_echo("items=developer:16979,developer:2520,user:431,user:44"),
        history_echo("items=developer:16979,developer:2515,user:431,user:15,assistant:22,user:58"),
        history_echo("items=developer:16979,developer:2469,user:431,user:167"),
        history_echo(
            "items=developer:16979,developer:2469,user:431,developer:12,user:15,assistant:22,"
            "user:58"
        ),
        history_echo("items=developer:2469,user:431,user:44"),
    ],
    # Function calling. Request 1: two calls collected from the raw items, then the end of the
    # response; what follows the thread/delete is late and ignored by the completion. Request 2:
    # the follow-up; the echoed history (turn auto-compact-0) yields no call.
    "dyntool_e2e": [
        [
            ToolCall("call_fake_165_0", "get_weather", WEATHER_ARGS),
            ToolCall("call_fake_165_1", "get_time", TIME_ARGS),
            ResponseDone(usage(1300, 60)),
            tokens(1300, 60),
            ABORTED,
        ],
        [
            *deltas("Tool results: call_fake_165_0=sunny, 21 C; call_fake_165_1=14:05"),
            Message("Tool results: call_fake_165_0=sunny, 21 C; call_fake_165_1=14:05"),
            ResponseDone(usage(1500, 12, 1152)),
            tokens(1500, 12, 1152),
            DONE,
        ],
    ],
    "dyntool_par3gap_noanswer_raw": [
        [
            ToolCall("call_fake_153_0", "get_weather", WEATHER_ARGS),
            ToolCall("call_fake_153_1", "get_time", TIME_ARGS),
            ToolCall("call_fake_153_2", "get_weather", '{"city": "Oslo", "unit": "celsius"}'),
            ResponseDone(usage(1300, 90)),
            tokens(1300, 90),
            ABORTED,
        ]
    ],
    # Stream cut after a complete call: codex waits for the call, no end-of-response follows.
    "dyntool_drop_once": [[ToolCall("call_fake_160_0", "get_weather", WEATHER_ARGS), ABORTED]],
    # These runs opted out of rawResponseItem/completed: no call can be collected.
    "dyntool_text_call": [
        [
            *deltas("Let me check."),
            Message("Let me check."),
            ResponseDone(usage(1300, 30)),
            tokens(1300, 30),
            ABORTED,
        ]
    ],
    "dyntool_call_ordered": [[ResponseDone(usage(1300, 10)), tokens(1300, 10), ABORTED]],
    # codex answers calls it cannot route itself and samples again: no client call.
    "dyntool_badargs": [
        [
            ResponseDone(usage(1300, 10)),
            tokens(1300, 10),
            *deltas(
                "Tool results: call_fake_155_0=failed to parse function arguments: EOF while "
                "parsing a string at line 1 column 13"
            ),
            Message(
                "Tool results: call_fake_155_0=failed to parse function arguments: EOF while "
                "parsing a string at line 1 column 13"
            ),
            ResponseDone(usage(1500, 12, 1152)),
            tokens(2800, 22, 1152),
            DONE,
        ]
    ],
    "dyntool_undeclared_name": [
        [
            ResponseDone(usage(1300, 30)),
            tokens(1300, 30),
            *deltas("Tool results: call_fake_157_0=unsupported call: not_declared"),
            Message("Tool results: call_fake_157_0=unsupported call: not_declared"),
            ResponseDone(usage(1500, 12, 1152)),
            tokens(2800, 42, 1152),
            DONE,
        ]
    ],
    # Threads without raw events: the client answered item/tool/call (or sent an error).
    "dyntool_answer_ok": [answered("Tool results: call_fake_146_0=sunny, 21 C")],
    "dyntool_answer_fail": [answered("Tool results: call_fake_179_0=weather service unavailable")],
    "dyntool_answer_rpc_error": [
        answered("Tool results: call_fake_150_0=dynamic tool request failed")
    ],
    "dyntool_noanswer_delete": [[tokens(1300, 30), ABORTED], STOP_NORMAL],
    "dyntool_noanswer_interrupt": [[tokens(1300, 30), ABORTED], STOP_NORMAL],
    # Follow-ups with injected tool history (R1, R4, R7), and R8 whose orphan output was dropped
    # by codex so the model called again (no raw events on these threads).
    "dyntool_resume": [
        [
            *deltas("Tool results: call_abc123=sunny, 21 C"),
            Message("Tool results: call_abc123=sunny, 21 C"),
            tokens(1500, 12, 1152),
            DONE,
        ],
        [
            *deltas("Tool results: call_w=sunny; call_t=14:05"),
            Message("Tool results: call_w=sunny; call_t=14:05"),
            tokens(1500, 12, 1152),
            DONE,
        ],
        [
            *deltas("Tool results: call_x=aborted"),
            Message("Tool results: call_x=aborted"),
            tokens(1500, 12, 1152),
            DONE,
        ],
        [tokens(1300, 30), ABORTED],
    ],
    # 0.140.0: calls are collected, but no rawResponse/completed ever comes.
    "dyntool_v0140_par2_resume": [
        [
            ToolCall("call_fake_167_0", "get_weather", WEATHER_ARGS),
            ToolCall("call_fake_167_1", "get_time", TIME_ARGS),
            tokens(1300, 60),
            ABORTED,
        ],
        [
            Message("Tool results: call_w=sunny; call_t=14:05"),
            tokens(1500, 12, 1152),
            DONE,
        ],
    ],
}


# --------------------------------------------------------------------------------------------
# Captures → events


def test_transcripts_are_discovered() -> None:
    assert len(TRANSCRIPTS) >= 40
    assert {_scenario(path) for path in TRANSCRIPTS} >= {"normal", "dyntool_e2e", "concurrent4"}


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=_scenario)
def test_transcript_events(path: Path) -> None:
    expected = EXPECTATIONS.get(_scenario(path))
    assert expected is not None, f"{path.name} has no entry in EXPECTATIONS; add one"
    runs = replay(path)
    assert [significant(run.events) for run in runs] == expected


def test_normal_turn_exact_events() -> None:
    """Turn activity is reported as Other (it resets idle timers); bookkeeping is silent."""
    (run,) = replay(_transcript("normal"))
    assert run.events == [
        Other("turn/started"),
        Other("item/started"),  # userMessage
        Other("item/completed"),  # userMessage
        Other("item/started"),  # agentMessage
        *deltas(NORMAL),
        Message(NORMAL),
        tokens(1200, 14),
        DONE,
    ]
    assert run.turns[0].finished
    silent = {note.method for note in run.notes} - {
        "turn/started", "item/started", "item/completed", "item/agentMessage/delta",
        "thread/tokenUsage/updated", "turn/completed",
    }
    assert silent == {"thread/started", "thread/status/changed", "warning"}


def test_concurrent_threads_get_only_their_own_notifications() -> None:
    runs = replay(_transcript("concurrent4"))
    assert len(runs) == 4
    item_ids: set[str] = set()
    for run in runs:
        (turn_id,) = run.turn_ids
        turn_scoped = [note for note in run.notes if "turnId" in note.params]
        assert turn_scoped
        assert {note.params["turnId"] for note in turn_scoped} == {turn_id}
        ids = {n.params["itemId"] for n in run.notes if n.method == "item/agentMessage/delta"}
        assert len(ids) == 1
        item_ids |= ids
    assert len(item_ids) == 4


def test_injected_history_echo_is_not_a_tool_call() -> None:
    """Request 2 of the e2e run: its thread echoes the injected calls as raw items under the turn
    id ``auto-compact-0`` before the turn starts. Neither the turn-id filter nor the injected-id
    guard lets them through, even with the turn id known early."""
    runs = replay(_transcript("dyntool_e2e"))
    follow_up = runs[1]
    echoes = [
        note
        for note in follow_up.notes
        if note.method == "rawResponseItem/completed"
        and note.params["turnId"] == "auto-compact-0"
        and note.params["item"]["type"] == "function_call"
    ]
    assert [note.params["item"]["call_id"] for note in echoes] == [
        "call_fake_165_0",
        "call_fake_165_1",
    ]
    declared = frozenset({"get_weather", "get_time"})
    injected = frozenset({"call_fake_165_0", "call_fake_165_1"})
    early = TurnTranslator(declared, injected)
    early.turn_id = follow_up.turn_ids[0]
    assert [early.feed(note) for note in echoes] == [[], []]
    # The same items as if codex had stamped them with the real turn id: the second guard holds.
    for note in echoes:
        same_turn = Notification(note.method, {**note.params, "turnId": early.turn_id})
        assert early.feed(same_turn) == [Other("rawResponseItem/completed")]
        assert TurnTranslator(declared).feed(same_turn) == []  # no turn id yet: never collected


def test_raw_items_need_a_declared_name() -> None:
    (run,) = replay(_transcript("dyntool_par3gap_noanswer_raw"))
    only_time = TurnTranslator(frozenset({"get_time"}))
    only_time.turn_id = run.turn_ids[0]
    events = [event for note in run.notes for event in only_time.feed(note)]
    assert [e for e in events if isinstance(e, ToolCall)] == [
        ToolCall("call_fake_153_1", "get_time", TIME_ARGS)
    ]


def test_turn_id_is_learned_from_turn_started() -> None:
    (run,) = replay(_transcript("dyntool_par3gap_noanswer_raw"))
    translator = TurnTranslator(run.declared)  # the owner never sets turn_id
    events = [event for note in run.notes for event in translator.feed(note)]
    assert translator.turn_id == run.turn_ids[0]
    assert len([e for e in events if isinstance(e, ToolCall)]) == 3


def test_tool_calls_come_before_the_end_of_their_response() -> None:
    runs = replay(_transcript("dyntool_e2e"))
    first = runs[0].events
    calls = [i for i, event in enumerate(first) if isinstance(event, ToolCall)]
    done = first.index(ResponseDone(usage(1300, 60)))
    assert len(calls) == 2 and calls[-1] < done


def test_nothing_after_turn_completed() -> None:
    translator = TurnTranslator()
    translator.turn_id = "t1"
    completed = Notification(
        "turn/completed", {"threadId": "th", "turn": {"id": "t1", "status": "completed"}}
    )
    assert translator.feed(completed) == [DONE]
    assert translator.finished
    delta = Notification("item/agentMessage/delta", {"threadId": "th", "delta": "late"})
    assert translator.feed(delta) == []
    assert translator.feed(completed) == []


# --------------------------------------------------------------------------------------------
# Translation details


def _feed(*notes: tuple[str, dict[str, Any]], turn_id: str = "t1") -> list[Event]:
    translator = TurnTranslator(frozenset({"f"}))
    translator.turn_id = turn_id
    events: list[Event] = []
    for method, params in notes:
        events += translator.feed(Notification(method, params))
    return events


def test_failed_turn_without_error_notification_synthesizes_the_error() -> None:
    turn = {
        "id": "t1",
        "status": "failed",
        "error": {"message": "boom\nmore", "codexErrorInfo": "usageLimitExceeded"},
    }
    assert _feed(("turn/completed", {"turn": turn})) == [
        Error("boom\nmore", ErrorKind.USAGE_LIMIT),
        DONE,
    ]
    assert _feed(("turn/completed", {"turn": {"id": "t1", "status": "failed", "error": None}})) == [
        Error("codex reported the turn as failed", ErrorKind.OTHER),
        DONE,
    ]


def test_failed_turn_after_error_notification_adds_only_task_complete() -> None:
    error = {"error": {"message": "x", "codexErrorInfo": "other"}, "willRetry": False}
    turn = {"id": "t1", "status": "failed", "error": {"message": "x"}}
    assert _feed(("error", error), ("turn/completed", {"turn": turn})) == [
        Error("x", ErrorKind.OTHER),
        DONE,
    ]


def test_retry_is_not_an_error() -> None:
    info = {"responseStreamDisconnected": {"httpStatusCode": 429}}
    error = {
        "error": {"message": "Reconnecting... 2/5", "codexErrorInfo": info},
        "willRetry": True,
    }
    assert _feed(("error", error)) == [Retry("Reconnecting... 2/5")]


def test_unknown_turn_status_aborts() -> None:
    assert _feed(("turn/completed", {"turn": {"id": "t1", "status": "weird"}})) == [
        TurnAborted("weird")
    ]
    assert _feed(("turn/completed", {})) == [TurnAborted("unknown")]


@pytest.mark.parametrize(
    ("info", "kind"),
    [
        ("usageLimitExceeded", ErrorKind.USAGE_LIMIT),
        ({"usageLimitExceeded": None}, ErrorKind.USAGE_LIMIT),
        ("contextWindowExceeded", ErrorKind.CONTEXT_WINDOW),
        ({"contextWindowExceeded": {}}, ErrorKind.CONTEXT_WINDOW),
        ({"responseTooManyFailedAttempts": {"httpStatusCode": 429}}, ErrorKind.RATE_LIMIT),
        ({"responseTooManyFailedAttempts": {"httpStatusCode": 500}}, ErrorKind.OTHER),
        ({"responseTooManyFailedAttempts": {"httpStatusCode": None}}, ErrorKind.OTHER),
        ({"responseStreamDisconnected": {"httpStatusCode": 429}}, ErrorKind.OTHER),
        ({"httpConnectionFailed": {"httpStatusCode": None}}, ErrorKind.OTHER),
        ("internalServerError", ErrorKind.OTHER),
        ("unauthorized", ErrorKind.OTHER),
        ("other", ErrorKind.OTHER),
        (None, ErrorKind.OTHER),
        ({"a": 1, "b": 2}, ErrorKind.OTHER),
        (["usageLimitExceeded"], ErrorKind.OTHER),
    ],
)
def test_error_kind(info: Any, kind: ErrorKind) -> None:
    assert error_kind(info) is kind


def test_token_usage_shapes() -> None:
    total = {
        "totalTokens": 1290,
        "inputTokens": 1200,
        "cachedInputTokens": 1024,
        "cacheWriteInputTokens": 0,
        "outputTokens": 90,
        "reasoningOutputTokens": 64,
    }
    assert counts_of(total) == Counts(1200, 90, 1024, 64)
    assert counts_of({"inputTokens": 5}) == Counts(5, None, None, None)
    assert counts_of({"totalTokens": 9}) is None
    assert counts_of(None) is None
    assert counts_of({"inputTokens": True, "outputTokens": -1}) is None
    update = {"tokenUsage": {"total": total, "last": {**total, "inputTokens": 0}}}
    assert _feed(("thread/tokenUsage/updated", update)) == [tokens(1200, 90, 1024, 64)]
    trap = {"tokenUsage": {"total": {"totalTokens": 258400, "inputTokens": 0, "outputTokens": 0}}}
    assert _feed(("thread/tokenUsage/updated", trap)) == []
    assert _feed(("thread/tokenUsage/updated", {})) == []


def test_v1_duplicates_and_bookkeeping_produce_nothing() -> None:
    translator = TurnTranslator(duplicate_v1=True)
    translator.turn_id = "t1"
    for method in (
        "codex/event/agent_message_delta",
        "codex/event/task_complete",
        "thread/status/changed",
        "thread/started",
        "warning",
        "serverRequest/resolved",
        "thread/deleted",
        "thread/archived",
        "thread/closed",
        "account/rateLimits/updated",
        "something/new",
    ):
        assert translator.feed(Notification(method, {"threadId": "th", "delta": "x"})) == []
    for method in (
        "turn/started",
        "item/started",
        "item/commandExecution/outputDelta",
        "item/reasoning/textDelta",
        "turn/plan/updated",
        "turn/diff/updated",
    ):
        assert translator.feed(Notification(method, {"threadId": "th"})) == [Other(method)]
    assert not translator.finished


def test_raw_events_of_other_turns_or_shapes() -> None:
    call = {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c1"}
    assert _feed(("rawResponseItem/completed", {"turnId": "t1", "item": call})) == [
        ToolCall("c1", "f", "{}")
    ]
    # The same call twice is collected once.
    assert _feed(
        ("rawResponseItem/completed", {"turnId": "t1", "item": call}),
        ("rawResponseItem/completed", {"turnId": "t1", "item": call}),
    ) == [ToolCall("c1", "f", "{}"), Other("rawResponseItem/completed")]
    assert _feed(("rawResponseItem/completed", {"turnId": "t0", "item": call})) == []
    for bad in ({**call, "name": "g"}, {**call, "arguments": {}}, {**call, "type": "message"}):
        assert _feed(("rawResponseItem/completed", {"turnId": "t1", "item": bad})) == [
            Other("rawResponseItem/completed")
        ]
    assert _feed(("rawResponse/completed", {"turnId": "t1", "usage": None})) == [
        ResponseDone(None)
    ]
    assert _feed(("rawResponse/completed", {"turnId": "t0", "usage": None})) == []


def test_message_items() -> None:
    item = {"type": "agentMessage", "id": "m", "text": "hi", "phase": "final_answer"}
    assert _feed(("item/completed", {"item": item})) == [Message("hi")]
    assert _feed(("item/completed", {"item": {"type": "reasoning"}})) == [Other("item/completed")]
    assert _feed(("item/agentMessage/delta", {"delta": ""})) == []
    assert _feed(("item/reasoning/summaryTextDelta", {"delta": "r"})) == [ReasoningDelta("r")]
    assert _feed(("item/reasoning/summaryPartAdded", {"summaryIndex": 0})) == [ReasoningPart()]


# --------------------------------------------------------------------------------------------
# Framing


def _expected_kind(msg: dict[str, Any]) -> type:
    if "method" in msg:
        return ServerRequest if "id" in msg else Notification
    return Response


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=_scenario)
def test_every_transcript_line_parses(path: Path) -> None:
    seen = 0
    for record in _records(path):
        msg = record["msg"]
        if record["dir"] == "harness":
            continue
        if "_raw" in msg:  # bytes the client wrote on purpose, junk included
            raw = msg["_raw"].encode()
            if raw in (b"this is not json", b'{"id": 99}'):
                with pytest.raises(NotAMessage):
                    parse_message(raw)
            else:
                assert isinstance(parse_message(raw), Notification)
            continue
        for line in (json.dumps(msg).encode(), orjson.dumps(msg) + b"\n"):
            parsed = parse_message(line)
            assert type(parsed) is _expected_kind(msg)
            if isinstance(parsed, Response):
                assert parsed.id == msg["id"]
                assert (parsed.error is None) == ("error" not in msg)
            elif isinstance(parsed, Notification):
                assert parsed.params == msg.get("params", {})
        seen += 1
    assert seen


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"", None),
        (b"   \r\n", None),
        (b'{"id":1,"result":{}}', Response(1, {}, None)),
        (b'{"id":"s-1","result":null}', Response("s-1", None, None)),
        (
            b'{"error":{"code":-32600,"message":"Not initialized"},"id":1}',
            Response(1, None, RpcError(-32600, "Not initialized")),
        ),
        (b'{"id":2,"result":{"a":1},"error":null}', Response(2, {"a": 1}, None)),
        (b'{"id":3,"error":"bad"}', Response(3, None, RpcError(0, "bad"))),
        (b'{"id":4,"error":{"message":"m"}}', Response(4, None, RpcError(0, "m"))),
        (b'{"method":"initialized"}', Notification("initialized", {})),
        (b'{"method":"m","params":null}', Notification("m", {})),
        (
            b'{"jsonrpc":"2.0","method":"turn/started","params":{"threadId":"t"},"emittedAtMs":1}',
            Notification("turn/started", {"threadId": "t"}),
        ),
        # The worker counts its own request ids from 0; an id equal to one of ours is still a
        # request, because it has a method.
        (
            b'{"id":1,"method":"item/tool/call","params":{"threadId":"t"}}',
            ServerRequest(1, "item/tool/call", {"threadId": "t"}),
        ),
        (b'{"id":0,"method":"x"}', ServerRequest(0, "x", {})),
    ],
)
def test_parse_message(line: bytes, expected: Any) -> None:
    assert parse_message(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"this is not json",
        b'{"id": 99}',  # an id alone is nothing (codex does not answer it either)
        b"[1,2]",
        b'"str"',
        b"{}",
        b'{"result":{}}',
        b'{"id":true,"result":{}}',
        b'{"id":1.5,"result":{}}',
        b'{"id":null,"error":{"code":-32700,"message":"parse error"}}',
        b'{"method":5}',
        b'{"method":""}',
        b'{"method":"m","params":[1]}',
        b'{"id":1,"method":"m","result":{}}',
        b'{"id":1,"result":{}',
    ],
)
def test_parse_message_rejects(line: bytes) -> None:
    with pytest.raises(NotAMessage):
        parse_message(line)


def test_encoders_write_one_line() -> None:
    assert encode_request(7, "thread/loaded/list") == (
        b'{"id":7,"method":"thread/loaded/list","params":{}}\n'
    )
    assert encode_request("a", "turn/start", {"threadId": "t", "input": []}) == (
        b'{"id":"a","method":"turn/start","params":{"threadId":"t","input":[]}}\n'
    )
    assert encode_notification("initialized") == b'{"method":"initialized"}\n'
    assert encode_notification("n", {"a": 1}) == b'{"method":"n","params":{"a":1}}\n'
    assert encode_result(0, {"decision": "decline"}) == (
        b'{"id":0,"result":{"decision":"decline"}}\n'
    )
    assert encode_error(3, -32601, "not supported") == (
        b'{"id":3,"error":{"code":-32601,"message":"not supported"}}\n'
    )
    text = "line one\nline two\r\n\u2028 \"quoted\""
    line = encode_request(1, "turn/start", {"input": [{"type": "text", "text": text}]})
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    parsed = parse_message(line)
    assert isinstance(parsed, ServerRequest)  # id + method: what the worker sees as a request
    assert parsed.params["input"][0]["text"] == text


def test_thread_id_of() -> None:
    assert thread_id_of(Notification("turn/started", {"threadId": "a"})) == "a"
    assert thread_id_of(Notification("thread/started", {"thread": {"id": "b"}})) == "b"
    assert thread_id_of(ServerRequest(0, "item/tool/call", {"threadId": "c"})) == "c"
    assert thread_id_of(Notification("configWarning", {"summary": "x"})) is None
    assert thread_id_of(Notification("thread/started", {"thread": None})) is None
    assert thread_id_of(Notification("other", {"thread": {"id": "d"}})) is None
    assert thread_id_of(Notification("turn/started", {"threadId": 5})) is None


def test_error_message() -> None:
    assert error_message(RpcError(-32600, "thread not found: x")) == "thread not found: x"
    assert error_message(RpcError(-32600, "\n  first  \nsecond")) == "first"
    assert error_message(RpcError(-32601, "")) == "JSON-RPC error -32601"
    long = error_message(RpcError(-32600, "unknown variant, expected one of " + "`m`, " * 1000))
    assert len(long) == 500 and long.endswith("...")


# --------------------------------------------------------------------------------------------
# Server requests


def _request(method: str, id: int | str = 0) -> ServerRequest:
    return ServerRequest(id, method, {"threadId": "t"})


@pytest.mark.parametrize("tool_thread", [False, True])
def test_answers(tool_thread: bool) -> None:
    decline = b'{"id":0,"result":{"decision":"decline"}}\n'
    for method in ("item/commandExecution/requestApproval", "item/fileChange/requestApproval"):
        assert answer_for(_request(method), tool_thread=tool_thread) == decline
    assert answer_for(_request("mcpServer/elicitation/request", "s"), tool_thread=tool_thread) == (
        b'{"id":"s","result":{"action":"decline"}}\n'
    )
    for method in (
        "item/tool/requestUserInput",
        "item/permissions/requestApproval",
        "account/chatgptAuthTokens/refresh",
        "attestation/generate",
        "execCommandApproval",
        "applyPatchApproval",
        "no/such/request",
    ):
        assert answer_for(_request(method, 9), tool_thread=tool_thread) == (
            b'{"id":9,"error":{"code":-32601,"message":"not supported"}}\n'
        )


def test_dynamic_tool_call_is_left_pending_only_on_tool_threads() -> None:
    req = _request("item/tool/call", 4)
    assert answer_for(req, tool_thread=True) is None
    assert answer_for(req, tool_thread=False) == (
        b'{"id":4,"error":{"code":-32601,"message":"not supported"}}\n'
    )


@pytest.mark.parametrize(
    "scenario", ["approval_untrusted_accept", "approval_error_reply", "dyntool_e2e"]
)
def test_server_requests_in_captures(scenario: str) -> None:
    runs = replay(_transcript(scenario))
    requests = [req for run in runs for req in run.server_requests]
    assert requests
    for run in runs:
        for req in run.server_requests:
            answer = answer_for(req, tool_thread=bool(run.declared))
            if req.method == "item/tool/call":
                assert answer is None
            else:
                assert req.method == "item/commandExecution/requestApproval"
                assert answer == encode_result(req.id, {"decision": "decline"})
