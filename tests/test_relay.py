"""The trio layer around one turn, without HTTP: what reaches the outbox, in how many pieces."""

from __future__ import annotations

from pathlib import Path

import trio

from quartproxy import contract
from quartproxy.backends.base import TurnRequest
from quartproxy.backends.proto.backend import ProtoBackend, ProtoTurn
from quartproxy.completion import Completion
from quartproxy.conversation import Conversation, Item
from quartproxy.lifecycle import Lifecycle
from quartproxy.relay import Relay
from quartproxy.render import StreamRenderer
from quartproxy.timers import Timing, TurnClock

from .conftest import make_settings


async def run_relay(tmp_path: Path, fast_fake: Path, prompt: str) -> tuple[list[bytes], Relay]:
    settings = make_settings(tmp_path, codex_bin=str(fast_fake))
    lifecycle = Lifecycle()
    backend = ProtoBackend(settings, lifecycle)
    done: list[Relay] = []

    async def on_done(relay: Relay) -> None:
        done.append(relay)

    relay = Relay(
        backend=backend,
        request=TurnRequest("r1", Conversation((Item("user", prompt),)), "gpt-5"),
        completion=Completion(stream=True, prompt_chars=len(prompt)),
        clock=TurnClock(Timing(total=30, idle=30, early_finalize=0, keepalive=0), stream=True,
                        started_at=trio.current_time()),
        lifecycle=lifecycle,
        renderer=StreamRenderer(legacy=False, completion_id="chatcmpl-x", created=0,
                                model="codex-5", include_usage=True),
        on_done=on_done,
    )
    pieces: list[bytes] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run)
            await nursery.start(relay.run)
            assert relay.outbox is not None
            async for piece in relay.outbox:
                pieces.append(piece)
            await relay.finished.wait()
            nursery.cancel_scope.cancel()
    assert done == [relay] and relay.turn is not None
    return pieces, relay


async def test_finish_usage_and_done_are_one_piece(tmp_path: Path, fast_fake: Path) -> None:
    pieces, relay = await run_relay(tmp_path, fast_fake, "SCENARIO=slow DELTAS=3 DELAY_MS=20")
    raw = b"".join(pieces)
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=True))
    (last,) = [p for p in pieces if b'"finish_reason":"stop"' in p]
    assert b'"choices":[],"usage":{' in last and last.endswith(b"data: [DONE]\n\n")
    assert relay.turn is not None and relay.turn.diagnostics.exit_cause == "sigterm"


async def test_a_burst_of_events_is_one_write(tmp_path: Path, fast_fake: Path) -> None:
    """Events that arrive together leave together: one outbox piece per stdout read at most."""
    pieces, relay = await run_relay(tmp_path, fast_fake, "SCENARIO=burst DELTAS=5000")
    raw = b"".join(pieces)
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=True))
    frames = raw.count(b"\n\n")
    assert frames == 5000 + 4  # role, 5000 content, finish, usage, [DONE]
    turn = relay.turn
    assert isinstance(turn, ProtoTurn)
    assert len(pieces) <= turn.reads + 1  # +1: the role chunk, sent at spawn
    # The child wrote ~370 KB in one write: a few dozen reads at most, not one per event.
    assert turn.reads < 500, turn.reads
