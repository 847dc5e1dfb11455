"""Golden transcripts (issue 5): the exact bytes the proxy sends for a fixed set of requests.

Each case in :data:`tests.goldens.CASES` is sent to the real server (real fake-codex children),
checked with the wire-contract checker, normalised (ids, ``created``, keepalive timestamps only)
and compared byte for byte with ``fixtures/goldens/<case>.golden``. A mismatch fails with a
unified diff; a missing golden fails too. Goldens are written only with
``QUARTPROXY_UPDATE_GOLDENS=1``, which only ``nox -s goldens`` sets.

Determinism: every case but one ends on an event of the child (task_complete, stdout closing, an
error), never on a timer, so its body is fixed. The keepalive case needs timers (keepalive ticks
and the idle deadline that ends a silent child); it runs under a trio ``MockClock`` that only
moves when the test jumps it, so the number and position of keepalive comments is fixed by
construction rather than by how fast the machine is.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from quartproxy import contract

from . import goldens
from .conftest import API_KEY, StartProxy

REAL_TIME_CASES = [case for case in goldens.CASES if not case.mock_clock]
CLOCK_CASES = [case for case in goldens.CASES if case.mock_clock]


@pytest.fixture(scope="module", autouse=True)
def _report_changed_goldens(request: pytest.FixtureRequest) -> Iterator[None]:
    """In update mode, list the golden files this run wrote (visible without ``-s``)."""
    yield
    if not goldens.update_mode():
        return
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None:
        return
    lines = [f"golden {line}" for line in goldens.CHANGED] or ["goldens: no file changed"]
    with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


def fail_on(report: str) -> None:
    if report:
        pytest.fail(report, pytrace=False)


# ---------------------------------------------------------------------------- the goldens


@pytest.mark.parametrize("case", REAL_TIME_CASES, ids=lambda case: case.name)
async def test_golden(start_proxy: StartProxy, case: goldens.Case) -> None:
    proxy = await start_proxy(**case.settings)
    if case.app_server:
        await proxy.wait_ready()  # the worker is started in the background
    async with proxy.client() as client:
        rec = await goldens.record(client, case, API_KEY)
    if case.app_server:  # the worker outlives the request; its thread is gone
        with trio.fail_after(30):
            await proxy.state.service.running.wait_value(0)
    else:
        await proxy.wait_idle()
    fail_on(goldens.check(case, rec))


async def _real_time_guard(seconds: float, scope: trio.CancelScope, fired: list[bool]) -> None:
    """A watchdog in real time (the test's trio clock is frozen, so fail_after cannot work)."""
    await trio.to_thread.run_sync(time.sleep, seconds, abandon_on_cancel=True)
    fired.append(True)
    scope.cancel()


async def record_keepalive_case(
    client: httpx.AsyncClient, case: goldens.Case, clock: trio.testing.MockClock
) -> goldens.Recording:
    """stream_hang under a frozen clock: content, +1 s, +1 s, +0.5 s (idle deadline 2.5 s).

    Virtual time stands still while the child starts and sends its three deltas, so the relay's
    keepalive ticker, its idle deadline and the last stdout activity all share one instant t0.
    Jumps then put exactly one keepalive tick at t0+1 and t0+2, and the idle deadline alone at
    t0+2.5 (no tick there), each jump only after the previous frame has arrived.
    """
    chunks: list[bytes] = []
    keepalive = re.compile(rb"^: keepalive ", re.MULTILINE)

    async def read_until(it: AsyncIterator[bytes], ready: Callable[[bytes], bool]) -> None:
        while not ready(b"".join(chunks)):
            chunks.append(await anext(it))

    fired: list[bool] = []
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_real_time_guard, 120.0, scope, fired)
            async with client.stream(
                "POST", case.path, json=case.body,
                headers=goldens.request_headers(case, API_KEY),
            ) as resp:
                it = resp.aiter_raw()
                await read_until(it, lambda body: b'{"content":" is"}' in body)
                for step, expected in ((1.0, 1), (1.0, 2)):
                    clock.jump(step)
                    await read_until(
                        it, lambda body, n=expected: len(keepalive.findall(body)) >= n
                    )
                clock.jump(0.5)
                chunks.extend([chunk async for chunk in it])
            nursery.cancel_scope.cancel()
    assert not fired, f"keepalive case stuck after 120 s; got so far: {b''.join(chunks)!r}"
    return goldens.Recording(resp.status_code, goldens.recorded_headers(resp), b"".join(chunks))


@pytest.mark.parametrize("case", CLOCK_CASES, ids=lambda case: case.name)
async def test_golden_keepalive(
    start_proxy: StartProxy, mock_clock: trio.testing.MockClock, case: goldens.Case
) -> None:
    proxy = await start_proxy(**case.settings)
    async with proxy.client(timeout=None) as client:
        rec = await record_keepalive_case(client, case, mock_clock)
    await proxy.wait_idle()
    fail_on(goldens.check(case, rec))


def test_no_orphan_goldens() -> None:
    """Every file in fixtures/goldens belongs to a case (a renamed case leaves none behind)."""
    stale = goldens.orphans()
    if goldens.update_mode():
        for path in stale:
            path.unlink()
            goldens.CHANGED.append(f"removed: {goldens.relative(path)}")
        return
    assert not stale, (
        f"golden files without a case: {[goldens.relative(p) for p in stale]}. "
        f"{goldens.REGENERATE}"
    )


@pytest.mark.parametrize(
    ("json_case", "stream_case"),
    [("chat_json_minimal", "chat_stream_include_usage"),
     ("chat_json_truncation", "chat_stream_truncation"),
     ("completion_json", "completion_stream"),
     ("app_chat_json_minimal", "app_chat_stream_include_usage"),
     ("app_tools_follow_up_chat_json", "app_tools_follow_up_chat_stream")],
)
def test_stream_and_json_goldens_agree(json_case: str, stream_case: str) -> None:
    """Same child output, both renderings: same text, finish_reason and usage (lifecycle.md)."""
    _, json_body = goldens.split_golden(goldens.CASES_BY_NAME[json_case].file.read_bytes())
    _, sse_body = goldens.split_golden(goldens.CASES_BY_NAME[stream_case].file.read_bytes())
    choice = json.loads(json_body)["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    streamed, finish, usage = contract.collect_stream_content(sse_body)
    assert (streamed, finish) == (text, choice["finish_reason"])
    assert usage == json.loads(json_body)["usage"]


@pytest.mark.parametrize(("proto_case", "app_case"), goldens.SAME_ON_BOTH_BACKENDS)
def test_both_backends_put_the_same_bytes_on_the_wire(proto_case: str, app_case: str) -> None:
    """The same request over a proto child and over an app-server worker: identical bodies."""
    _, proto_body = goldens.split_golden(goldens.CASES_BY_NAME[proto_case].file.read_bytes())
    _, app_body = goldens.split_golden(goldens.CASES_BY_NAME[app_case].file.read_bytes())
    assert app_body == proto_body


def _streamed_calls(body: bytes) -> list[dict[str, Any]]:
    """delta.tool_calls accumulated the way SDKs do it: by index, arguments concatenated."""
    calls: dict[int, dict[str, Any]] = {}
    for frame in contract.parse_sse(body):
        doc = frame.json
        if not isinstance(doc, dict) or not doc.get("choices"):
            continue
        for part in doc["choices"][0]["delta"].get("tool_calls") or []:
            call = calls.setdefault(part["index"], {"function": {"arguments": ""}})
            for key in ("id", "type"):
                if key in part:
                    call[key] = part[key]
            function = part.get("function") or {}
            if "name" in function:
                call["function"]["name"] = function["name"]
            call["function"]["arguments"] += function.get("arguments") or ""
    return [calls[index] for index in sorted(calls)]


@pytest.mark.parametrize("scenario", ["tool_call", "tool_calls_parallel", "text_then_call"])
def test_tool_call_goldens_agree(scenario: str) -> None:
    """Stream and JSON renderings of the same calls: the same ids, names and arguments, the
    same text before them, finish tool_calls and usage; Responses stream and JSON carry the
    same function_call items."""
    name = f"app_tools_{scenario}"
    _, json_body = goldens.split_golden(goldens.CASES_BY_NAME[f"{name}_chat_json"].file
                                        .read_bytes())
    _, sse_body = goldens.split_golden(goldens.CASES_BY_NAME[f"{name}_chat_stream"].file
                                       .read_bytes())
    message = json.loads(json_body)["choices"][0]["message"]
    assert _streamed_calls(sse_body) == message["tool_calls"]
    text, finish, usage = contract.collect_stream_content(sse_body)
    assert (text or None, finish) == (message["content"], "tool_calls")
    assert usage == json.loads(json_body)["usage"]
    _, r_json = goldens.split_golden(goldens.CASES_BY_NAME[f"{name}_responses_json"].file
                                     .read_bytes())
    _, r_sse = goldens.split_golden(goldens.CASES_BY_NAME[f"{name}_responses_stream"].file
                                    .read_bytes())
    doc = json.loads(r_json)
    transcript = contract.collect_responses_stream(r_sse)
    assert transcript.response is not None
    # Item ids are normalised (fc_<id>), so the two response objects compare whole.
    assert transcript.response == doc
    calls = [(i["call_id"], i["name"], i["arguments"]) for i in doc["output"]
             if i["type"] == "function_call"]
    assert calls == [(c["id"], c["function"]["name"], c["function"]["arguments"])
                     for c in message["tool_calls"]]


# ---------------------------------------------------------------------------- the checker


def test_normalise_touches_only_ids_created_and_keepalive_timestamps() -> None:
    raw = (
        b'data: {"id":"chatcmpl-0123abcd","object":"chat.completion.chunk","created":1757000000,'
        b'"model":"codex-5","choices":[{"delta":{"content":"created 12 cmpl-x"}}]}\n\n'
        b": keepalive 1757000000123\n\n"
        b'{"id": "cmpl-9f", "created": 17}'
    )
    assert goldens.normalise(raw) == (
        b'data: {"id":"chatcmpl-<id>","object":"chat.completion.chunk","created":0,'
        b'"model":"codex-5","choices":[{"delta":{"content":"created 12 cmpl-x"}}]}\n\n'
        b": keepalive <ts>\n\n"
        b'{"id": "cmpl-<id>", "created": 0}'
    )


def _frames(body: bytes) -> list[bytes]:
    """SSE blocks of a body, each with its terminating blank line."""
    return [block + b"\n\n" for block in body.split(b"\n\n") if block]


def _swap_content_frames(body: bytes) -> bytes:
    frames = _frames(body)
    content = [i for i, frame in enumerate(frames) if b'"delta":{"content"' in frame]
    a, b = content[0], content[1]
    frames[a], frames[b] = frames[b], frames[a]
    return b"".join(frames)


def _drop_done(body: bytes) -> bytes:
    assert body.endswith(b"data: [DONE]\n\n")
    return body[: -len(b"data: [DONE]\n\n")]


def _change_content_byte(body: bytes) -> bytes:
    assert body.count(b'"Hello!"') == 1
    return body.replace(b'"Hello!"', b'"Hellp!"')


def _changed_lines(report: str, sign: str) -> list[str]:
    """Lines the diff marks with ``sign`` ('-' stored, '+' server), file headers excluded."""
    return [line[1:] for line in report.splitlines()
            if line.startswith(sign) and not line.startswith(sign * 3)]


@pytest.mark.parametrize(
    ("corrupt", "stored_has", "server_has", "contract_rule"),
    [
        (_swap_content_frames, '"content":"Hello!"', '"content":"Hello!"', None),
        (_drop_done, None, "data: [DONE]", "missing-done"),
        (_change_content_byte, '"content":"Hellp!"', '"content":"Hello!"', None),
    ],
    ids=["swap_frames", "drop_done", "change_byte"],
)
def test_comparison_catches_corruption(
    tmp_path: Path, corrupt: Callable[[bytes], bytes], stored_has: str | None, server_has: str,
    contract_rule: str | None,
) -> None:
    """A corrupted copy of a golden is reported with a diff; the real golden is not touched."""
    case = goldens.CASES_BY_NAME["chat_stream_include_usage"]
    original = case.file.read_bytes()
    digest = hashlib.sha256(original).hexdigest()
    header, body = goldens.split_golden(original)
    bad_body = corrupt(body)
    assert bad_body != body
    bad_copy = tmp_path / case.file.name
    bad_copy.write_bytes(original.replace(body, bad_body))

    # The corrupted copy, as the stored golden, against the genuine output: the real check path.
    rec = goldens.Recording(header["status"], header["headers"], body)
    report = goldens.compare(bad_copy, goldens.render(case, rec))
    assert report, "comparison missed the corruption"
    assert goldens.relative(bad_copy) in report and "nox -s goldens" in report
    if stored_has is not None:
        assert any(stored_has in line for line in _changed_lines(report, "-")), report
    assert any(server_has in line for line in _changed_lines(report, "+")), report
    # The genuine golden matches, so the report is about the corruption only.
    assert goldens.compare(case.file, goldens.render(case, rec)) == ""
    if contract_rule is not None:
        rules = {v.rule for v in contract.check_chat_stream(bad_body, include_usage=True)}
        assert contract_rule in rules
    assert hashlib.sha256(case.file.read_bytes()).hexdigest() == digest


def test_missing_golden_fails_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(goldens.UPDATE_ENV, raising=False)
    case = goldens.CASES_BY_NAME["chat_json_minimal"]
    header, body = goldens.split_golden(case.file.read_bytes())
    rec = goldens.Recording(header["status"], header["headers"], body)
    missing = tmp_path / "nowhere" / case.file.name
    report = goldens.check(case, rec, golden=missing)
    assert "is missing" in report and "nox -s goldens" in report
    assert not missing.exists()


def test_json_mismatch_shows_the_field(tmp_path: Path) -> None:
    case = goldens.CASES_BY_NAME["chat_json_minimal"]
    original = case.file.read_bytes()
    header, body = goldens.split_golden(original)
    doc = json.loads(body)
    assert doc["choices"][0]["finish_reason"] == "stop"
    bad_copy = tmp_path / case.file.name
    bad_copy.write_bytes(original.replace(b'"finish_reason":"stop"', b'"finish_reason":"length"'))
    rec = goldens.Recording(header["status"], header["headers"], body)
    report = goldens.compare(bad_copy, goldens.render(case, rec))
    assert '-      "finish_reason": "length"' in report, report
    assert '+      "finish_reason": "stop"' in report, report


# ---------------------------------------------------------------------------- Responses goldens


def test_normalise_responses_ids_and_created_at() -> None:
    hexes = "0123456789abcdef" * 3
    raw = (
        b'{"id":"resp_' + hexes.encode() + b'","created_at":1757000000,"output":['
        b'{"id":"rs_' + hexes.encode() + b'"},{"id":"msg_' + hexes.encode() + b'"},'
        b'{"id":"fc_' + hexes.encode() + b'","call_id":"call_1"}],'
        b'"text":"resp_short msg_x created_at 5","created_at_x":1}'
    )
    assert goldens.normalise(raw) == (
        b'{"id":"resp_<id>","created_at":0,"output":['
        b'{"id":"rs_<id>"},{"id":"msg_<id>"},{"id":"fc_<id>","call_id":"call_1"}],'
        b'"text":"resp_short msg_x created_at 5","created_at_x":1}'
    )


@pytest.mark.parametrize(
    ("json_case", "stream_case"),
    [("responses_json_minimal", "responses_stream_minimal"),
     ("responses_json_incomplete", "responses_stream_incomplete"),
     ("responses_json_reasoning", "responses_stream_reasoning"),
     ("app_tools_follow_up_responses_json", "app_tools_follow_up_responses_stream")],
)
def test_responses_stream_and_json_goldens_agree(json_case: str, stream_case: str) -> None:
    """Same child output, both renderings: the same response (normalised ids), usage and all."""
    _, json_body = goldens.split_golden(goldens.CASES_BY_NAME[json_case].file.read_bytes())
    _, sse_body = goldens.split_golden(goldens.CASES_BY_NAME[stream_case].file.read_bytes())
    transcript = contract.collect_responses_stream(sse_body)
    doc = json.loads(json_body)
    assert transcript.response == doc
    assert transcript.text == contract.response_output_text(doc)


def test_responses_golden_mismatch_is_readable(tmp_path: Path) -> None:
    case = goldens.CASES_BY_NAME["responses_stream_minimal"]
    original = case.file.read_bytes()
    header, body = goldens.split_golden(original)
    assert body.count(b'"delta":" streamed"') == 1
    bad_copy = tmp_path / case.file.name
    bad_copy.write_bytes(original.replace(b'"delta":" streamed"', b'"delta":" streamex"'))
    rec = goldens.Recording(header["status"], header["headers"], body)
    report = goldens.compare(bad_copy, goldens.render(case, rec))
    assert any('"delta":" streamex"' in line for line in _changed_lines(report, "-")), report
    assert any('"delta":" streamed"' in line for line in _changed_lines(report, "+")), report
    assert goldens.compare(case.file, goldens.render(case, rec)) == ""
    # The corrupted body also breaks the contract: the deltas no longer add up to the done text.
    bad_body = bad_copy.read_bytes().partition(goldens.SEPARATOR.encode() + b"\n")[2]
    assert "text-mismatch" in {v.rule for v in contract.check_responses_stream(bad_body)}


def test_responses_json_golden_mismatch_shows_the_field(tmp_path: Path) -> None:
    case = goldens.CASES_BY_NAME["responses_json_incomplete"]
    original = case.file.read_bytes()
    header, body = goldens.split_golden(original)
    bad_copy = tmp_path / case.file.name
    bad_copy.write_bytes(original.replace(b'"status":"incomplete"', b'"status":"completed"', 1))
    rec = goldens.Recording(header["status"], header["headers"], body)
    report = goldens.compare(bad_copy, goldens.render(case, rec))
    assert '-  "status": "completed"' in report, report
    assert '+  "status": "incomplete"' in report, report
