"""The Responses renderer inside the real relay, over the scripted backend, under MockClock.

No process and no socket: virtual time drives keepalives and deadlines, so the number and
position of keepalive comments and the batching of writes are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

from quartproxy import contract
from quartproxy.backends.base import TurnRequest
from quartproxy.backends.memory import Hang, MemoryBackend, Pause, Step
from quartproxy.completion import Completion
from quartproxy.conversation import Conversation, Item
from quartproxy.events import Counts, Delta, TaskComplete, TokenCount
from quartproxy.lifecycle import Lifecycle
from quartproxy.relay import Outbox, Relay
from quartproxy.render_responses import ResponseHead, ResponsesStreamRenderer
from quartproxy.timers import Timing, TurnClock

from .responses_support import sdk_accumulate


class RecordingOutbox(Outbox):
    """An outbox that also keeps every piece pushed to it (one per rendered batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.pushed: list[bytes] = []

    def push(self, data: bytes) -> None:
        self.pushed.append(data)
        super().push(data)


async def run(script: Sequence[Step], timing: Timing,
              lifecycle: Lifecycle | None = None) -> list[bytes]:
    """The pieces pushed to the outbox of one streamed turn (each one is, at most, one socket
    write: the body sends whatever is pending as one chunk)."""
    lifecycle = lifecycle or Lifecycle()
    backend = MemoryBackend(list(script))
    relay = Relay(
        backend=backend,
        request=TurnRequest("r1", Conversation((Item("user", "hi"),)), "gpt-5"),
        completion=Completion(stream=True, prompt_chars=9),
        clock=TurnClock(timing, stream=True, started_at=trio.current_time()),
        lifecycle=lifecycle,
        renderer=ResponsesStreamRenderer(ResponseHead("resp_r1", 0, "codex-5", {})),
    )
    outbox = relay.outbox = RecordingOutbox()
    received: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        async for piece in outbox:
            received.append(piece)
        await relay.finished.wait()
    assert backend.open_now == 0
    assert b"".join(received) == b"".join(outbox.pushed)
    return outbox.pushed


async def test_keepalives_then_idle_deadline(autojump_clock: trio.testing.MockClock) -> None:
    """Two deltas at t0, then silence: keepalive ticks at t0+1 and t0+2 (the ticker skips its
    first), the idle deadline at t0+2.5 ends the answer as incomplete."""
    timing = Timing(total=30, idle=2.5, early_finalize=0, keepalive=1.0)
    pieces = await run([[Delta("Hello")], [Delta(" there")], Hang()], timing)
    raw = b"".join(pieces)
    contract.assert_valid(contract.check_responses_stream(raw, model="codex-5"))
    blocks = contract.parse_responses_sse(raw)
    comments = [b.index for b in blocks if b.comments]
    assert len(comments) == 2
    assert all(b.comments[0].startswith(": keepalive ") for b in blocks if b.comments)
    names = [b.name for b in blocks]
    # Both keepalives come after the text and before the end.
    last_delta = max(i for i, n in enumerate(names) if n == "response.output_text.delta")
    assert all(last_delta < i < names.index("response.output_text.done") for i in comments)
    transcript = contract.collect_responses_stream(raw)
    assert transcript.text == "Hello there" and transcript.terminal == "response.incomplete"
    assert raw.endswith(b"\n\n") and names[-1] == "response.incomplete"


async def test_one_write_per_batch(autojump_clock: trio.testing.MockClock) -> None:
    timing = Timing(total=30, idle=10, early_finalize=0, keepalive=0)
    counts = TokenCount(Counts(10, 3))
    pieces = await run([
        [Delta("a"), Delta("b")],
        Pause(0.5),
        [Delta("c"), counts, TaskComplete(None)],
    ], timing)
    raw = b"".join(pieces)
    contract.assert_valid(contract.check_responses_stream(raw))
    assert len(pieces) == 3  # opening, first batch, last batch
    assert pieces[0].count(b"event: ") == 2  # created, in_progress
    assert pieces[1].count(b"event: response.output_text.delta\n") == 2
    assert pieces[2].count(b"event: ") == 5  # delta, text/part/item done, completed
    types, final = sdk_accumulate(raw)
    assert final is not None and final.output_text == "abc"
    assert final.usage is not None and final.usage.total_tokens == 13
    assert types.count("response.output_text.delta") == 3


async def test_shutdown_finalize_mid_answer(autojump_clock: trio.testing.MockClock) -> None:
    lifecycle = Lifecycle()
    timing = Timing(total=30, idle=10, early_finalize=0, keepalive=0)

    async def finalize_later() -> None:
        await trio.sleep(1)  # ok-sleep: virtual time (autojump MockClock)
        lifecycle.finalize()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finalize_later)
        pieces = await run([[Delta("partial")], Hang()], timing, lifecycle)
    transcript = contract.collect_responses_stream(b"".join(pieces))
    contract.assert_valid(contract.check_responses_stream(b"".join(pieces)))
    assert transcript.terminal == "response.incomplete" and transcript.text == "partial"
    assert transcript.response is not None
    assert transcript.response["incomplete_details"] == {"reason": "max_output_tokens"}
