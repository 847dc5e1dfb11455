"""Every per-request timer, exactly: a scripted backend under trio's MockClock (autojump).

The relay sleeps in a cancel scope whose deadline :class:`~quartproxy.timers.TurnClock` gives;
:class:`~quartproxy.backends.memory.MemoryBackend` pauses with ``trio.sleep``. With
``autojump_clock`` virtual time jumps straight to the next deadline whenever every task waits,
so each test below states *when* a turn ends (to the virtual millisecond) and *what* the client
got, byte for byte where it matters, and takes no wall time at all. No process, no socket: what
a slow machine does to real time cannot change a result here.

Three layers are driven:

* :class:`TurnClock` alone (sans-io, plain numbers);
* :class:`~quartproxy.relay.Relay` over a scripted turn (what reaches the outbox, and when);
* :class:`~quartproxy.service.CompletionService` without HTTP: admission, the slot, running
  turns, the usage record and ``PROXY_KILL_ON_DISCONNECT`` — with a request nursery that is
  cancelled when the "client" leaves, as the ASGI layer does.

Deadlines are chosen so that no two things are due at the same virtual instant (the order of
tasks woken at one instant is not part of any contract).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from quartproxy import contract
from quartproxy.admission import Admission
from quartproxy.asgi import Exchange
from quartproxy.backends.base import Capabilities, TurnDiagnostics, TurnRequest
from quartproxy.backends.memory import Hang, MemoryBackend, Pause, Step
from quartproxy.completion import Completion, End
from quartproxy.conversation import Conversation, Item
from quartproxy.errors import ApiError
from quartproxy.events import Counts, Delta, Event, Message, TaskComplete, TokenCount
from quartproxy.lifecycle import Lifecycle
from quartproxy.models import ModelCatalog
from quartproxy.observability import Metrics, NdjsonLog
from quartproxy.relay import Relay
from quartproxy.render import StreamRenderer, json_body
from quartproxy.service import CompletionService
from quartproxy.timers import NEVER, Timing, TurnClock
from quartproxy.toolblocks import ToolPolicy
from quartproxy.validation import parse_chat

from .conftest import make_settings

BLOCK_A = '<use_tool name="read">{"path":"a.txt"}</use_tool>'
BLOCK_B = '<use_tool name="list">{}</use_tool>'
BLOCK_C = '<use_tool name="grep">{"q":"x"}</use_tool>'
COUNTS = Counts(input_tokens=100, output_tokens=7, cached_input_tokens=0,
                reasoning_output_tokens=0)


def timing(*, total: float = 0, idle: float = 0, early: float = 0, keepalive: float = 0) -> Timing:
    return Timing(total=total, idle=idle, early_finalize=early, keepalive=keepalive)


def burst(grace_s: float) -> ToolPolicy:
    return ToolPolicy(stop_after=True, mode="burst", grace_s=grace_s, max_blocks=0,
                      suppress_tail=False)


def approx(value: float) -> Any:
    return pytest.approx(value, abs=1e-9)


# ============================================================================ TurnClock (sans-io)


def test_clock_without_timers_never_expires() -> None:
    clock = TurnClock(timing(), stream=True, started_at=10.0)
    assert clock.deadline() == NEVER
    assert clock.expired(1e9) is None


def test_clock_idle_moves_with_activity_only() -> None:
    clock = TurnClock(timing(total=100, idle=3), stream=True, started_at=10.0)
    assert clock.deadline() == 13.0
    clock.activity(12.0)
    assert clock.deadline() == 15.0
    assert clock.expired(14.999) is None
    assert clock.expired(15.0) is End.IDLE


def test_clock_early_finalize_is_non_stream_only_and_not_after_client_left() -> None:
    stream = TurnClock(timing(total=100, early=2), stream=True, started_at=0.0)
    assert stream.deadline() == 100.0
    plain = TurnClock(timing(total=100, early=2), stream=False, started_at=0.0)
    assert plain.deadline() == 2.0 and plain.expired(2.0) is End.EARLY_FINALIZE
    plain.client_left()
    assert plain.deadline() == 100.0 and plain.expired(50.0) is None


@pytest.mark.parametrize(
    ("total", "idle", "early", "stream", "cause"),
    [
        (10, 4, 7, False, End.IDLE),
        (3, 4, 7, False, End.TIMEOUT),
        (10, 8, 5, False, End.EARLY_FINALIZE),
        (10, 8, 5, True, End.IDLE),  # streams have no early finalize
    ],
)
def test_clock_earliest_passed_deadline_is_the_cause(
    total: float, idle: float, early: float, stream: bool, cause: End
) -> None:
    clock = TurnClock(timing(total=total, idle=idle, early=early), stream=stream, started_at=0.0)
    assert clock.expired(100.0) is cause  # all of them passed at once


def test_clock_tool_grace_restarts_only_on_new_blocks() -> None:
    clock = TurnClock(timing(total=100), stream=False, started_at=0.0, tools=burst(1.0))
    clock.activity(0.5, tool_blocks=0)
    assert clock.deadline() == 100.0  # no block yet: no grace running
    clock.activity(1.0, tool_blocks=1)
    assert clock.deadline() == 2.0
    clock.activity(1.5, tool_blocks=1)  # text, no new block: the grace keeps running
    assert clock.deadline() == 2.0
    clock.activity(1.8, tool_blocks=2)
    assert clock.deadline() == 2.8 and clock.expired(2.8) is End.TOOL_CUT


def test_clock_first_mode_has_no_grace() -> None:
    first = ToolPolicy(stop_after=True, mode="first", grace_s=1.0, max_blocks=0,
                       suppress_tail=False)
    clock = TurnClock(timing(), stream=False, started_at=0.0, tools=first)
    clock.activity(1.0, tool_blocks=1)
    assert clock.deadline() == NEVER


# ============================================================================ Relay


@dataclass
class Run:
    """What one relay produced: timed outbox pieces (stream) or the decision time."""

    relay: Relay
    pieces: list[tuple[float, bytes]] = field(default_factory=list)
    decided_at: float = 0.0
    finished_at: float = 0.0
    done_calls: int = 0

    @property
    def raw(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)

    @property
    def completion(self) -> Completion:
        return self.relay.completion

    def keepalive_times(self) -> list[float]:
        return [at for at, piece in self.pieces if piece.startswith(b": keepalive ")]


def renderer(*, include_usage: bool = True) -> StreamRenderer:
    return StreamRenderer(legacy=False, completion_id="chatcmpl-t", created=0, model="codex-5",
                          include_usage=include_usage)


async def run_relay(
    backend: Any,
    *,
    stream: bool,
    clock_timing: Timing,
    tools: ToolPolicy | None = None,
    lifecycle: Lifecycle | None = None,
    include_usage: bool = True,
    during: Callable[[Relay, float], Any] | None = None,
) -> Run:
    """Start a relay at virtual time 0 (relative) and run it to its end.

    ``during(relay, t0)`` runs as a sibling task (an outside event: shutdown, the client
    leaving).
    """
    lifecycle = lifecycle or Lifecycle()
    t0 = trio.current_time()
    calls: list[Relay] = []

    async def on_done(relay: Relay) -> None:
        calls.append(relay)

    relay = Relay(
        backend=backend,
        request=TurnRequest("req-1", Conversation((Item("user", "hi"),)), "gpt-5"),
        completion=Completion(stream=stream, prompt_chars=2, tools=tools),
        clock=TurnClock(clock_timing, stream=stream, started_at=t0, tools=tools),
        lifecycle=lifecycle,
        renderer=renderer(include_usage=include_usage) if stream else None,
        on_done=on_done,
    )
    run = Run(relay)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        if during is not None:
            nursery.start_soon(during, relay, t0)
        if relay.outbox is not None:
            async for piece in relay.outbox:
                run.pieces.append((trio.current_time() - t0, piece))
        await relay.decided.wait()
        run.decided_at = trio.current_time() - t0
        await relay.finished.wait()
        run.finished_at = trio.current_time() - t0
        nursery.cancel_scope.cancel()
    run.done_calls = len(calls)
    return run


def stream_result(run: Run, *, include_usage: bool = True) -> tuple[str, str | None, Any]:
    contract.assert_valid(contract.check_chat_stream(run.raw, include_usage=include_usage))
    return contract.collect_stream_content(run.raw)


def error_frames(raw: bytes) -> list[dict[str, Any]]:
    frames = [f.json for f in contract.parse_sse(raw) if isinstance(f.json, dict)]
    return [f["error"] for f in frames if "error" in f]


def ending(run: Run) -> bytes:
    """The last outbox piece: finish, usage and [DONE] must leave together."""
    return run.pieces[-1][1]


# ---------------------------------------------------------------------------- total


async def test_total_timeout_cuts_a_stream_with_text(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend([Delta("Hello"), Pause(1), Delta(" world"), Hang()])
    run = await run_relay(backend, stream=True, clock_timing=timing(total=5))
    assert stream_result(run)[:2] == ("Hello world", "length")
    # role and Hello at 0 (one piece or two: trio does not promise which task runs first),
    # " world" at 1, the end at 5
    assert sorted({at for at, _ in run.pieces}) == [0.0, 1.0, 5.0]
    assert [b'" world"' in piece for at, piece in run.pieces if at == 1.0] == [True]
    assert ending(run).count(b"\n\n") == 3  # finish, usage, [DONE]: one piece
    assert ending(run).endswith(b"data: [DONE]\n\n")
    assert run.completion.end_cause is End.TIMEOUT
    assert run.finished_at == 5.0 and run.done_calls == 1
    assert backend.open_now == 0 and backend.turns[0].closed


async def test_total_timeout_without_text(autojump_clock: trio.testing.MockClock) -> None:
    stream = await run_relay(MemoryBackend([Hang()]), stream=True,
                             clock_timing=timing(total=5))
    assert stream_result(stream)[:2] == ("", None)
    assert [e["code"] for e in error_frames(stream.raw)] == ["request_timeout"]
    assert stream.pieces[-1][0] == 5.0
    plain = await run_relay(MemoryBackend([Hang()]), stream=False, clock_timing=timing(total=5))
    error = plain.completion.error
    assert error is not None and (error.status, error.code) == (504, "request_timeout")
    assert plain.decided_at == 5.0


async def test_total_timeout_counts_from_the_start_not_from_activity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    steps: list[Step] = []
    for _ in range(20):
        steps += [Delta("x"), Pause(0.5)]
    run = await run_relay(MemoryBackend([*steps, Hang()]), stream=False,
                          clock_timing=timing(total=3.2, idle=1))
    assert run.decided_at == approx(3.2)
    assert run.completion.text() == "x" * 7  # deltas at 0, 0.5, ..., 3.0
    assert run.completion.finish_reason == "length"


# ---------------------------------------------------------------------------- idle


async def test_stream_idle_restarts_on_every_event(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [Delta("a"), Pause(2), Delta("b"), Pause(2.9), Delta("c"), Hang()]
    run = await run_relay(MemoryBackend(script), stream=True, clock_timing=timing(idle=3))
    assert stream_result(run)[:2] == ("abc", "length")
    assert run.pieces[-1][0] == approx(4.9 + 3)
    assert run.completion.end_cause is End.IDLE


async def test_idle_without_text(autojump_clock: trio.testing.MockClock) -> None:
    plain = await run_relay(MemoryBackend([Hang()]), stream=False, clock_timing=timing(idle=3))
    error = plain.completion.error
    assert error is not None and (error.status, error.code) == (504, "idle_timeout")
    assert plain.decided_at == 3.0
    stream = await run_relay(MemoryBackend([Hang()]), stream=True, clock_timing=timing(idle=3))
    assert [e["code"] for e in error_frames(stream.raw)] == ["idle_timeout"]
    stream_result(stream)


async def test_events_that_are_not_text_are_activity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Token counts keep a turn alive like text does: the idle deadline is about the backend."""
    script: list[Step] = [Delta("a"), Pause(2), TokenCount(COUNTS), Pause(2), Hang()]
    run = await run_relay(MemoryBackend(script), stream=False, clock_timing=timing(idle=3))
    assert run.decided_at == 5.0
    assert run.completion.finish_reason == "length" and run.completion.text() == "a"


# ---------------------------------------------------------------------------- early finalize


async def test_early_finalize_answers_non_stream_with_the_text_so_far(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script: list[Step] = [Delta("partial"), Pause(1), Delta(" answer"), Hang()]
    run = await run_relay(MemoryBackend(script), stream=False,
                          clock_timing=timing(total=60, idle=30, early=2))
    assert run.decided_at == 2.0
    assert (run.completion.text(), run.completion.finish_reason) == ("partial answer", "length")
    assert run.completion.end_cause is End.EARLY_FINALIZE


async def test_early_finalize_without_text_is_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = await run_relay(MemoryBackend([Hang()]), stream=False,
                          clock_timing=timing(total=60, early=2))
    error = run.completion.error
    assert error is not None and (error.status, error.code) == (504, "request_timeout")
    assert run.decided_at == 2.0


async def test_early_finalize_never_touches_streams(autojump_clock: trio.testing.MockClock) -> None:
    script: list[Step] = [Delta("slow"), Pause(4), Delta(" but whole"), TaskComplete(None)]
    run = await run_relay(MemoryBackend(script), stream=True,
                          clock_timing=timing(total=60, idle=30, early=2))
    assert stream_result(run)[:2] == ("slow but whole", "stop")
    assert run.pieces[-1][0] == 4.0


async def test_early_finalize_not_after_the_client_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nobody waits for an early answer once the client is gone: the turn runs to its end."""

    async def leave(relay: Relay, t0: float) -> None:
        await trio.sleep_until(t0 + 1)
        relay.client_left()

    script: list[Step] = [Delta("x"), Pause(5), Delta(" y"), TaskComplete(None)]
    run = await run_relay(MemoryBackend(script), stream=False,
                          clock_timing=timing(total=60, idle=30, early=2), during=leave)
    assert run.decided_at == 1.0  # the client left: nothing more is answered
    assert run.finished_at == 5.0
    assert (run.completion.text(), run.completion.finish_reason) == ("x y", "stop")
    assert run.relay.client_gone and run.done_calls == 1


# ---------------------------------------------------------------------------- tool burst


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("third_block", "cut_at", "text"),
    [
        (False, 1.5, f"Let me check. {BLOCK_A} then {BLOCK_B}"),
        # The tail held back after B is released when C completes.
        (True, 2.3, f"Let me check. {BLOCK_A} then {BLOCK_B} I guess the file and {BLOCK_C}"),
    ],
    ids=["two_blocks", "third_block_extends"],
)
async def test_tool_burst_grace(
    autojump_clock: trio.testing.MockClock, stream: bool, third_block: bool, cut_at: float,
    text: str,
) -> None:
    """Blocks complete at 0 and 0.5 s (grace 1 s): the cut is at 1.5 s, unless another block
    completes before that; text that is not a block (the tail) neither extends the grace nor
    reaches the client."""
    script: list[Step] = [
        [Delta("Let me check. "), Delta(BLOCK_A[:9]), Delta(BLOCK_A[9:])],
        Pause(0.5),
        [Delta(" then "), Delta(BLOCK_B)],
        Delta(" I guess the file"),
        Pause(0.8),  # t = 1.3
        Delta(f" and {BLOCK_C}") if third_block else Delta(" says hi."),
        Pause(10),
        Delta(" Never seen."),
        Hang(),
    ]
    run = await run_relay(MemoryBackend(script), stream=stream,
                          clock_timing=timing(total=60, idle=30), tools=burst(1.0))
    assert run.decided_at == approx(cut_at)
    assert run.completion.end_cause is End.TOOL_CUT
    assert (run.completion.text(), run.completion.finish_reason) == (text, "stop")
    if stream:
        assert stream_result(run)[:2] == (text, "stop")


# ---------------------------------------------------------------------------- keepalive


@pytest.mark.parametrize(
    ("script", "idle", "ticks", "end_at"),
    [
        ([Delta("Hi"), Hang()], 5.5, [1, 2, 3, 4, 5], 5.5),
        ([Delta("Hi"), Pause(2.25), Delta(" there"), Hang()], 5.5, [1, 2, 3, 4, 5, 6, 7], 7.75),
        ([Hang()], 0.5, [], 0.5),
    ],
    ids=["silent_after_text", "activity_moves_the_deadline", "deadline_before_first_tick"],
)
async def test_keepalive_comments_until_the_idle_deadline(
    autojump_clock: trio.testing.MockClock, script: list[Step], idle: float, ticks: list[float],
    end_at: float,
) -> None:
    """One comment per second of silence, none at the start, none after the end; comments are
    not activity, so they never push the idle deadline."""
    run = await run_relay(MemoryBackend(script), stream=True,
                          clock_timing=timing(idle=idle, keepalive=1))
    assert run.keepalive_times() == ticks
    stream_result(run)  # comments are valid SSE and never break the chunk grammar
    assert run.pieces[-1][0] == end_at
    assert run.completion.end_cause is End.IDLE


async def test_no_keepalive_when_off(autojump_clock: trio.testing.MockClock) -> None:
    run = await run_relay(MemoryBackend([Delta("Hi"), Hang()]), stream=True,
                          clock_timing=timing(idle=5.5))
    assert run.keepalive_times() == []
    assert stream_result(run)[:2] == ("Hi", "length")


# ---------------------------------------------------------------------------- shutdown


def finalize_at(seconds: float) -> Callable[[Relay, float], Any]:
    async def fire(relay: Relay, t0: float) -> None:
        await trio.sleep_until(t0 + seconds)
        relay.lifecycle.finalize()

    return fire


@pytest.mark.parametrize("include_usage", [True, False])
async def test_shutdown_finalizes_a_stream_with_length_usage_and_done(
    autojump_clock: trio.testing.MockClock, include_usage: bool
) -> None:
    run = await run_relay(MemoryBackend([Delta("Hello"), Pause(1), Delta(" there"), Hang()]),
                          stream=True, clock_timing=timing(total=60, idle=30),
                          during=finalize_at(3), include_usage=include_usage)
    text, finish, usage = stream_result(run, include_usage=include_usage)
    assert (text, finish) == ("Hello there", "length")
    assert (usage is not None) is include_usage
    last_at, last = run.pieces[-1]
    assert last_at == 3.0
    assert last.count(b"\n\n") == (3 if include_usage else 2)
    assert last.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"length"' in last
    assert run.completion.end_cause is End.SHUTDOWN


async def test_shutdown_finalizes_a_stream_without_text_as_length(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = await run_relay(MemoryBackend([Hang()]), stream=True,
                          clock_timing=timing(total=60), during=finalize_at(3))
    assert stream_result(run)[:2] == ("", "length")
    assert run.pieces[-1][0] == 3.0


@pytest.mark.parametrize(
    ("script", "expected"),
    [([Delta("Hello"), Hang()], ("Hello", "length")), ([Hang()], (503, "shutting_down"))],
    ids=["with_text", "without_text"],
)
async def test_shutdown_finalizes_non_stream(
    autojump_clock: trio.testing.MockClock, script: list[Step], expected: tuple[Any, Any]
) -> None:
    run = await run_relay(MemoryBackend(script), stream=False,
                          clock_timing=timing(total=60), during=finalize_at(3))
    assert run.decided_at == 3.0
    completion = run.completion
    if completion.error is not None:
        assert (completion.error.status, completion.error.code) == expected
    else:
        assert (completion.text(), completion.finish_reason) == expected


async def test_finalize_already_set_ends_a_new_turn_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lifecycle = Lifecycle()
    lifecycle.finalize()
    run = await run_relay(MemoryBackend([Delta("never"), Hang()]), stream=True,
                          clock_timing=timing(total=60), lifecycle=lifecycle)
    assert run.finished_at == 0.0
    assert stream_result(run)[:2] == ("", "length")


# ---------------------------------------------------------------------------- several deadlines


class LateWake:
    """A backend whose turn keeps the event loop from noticing time: after one delta it
    moves the clock ``jump`` seconds forward *synchronously* (as a long stall would), then
    waits. When the relay's deadline is next checked, several deadlines have passed at once."""

    capabilities = Capabilities(name="late-wake")

    def __init__(self, clock: trio.testing.MockClock, jump: float) -> None:
        self.clock = clock
        self.jump = jump

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def readiness(self) -> list[str]:
        return []

    @asynccontextmanager
    async def open_turn(self, request: TurnRequest) -> AsyncIterator[Any]:
        await trio.lowlevel.checkpoint()
        yield self

    diagnostics = TurnDiagnostics()
    end = None

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Event]]:
        yield [Delta("x")]
        self.clock.jump(self.jump)
        yield []  # no events: no activity
        await trio.sleep_forever()


@pytest.mark.parametrize(
    ("total", "idle", "early", "stream", "cause"),
    [
        (10, 4, 7, False, End.IDLE),
        (3, 4, 7, False, End.TIMEOUT),
        (10, 8, 5, False, End.EARLY_FINALIZE),
        (10, 8, 5, True, End.IDLE),
    ],
)
async def test_earliest_deadline_wins_when_several_passed(
    autojump_clock: trio.testing.MockClock, total: float, idle: float, early: float,
    stream: bool, cause: End,
) -> None:
    run = await run_relay(LateWake(autojump_clock, jump=20), stream=stream,
                          clock_timing=timing(total=total, idle=idle, early=early))
    assert run.decided_at == 20.0  # every deadline passed during the stall
    assert run.completion.end_cause is cause
    assert (run.completion.text(), run.completion.finish_reason) == ("x", "length")


class ChannelBackend:
    """A turn fed from a memory channel by the test, one batch per send."""

    capabilities = Capabilities(name="channel")

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[list[Event]](100)
        self.diagnostics = TurnDiagnostics()
        self.end = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def readiness(self) -> list[str]:
        return []

    @asynccontextmanager
    async def open_turn(self, request: TurnRequest) -> AsyncIterator[Any]:
        await trio.lowlevel.checkpoint()
        yield self

    def __aiter__(self) -> ChannelBackend:
        return self

    async def __anext__(self) -> list[Event]:
        try:
            return await self.receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


@pytest.mark.parametrize("stream", [True, False])
async def test_a_batch_delivered_as_the_deadline_passes_is_activity(
    autojump_clock: trio.testing.MockClock, stream: bool
) -> None:
    """trio can hand a read its data and notice the deadline in the same loop iteration (a
    stalled process: both happened while it was not running). The batch is activity: it moves
    the idle deadline, and the stale cancellation must not end the turn (nor name a cause that
    did not happen)."""
    backend = ChannelBackend()

    async def feed(relay: Relay, t0: float) -> None:
        await backend.send.send([Delta("a")])
        await trio.sleep_until(t0 + 2)
        backend.send.send_nowait([Delta("b")])  # the relay now holds this batch...
        autojump_clock.jump(5)  # ...and the idle deadline (t0 + 5) passes before it runs

    run = await run_relay(backend, stream=stream, clock_timing=timing(idle=3), during=feed)
    assert run.completion.end_cause is End.IDLE
    assert run.decided_at == 7.0 + 3  # "b" was taken at 7: the idle deadline moved to 10
    assert (run.completion.text(), run.completion.finish_reason) == ("ab", "length")


# ============================================================================ CompletionService


class MemoryUsageLog(NdjsonLog):
    """The usage log, kept in memory: the service's one ``record`` call per turn is the fact."""

    def __init__(self) -> None:
        super().__init__(Path("unused-usage.ndjson"))
        self.records: list[dict[str, Any]] = []

    def record(self, fields: dict[str, Any]) -> None:
        self.records.append(fields)


@dataclass
class Service:
    service: CompletionService
    backend: MemoryBackend
    lifecycle: Lifecycle
    admission: Admission
    usage: MemoryUsageLog
    catalog: ModelCatalog
    max_prompt_tokens: int


@asynccontextmanager
async def service_over(
    tmp_path: Path, script: Sequence[Step], **overrides: Any
) -> AsyncIterator[Service]:
    settings = make_settings(tmp_path, **{
        "timeout_ms": 600_000, "stream_idle_timeout_ms": 300_000, "proto_idle_ms": 300_000,
        "sse_max_concurrency": 4, "max_concurrency": 8, **overrides,
    })
    lifecycle = Lifecycle()
    metrics = Metrics()
    admission = Admission(settings, metrics)
    usage = MemoryUsageLog()
    backend = MemoryBackend(script)
    service = CompletionService(settings=settings, backend=backend, admission=admission,
                                metrics=metrics, usage_log=usage, lifecycle=lifecycle)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        yield Service(service, backend, lifecycle, admission, usage, ModelCatalog(settings),
                      settings.max_prompt_tokens)
        nursery.cancel_scope.cancel()


@dataclass
class Answer:
    """What one request got, as the route would answer it."""

    status: int = 0
    body: dict[str, Any] | None = None
    pieces: list[tuple[float, bytes]] = field(default_factory=list)
    relay: Relay | None = None
    exchange: Exchange | None = None
    ended_at: float = 0.0

    @property
    def raw(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)


async def ask(
    svc: Service, *, stream: bool, keepalive_s: float = 0.0, leave_at: float | None = None,
) -> Answer:
    """One request through the service, the way the route and the ASGI layer run it.

    ``leave_at``: the client disconnects then (the request's nursery is cancelled, as
    quart-trio does on ``http.disconnect``), and the request's cleanups run, shielded.
    """
    body: dict[str, Any] = {"model": "codex-5", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    req = parse_chat(body, svc.catalog, max_prompt_tokens=svc.max_prompt_tokens)
    exchange = Exchange(request_id=uuid.uuid4().hex, method="POST",
                        path="/v1/chat/completions", user_agent="timer-test")
    exchange.route = "/v1/chat/completions"
    answer = Answer(exchange=exchange)
    t0 = trio.current_time()
    try:
        async with trio.open_nursery() as nursery:
            exchange.nursery = nursery
            if leave_at is not None:

                async def leave() -> None:
                    await trio.sleep_until(t0 + leave_at)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(leave)
            try:
                relay = await svc.service.start(
                    req, exchange, key="k", keepalive_s=keepalive_s,
                    renderer=renderer() if stream else None,
                )
            except ApiError as exc:
                answer.status, answer.body = exc.status, exc.payload()
                nursery.cancel_scope.cancel()
                return answer
            answer.relay = relay
            if relay.outbox is not None:
                answer.status = 200
                async for piece in relay.outbox:
                    answer.pieces.append((trio.current_time() - t0, piece))
            else:
                await relay.decided.wait()
                completion = relay.completion
                if completion.error is not None:
                    answer.status, answer.body = completion.error.status, completion.error.payload()
                else:
                    answer.status = 200
                    answer.body = json_body(completion, legacy=False, completion_id="chatcmpl-t",
                                            created=0, model=req.model)
            answer.ended_at = trio.current_time() - t0
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for cleanup in exchange.cleanups:
                await cleanup()
    return answer


async def settled(svc: Service, answer: Answer) -> dict[str, Any]:
    """The turn's one usage record, once the turn is over; the slot and the count are back."""
    assert answer.relay is not None
    await answer.relay.finished.wait()
    assert len(svc.usage.records) == 1, svc.usage.records
    assert svc.service.running.value == 0
    occupancy = svc.admission.occupancy
    assert (occupancy.turns, occupancy.streams) == (0, 0)
    assert svc.backend.open_now == 0
    return svc.usage.records[0]


def chat_text(answer: Answer) -> tuple[str, str | None]:
    assert answer.status == 200 and answer.body is not None, answer
    contract.assert_valid(contract.check_chat_json(answer.body))
    choice = answer.body["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def checked_stream(answer: Answer) -> tuple[str, str | None, Any]:
    contract.assert_valid(contract.check_chat_stream(answer.raw, include_usage=True))
    return contract.collect_stream_content(answer.raw)


async def test_service_picks_the_idle_deadline_by_kind(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """``PROXY_STREAM_IDLE_TIMEOUT_MS`` for streams, ``PROXY_PROTO_IDLE_MS`` otherwise."""
    script = [Delta("Hello"), Hang()]
    async with service_over(tmp_path, script, stream_idle_timeout_ms=5000,
                            proto_idle_ms=2000) as svc:
        plain = await ask(svc, stream=False)
        record = await settled(svc, plain)
    assert plain.ended_at == 2.0 and chat_text(plain) == ("Hello", "length")
    assert (record["outcome"], record["finish_reason"], record["status"]) == (
        "timeout", "length", 200)
    async with service_over(tmp_path, script, stream_idle_timeout_ms=5000,
                            proto_idle_ms=2000) as svc:
        stream = await ask(svc, stream=True)
        record = await settled(svc, stream)
    assert stream.ended_at == 5.0 and checked_stream(stream)[:2] == ("Hello", "length")
    assert (record["outcome"], record["stream"]) == ("timeout", True)


async def test_service_total_timeout_without_text_is_504(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with service_over(tmp_path, [Hang()], timeout_ms=4000) as svc:
        answer = await ask(svc, stream=False)
        record = await settled(svc, answer)
    assert answer.status == 504 and answer.ended_at == 4.0
    assert answer.body is not None
    contract.assert_valid(contract.check_error_json(answer.body))
    assert answer.body["error"]["code"] == "request_timeout"
    assert (record["status"], record["outcome"], record["duration_ms"]) == (504, "timeout", 4000.0)


async def test_service_early_finalize(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    script = [Delta("So far"), Pause(3), Delta(" and more"), TaskComplete(None)]
    async with service_over(tmp_path, script, nonstream_truncate_after_ms=1500) as svc:
        plain = await ask(svc, stream=False)
        plain_record = await settled(svc, plain)
    async with service_over(tmp_path, script, nonstream_truncate_after_ms=1500) as svc:
        stream = await ask(svc, stream=True)
        await settled(svc, stream)
    assert plain.ended_at == 1.5 and chat_text(plain) == ("So far", "length")
    assert plain_record["outcome"] == "timeout"
    assert stream.ended_at == 3.0 and checked_stream(stream)[:2] == ("So far and more", "stop")


async def test_service_tool_burst_cut(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    script: list[Step] = [Delta(f"Do {BLOCK_A}"), Pause(0.2), Delta(f" {BLOCK_B} tail"),
                          Pause(30), Delta(" late"), TaskComplete(None)]
    settings = {"stop_after_tools": True, "stop_after_tools_grace_ms": 1000}
    for stream in (False, True):
        async with service_over(tmp_path, script, **settings) as svc:
            answer = await ask(svc, stream=stream)
            record = await settled(svc, answer)
        text = f"Do {BLOCK_A} {BLOCK_B}"
        assert answer.ended_at == approx(1.2)
        if stream:
            assert checked_stream(answer)[:2] == (text, "stop")
        else:
            assert chat_text(answer) == (text, "stop")
        assert (record["outcome"], record["finish_reason"]) == ("ok", "stop")


async def test_service_keepalive_count(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with service_over(tmp_path, [Delta("Hi"), Hang()],
                            stream_idle_timeout_ms=3500) as svc:
        answer = await ask(svc, stream=True, keepalive_s=1.0)
        await settled(svc, answer)
    keepalives = [at for at, piece in answer.pieces if piece.startswith(b": keepalive ")]
    assert keepalives == [1.0, 2.0, 3.0]
    assert checked_stream(answer)[:2] == ("Hi", "length") and answer.ended_at == 3.5


async def test_service_shutdown_finalize(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async def shut_down_at(svc: Service, seconds: float) -> None:
        await trio.sleep(seconds)
        svc.lifecycle.finalize()

    results: dict[str, Answer] = {}
    async with service_over(tmp_path, [Delta("Part"), Hang()]) as svc:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shut_down_at, svc, 2)

            async def one(stream: bool) -> None:
                results["stream" if stream else "plain"] = await ask(svc, stream=stream)

            nursery.start_soon(one, True)
            nursery.start_soon(one, False)
        assert svc.service.running.value == 0
        outcomes = sorted(r["outcome"] for r in svc.usage.records)
        refused = await ask(svc, stream=False)  # draining: refused before any turn
    assert outcomes == ["shutdown", "shutdown"]
    stream, plain = results["stream"], results["plain"]
    assert checked_stream(stream)[:2] == ("Part", "length") and stream.ended_at == 2.0
    assert stream.pieces[-1][1].endswith(b"data: [DONE]\n\n")
    assert chat_text(plain) == ("Part", "length") and plain.ended_at == 2.0
    assert refused.status == 503 and refused.body is not None
    assert refused.body["error"]["code"] == "shutting_down"


async def test_service_shutdown_without_text_non_stream_is_503(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with service_over(tmp_path, [Hang()]) as svc:
        async with trio.open_nursery() as nursery:
            answers: list[Answer] = []

            async def one() -> None:
                answers.append(await ask(svc, stream=False))

            nursery.start_soon(one)
            await svc.service.running.wait_value(1)
            svc.lifecycle.finalize()
        record = await settled(svc, answers[0])
    assert answers[0].status == 503 and answers[0].body is not None
    assert answers[0].body["error"]["code"] == "shutting_down"
    assert (record["outcome"], record["status"]) == ("shutdown", 503)


async def test_service_disconnect_ends_the_turn(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    script = [Delta("a"), Pause(5), Delta("b"), TaskComplete(None)]
    async with service_over(tmp_path, script) as svc:
        answer = await ask(svc, stream=True, leave_at=1)
        # The turn lives in the request's nursery: it is over when the request is.
        assert answer.relay is not None and answer.relay.finished.is_set()
        assert svc.backend.open_now == 0 and svc.backend.turns[0].closed
        record = await settled(svc, answer)
    assert answer.relay is not None and answer.relay.client_gone
    assert (record["outcome"], record["finish_reason"], record["duration_ms"]) == (
        "client_disconnect", None, 1000.0)


@pytest.mark.parametrize("stream", [True, False])
async def test_service_detached_turn_finishes_after_the_client_left(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, stream: bool
) -> None:
    """``PROXY_KILL_ON_DISCONNECT=false``: the turn keeps its slot and runs to its end (the
    non-stream early finalize does not apply to a client that left), and its usage is
    recorded as a client disconnect, with codex's counts."""
    script = [Delta("a"), Pause(5), Delta("b"), TokenCount(COUNTS), Message("ab"),
              TaskComplete("ab")]
    async with service_over(tmp_path, script, kill_on_disconnect=False,
                            nonstream_truncate_after_ms=2000) as svc:
        t0 = trio.current_time()
        answer = await ask(svc, stream=stream, leave_at=1)
        assert trio.current_time() - t0 == 1.0  # the request is over...
        assert svc.service.running.value == 1  # ...the turn is not, and keeps its slot
        assert svc.admission.occupancy.turns == 1
        assert svc.admission.occupancy.streams == (1 if stream else 0)
        assert svc.usage.records == []
        record = await settled(svc, answer)
        assert trio.current_time() - t0 == 5.0
    relay = answer.relay
    assert relay is not None and relay.client_gone
    assert (relay.completion.text(), relay.completion.finish_reason) == ("ab", "stop")
    assert (record["outcome"], record["finish_reason"], record["counts_source"]) == (
        "client_disconnect", "stop", "codex")
    assert (record["prompt_tokens"], record["completion_tokens"]) == (100, 7)
    assert answer.exchange is not None and answer.exchange.outcome == "client_disconnect"
