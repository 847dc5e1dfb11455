"""The trio layer around one child, without HTTP: what reaches the outbox, in how many pieces."""

from __future__ import annotations

from pathlib import Path

import trio

from quartproxy import child, contract
from quartproxy.completion import Completion
from quartproxy.lifecycle import Lifecycle
from quartproxy.relay import Relay, Timing
from quartproxy.render import StreamRenderer

from .conftest import make_settings


async def run_relay(tmp_path: Path, fast_fake: Path, prompt: str) -> tuple[list[bytes], Relay]:
    settings = make_settings(tmp_path, codex_bin=str(fast_fake))
    child.prepare_dirs(settings)
    launch = child.Launch(
        argv=child.build_argv(settings, [str(fast_fake)], "gpt-5", None),
        env=child.child_env(settings), cwd=settings.codex_workdir,
    )
    done: list[Relay] = []

    async def on_done(relay: Relay) -> None:
        done.append(relay)

    relay = Relay(
        request_id="r1", prompt=prompt,
        completion=Completion(stream=True, prompt_chars=len(prompt)),
        launch=launch, timing=Timing(total=30, idle=30, early_finalize=0, keepalive=0,
                                     kill_grace=2),
        lifecycle=Lifecycle(),
        renderer=StreamRenderer(legacy=False, completion_id="chatcmpl-x", created=0,
                                model="codex-5", include_usage=True),
        on_done=on_done,
    )
    pieces: list[bytes] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            assert relay.outbox is not None
            async for piece in relay.outbox:
                pieces.append(piece)
    assert done == [relay] and relay.exit is not None
    return pieces, relay


async def test_finish_usage_and_done_are_one_piece(tmp_path: Path, fast_fake: Path) -> None:
    pieces, relay = await run_relay(tmp_path, fast_fake, "SCENARIO=slow DELTAS=3 DELAY_MS=20")
    raw = b"".join(pieces)
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=True))
    (last,) = [p for p in pieces if b'"finish_reason":"stop"' in p]
    assert b'"choices":[],"usage":{' in last and last.endswith(b"data: [DONE]\n\n")
    assert relay.exit is not None and relay.exit.cause == "sigterm"


async def test_a_burst_of_events_is_one_write(tmp_path: Path, fast_fake: Path) -> None:
    """Events that arrive together leave together: one outbox piece per stdout read at most."""
    pieces, relay = await run_relay(tmp_path, fast_fake, "SCENARIO=burst DELTAS=5000")
    raw = b"".join(pieces)
    contract.assert_valid(contract.check_chat_stream(raw, include_usage=True))
    frames = raw.count(b"\n\n")
    assert frames == 5000 + 4  # role, 5000 content, finish, usage, [DONE]
    assert len(pieces) <= relay.reads + 1  # +1: the role chunk, sent at spawn
    # The child wrote ~370 KB in one write: a few dozen reads at most, not one per event.
    assert relay.reads < 500, relay.reads

