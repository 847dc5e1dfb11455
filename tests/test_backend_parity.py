"""Backend parity: what a client sees does not depend on the backend behind the proxy.

Every test here runs twice, once over the proto backend (a ``codex proto`` child per request,
``fixtures/fake_codex.py``) and once over the app-server backend (a long-lived ``codex
app-server`` worker, ``fixtures/fake_app_server.py``), with the same requests and the same
expectations: finish reasons, answer text, usage, error envelopes, retries, deadlines, client
disconnects, tool-block handling, admission, the shutdown finalize, the Responses API and the
legacy completions route. Every body goes through the wire-contract checker.

The two fakes share scenario names and answer texts; where the *mechanism* has to differ, so
does the name (:data:`TRUNCATION`: a proto child exits, an app-server worker crashes;
:data:`OTHER_ERROR`: each fake's server error). Assertions never depend on how fast the machine
is: turns end on the fake's own events, and the one deadline test runs under a frozen
``MockClock`` that the test moves only once the fake has gone silent for good.

App-server specifics (threads, routing, worker failures) are tested in
``test_appserver_backend.py``; this module holds only what must hold on both.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from quartproxy import contract
from quartproxy.observability import read_usage

from .conftest import AUTH, Proxy, StartProxy, chat_body, read_stream

pytestmark = pytest.mark.trio

BACKENDS = ("proto", "app-server")
NORMAL_TEXT = "Hello! This is a streamed answer from the fake upstream."
PARTIAL = "Hello! This is"  # the three deltas of stream_hang, no_complete, worker_crash, ...
UNICODE_TEXT = (
    "Héllo wörld 👋🏽 日本語のテキスト e\u0301te\u0301 \"quoted\" back\\slash\nsecond line"
    " line\u2028separator para\u2029graph tab\there 𝄞 done."
)
INCOMPLETE_TEXT = "This answer is going to be cut off because the output token limit was"
TOOL_TEXT = "Let me check the readme.\n\nThe command ran; see the output above."
USAGE = {"include_usage": True}

# Scenario names that differ between the fakes (same client-visible behaviour).
TRUNCATION = {"proto": "no_complete", "app-server": "worker_crash"}  # gone after 3 deltas
OTHER_ERROR = {"proto": "server_error", "app-server": "error"}  # upstream 5xx, retries spent

REQUEST_ID = re.compile(r", request id: \S+")

BLOCK_A = '<use_tool name="read">{"path":"a.txt"}</use_tool>'
BLOCK_B = '<use_tool name="list">{}</use_tool>'


# ---------------------------------------------------------------------------- harness


@dataclass
class Side:
    """One backend: starts proxies on it and knows when one is idle again."""

    name: str
    _start: StartProxy

    async def start(self, **overrides: Any) -> Proxy:
        if self.name == "proto":
            return await self._start(**overrides)
        overrides.setdefault("workers", 1)
        overrides.setdefault("worker_backoff_initial_ms", 50)
        proxy = await self._start(backend="app-server", **overrides)
        await proxy.wait_ready()
        return proxy

    def scenario(self, table: dict[str, str]) -> str:
        return table[self.name]

    async def settle(self, proxy: Proxy) -> None:
        """No turn runs, every slot is free, and (app-server) a worker accepts turns again,
        a replacement one if the last turn crashed its worker."""
        with trio.fail_after(30):
            await proxy.state.service.running.wait_value(0)
        assert proxy.state.admission.occupancy.turns == 0
        assert proxy.state.admission.occupancy.streams == 0
        if self.name == "app-server":
            backend = proxy.state.backend
            with trio.fail_after(30):
                # A crashed worker stays in its slot until the pool notices the exit (then it
                # counts a restart); only a worker that is not that one is worth waiting for.
                while any(w is not None and w.failure is not None for w in backend.slots):  # noqa: ASYNC110
                    await trio.sleep(0.01)
                await backend.ready_count.wait_value(lambda n: n >= 1)


@pytest.fixture(params=BACKENDS)
def side(request: pytest.FixtureRequest, start_proxy: StartProxy) -> Side:
    return Side(request.param, start_proxy)


def stream_body(prompt: str, **extra: Any) -> dict[str, Any]:
    return chat_body(prompt, stream=True, stream_options=USAGE, **extra)


def checked_stream(raw: bytes, *, include_usage: bool = True, legacy: bool = False,
                   model: str | None = "codex-5") -> tuple[str, str | None, dict[str, Any] | None]:
    check = contract.check_completion_stream if legacy else contract.check_chat_stream
    contract.assert_valid(check(raw, include_usage=include_usage, model=model))
    return contract.collect_stream_content(raw)


def checked_json(resp: httpx.Response, *, legacy: bool = False) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    check = contract.check_completion_json if legacy else contract.check_chat_json
    contract.assert_valid(check(resp.content, model="codex-5"))
    doc: dict[str, Any] = resp.json()
    return doc


def error_frames(raw: bytes) -> list[dict[str, Any]]:
    docs = [f.json for f in contract.parse_sse(raw) if isinstance(f.json, dict)]
    return [doc["error"] for doc in docs if "error" in doc]


def usage_of(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


async def usage_records(proxy: Proxy, count: int) -> list[dict[str, Any]]:
    with trio.fail_after(30):
        await proxy.state.usage_log.written.wait_value(lambda n: n >= count)
    return read_usage(proxy.settings.token_log_path)


@dataclass
class Held:
    """A stream held open: its response, what arrived so far, and the rest to read."""

    resp: httpx.Response
    chunks: list[bytes]
    rest: AsyncIterator[bytes]

    async def read_to_end(self) -> bytes:
        self.chunks.extend([chunk async for chunk in self.rest])
        return b"".join(self.chunks)


@asynccontextmanager
async def open_stream(client: httpx.AsyncClient, path: str, body: dict[str, Any],
                      until: bytes) -> AsyncIterator[Held]:
    """A stream held open once ``until`` has arrived (or the response is not a 200).

    The chunk iterator stays referenced until the block ends: a dropped generator would close
    the connection, a disconnect the test did not mean.
    """
    async with client.stream("POST", path, json=body, headers=AUTH) as resp:
        chunks: list[bytes] = []
        it = resp.aiter_raw()
        try:
            if resp.status_code == 200:
                while until not in b"".join(chunks):
                    chunks.append(await it.__anext__())
            yield Held(resp, chunks, it)
        finally:
            await it.aclose()


# ---------------------------------------------------------------------------- finish reasons


@dataclass(frozen=True)
class Row:
    """One line of the finish_reason table, reachable through a fake scenario."""

    name: str
    prompt: str | dict[str, str]  # a per-backend table when the scenario names differ
    finish: str
    text: str
    usage: dict[str, Any] | None = None  # codex's own counts; None: estimated
    extra: tuple[tuple[str, Any], ...] = ()


ROWS = (
    Row("normal", "SCENARIO=normal", "stop", NORMAL_TEXT, usage_of(1200, 14)),
    Row("multi_chunk", "SCENARIO=multi_chunk DELTAS=8", "stop",
        "word1 word2 word3 word4 word5 word6 word7 word8", usage_of(1200, 12)),
    Row("message_only", "SCENARIO=message_only", "stop",
        "Hello! This message arrived without any deltas.", usage_of(1200, 4)),
    Row("unicode", "SCENARIO=unicode", "stop", UNICODE_TEXT, usage_of(1200, 16)),
    Row("reasoning", "SCENARIO=reasoning", "stop", "Hello there! Reasoned answer.",
        usage_of(1200, 72, cached=1024, reasoning=64)),
    Row("codex_tool", "SCENARIO=tool", "stop", TOOL_TEXT, usage_of(1200, 16)),
    Row("noise", "SCENARIO=noise", "stop", NORMAL_TEXT, usage_of(1200, 14)),
    Row("stderr_flood", "SCENARIO=stderr_flood STDERR_KB=256", "stop", NORMAL_TEXT,
        usage_of(1200, 14)),
    Row("retry_replay", "SCENARIO=retry_replay", "stop", NORMAL_TEXT, usage_of(1200, 14)),
    Row("max_tokens", "SCENARIO=long", "length", "0000abcde 0001abcde ",
        extra=(("max_tokens", 5),)),
    Row("truncation", {k: f"SCENARIO={v}" for k, v in TRUNCATION.items()}, "length", PARTIAL),
    Row("error_after_text", "SCENARIO=error_after_text", "length", PARTIAL),
    Row("incomplete", "SCENARIO=incomplete", "length", INCOMPLETE_TEXT),
)


async def test_finish_reason_table(side: Side) -> None:
    """Each row as a stream (include_usage) and as JSON: same finish_reason, text and usage,
    the same on both backends."""
    proxy = await side.start()
    async with proxy.client() as client:
        for row in ROWS:
            prompt = row.prompt if isinstance(row.prompt, str) else side.scenario(row.prompt)
            extra = dict(row.extra)
            resp, raw = await read_stream(client, "/v1/chat/completions",
                                          stream_body(prompt, **extra))
            assert resp.status_code == 200, row.name
            text, finish, usage = checked_stream(raw)
            await side.settle(proxy)
            single = await client.post("/v1/chat/completions", json=chat_body(prompt, **extra),
                                       headers=AUTH)
            doc = checked_json(single)
            await side.settle(proxy)
            choice = doc["choices"][0]
            assert (text, finish) == (row.text, row.finish), row.name
            assert (choice["message"]["content"], choice["finish_reason"]) == (
                row.text, row.finish), row.name
            assert usage == doc["usage"], row.name
            if row.usage is not None:
                assert usage == row.usage, row.name
            else:  # no counts from codex: the estimate from the prompt and the text
                assert usage is not None and usage["completion_tokens"] == -(-len(row.text) // 4)


async def test_empty_answer_and_message_wins(side: Side) -> None:
    """No text at all is still a clean stop; a final message that contradicts its deltas: the
    stream keeps what it sent, the JSON answer is the message."""
    proxy = await side.start()
    async with proxy.client() as client:
        _, empty_raw = await read_stream(client, "/v1/chat/completions",
                                         stream_body("SCENARIO=empty"))
        empty = await client.post("/v1/chat/completions", json=chat_body("SCENARIO=empty"),
                                  headers=AUTH)
        _, mismatch_raw = await read_stream(client, "/v1/chat/completions",
                                            stream_body("SCENARIO=message_mismatch"))
        mismatch = await client.post("/v1/chat/completions",
                                     json=chat_body("SCENARIO=message_mismatch"), headers=AUTH)
    assert checked_stream(empty_raw) == ("", "stop", usage_of(1200, 4))
    doc = checked_json(empty)
    assert doc["choices"][0]["finish_reason"] == "stop" and not doc["choices"][0]["message"][
        "content"]
    streamed, finish, _ = checked_stream(mismatch_raw)
    assert (streamed, finish) == ("Hello! This is partial.", "stop")
    assert checked_json(mismatch)["choices"][0]["message"]["content"] == (
        "Hello! This is the complete final message, and it differs from the deltas.")


# ---------------------------------------------------------------------------- codex errors


ERRORS = (
    # name, scenario (or per-backend), status, type, code, param
    ("usage_limit", "usage_limit", 429, "insufficient_quota", "insufficient_quota", None),
    ("rate_limit", "rate_limit", 429, "rate_limit_error", "rate_limit_exceeded", None),
    ("context_window", "context_window", 400, "invalid_request_error",
     "context_length_exceeded", "messages"),
    ("other", OTHER_ERROR, 502, "server_error", "backend_error", None),
)


async def test_codex_errors_without_text(side: Side) -> None:
    """A codex failure before any answer text: the status its kind calls for, as a JSON
    envelope and as the stream's one error frame (no finish, no usage chunk)."""
    proxy = await side.start()
    async with proxy.client() as client:
        for name, scenario, status, kind, code, param in ERRORS:
            prompt = "SCENARIO=" + (scenario if isinstance(scenario, str)
                                    else side.scenario(scenario))
            resp = await client.post("/v1/chat/completions", json=chat_body(prompt),
                                     headers=AUTH)
            _, raw = await read_stream(client, "/v1/chat/completions", stream_body(prompt))
            await side.settle(proxy)
            assert resp.status_code == status, (name, resp.text)
            contract.assert_valid(contract.check_error_json(resp.content))
            error = resp.json()["error"]
            assert (error["type"], error["code"], error["param"]) == (kind, code, param), name
            assert error["message"] and "\n" not in error["message"], name
            if code == "rate_limit_exceeded":
                assert resp.headers["retry-after"] == "1"
            text, finish, usage = checked_stream(raw)
            assert (text, finish, usage) == ("", None, None), name
            (frame,) = error_frames(raw)
            # The same failure for the same reason; codex's request id differs per request.
            assert {**frame, "message": REQUEST_ID.sub("", frame["message"])} == {
                **error, "message": REQUEST_ID.sub("", error["message"])}, name
    records = await usage_records(proxy, 2 * len(ERRORS))
    assert [r["outcome"] for r in records] == ["error"] * 2 * len(ERRORS)
    assert sorted(r["status"] for r in records) == sorted(2 * [row[2] for row in ERRORS])
    assert {r["finish_reason"] for r in records} == {None}


# ---------------------------------------------------------------------------- retries


async def test_retries(side: Side) -> None:
    """A retry that replays the answer is not sent twice; one that contradicts what a stream
    already sent ends it with ``upstream_retry_diverged``; JSON answers with the new attempt."""
    proxy = await side.start()
    async with proxy.client() as client:
        _, replay = await read_stream(client, "/v1/chat/completions",
                                      stream_body("SCENARIO=retry_replay"))
        _, diverge = await read_stream(client, "/v1/chat/completions",
                                       stream_body("SCENARIO=retry_diverge"))
        single = await client.post("/v1/chat/completions",
                                   json=chat_body("SCENARIO=retry_diverge"), headers=AUTH)
    assert checked_stream(replay)[:2] == (NORMAL_TEXT, "stop")
    assert replay.count(b'"content":"Hello!"') == 1
    text, finish, usage = checked_stream(diverge)
    assert (text, finish, usage) == ("This stream will be", None, None)
    (error,) = error_frames(diverge)
    assert (error["code"], error["type"]) == ("upstream_retry_diverged", "server_error")
    doc = checked_json(single)
    assert doc["choices"][0]["message"]["content"] == NORMAL_TEXT
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"] == usage_of(1200, 14)


# ---------------------------------------------------------------------------- usage placement


async def test_usage_chunk_placement(side: Side) -> None:
    """include_usage: ``usage: null`` on every chunk, then one chunk with ``choices: []`` and
    the usage right after the finish chunk, then [DONE]. Without it: no usage key at all."""
    proxy = await side.start()
    async with proxy.client() as client:
        _, with_usage = await read_stream(client, "/v1/chat/completions",
                                          stream_body("SCENARIO=normal"))
        _, without = await read_stream(client, "/v1/chat/completions",
                                       chat_body("SCENARIO=normal", stream=True))
        _, legacy = await read_stream(client, "/v1/completions", {
            "model": "codex-5", "prompt": "hi",
            "stream": True, "stream_options": USAGE})
    checked_stream(with_usage)
    checked_stream(without, include_usage=False)
    checked_stream(legacy, legacy=True)
    for raw in (with_usage, legacy):
        frames = contract.parse_sse(raw)
        assert frames[-1].is_done
        docs = [f.json for f in frames[:-1]]
        assert all(isinstance(d, dict) and "usage" in d for d in docs)
        *chunks, last = docs
        assert last["choices"] == [] and last["usage"]["prompt_tokens"] == 1200
        assert last["usage"]["completion_tokens"] == 14
        assert all(d["usage"] is None for d in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert all(d["choices"][0]["finish_reason"] is None for d in chunks[:-1])
    assert b'"usage"' not in without


# ---------------------------------------------------------------------------- deadlines


async def _real_time_guard(seconds: float, scope: trio.CancelScope, fired: list[bool]) -> None:
    """A watchdog in real time (the test's trio clock is frozen, so fail_after cannot fire)."""
    await trio.to_thread.run_sync(time.sleep, seconds, abandon_on_cancel=True)
    fired.append(True)
    scope.cancel()


async def test_deadline_only_silence_can_end(
    side: Side, mock_clock: trio.testing.MockClock
) -> None:
    """stream_hang: three deltas, then silence forever. Virtual time stands still until the
    test has seen the three deltas; only then does it jump past PROXY_TIMEOUT_MS, so the
    deadline cannot fire early on a slow machine, and nothing but the deadline can end the
    turn: finish length, usage, [DONE] — and the same through /v1/responses (incomplete)."""
    proxy = await side.start(timeout_ms=5000)
    fired: list[bool] = []
    results: dict[str, bytes] = {}
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_real_time_guard, 60.0, scope, fired)
            async with proxy.client(timeout=None) as client:
                for path, body, marker in (
                    ("/v1/chat/completions", stream_body("SCENARIO=stream_hang"),
                     b'"content":" is"'),
                    ("/v1/responses", {"model": "codex-5", "input": "SCENARIO=stream_hang",
                                       "stream": True}, b'"delta":" is"'),
                ):
                    async with open_stream(client, path, body, marker) as held:
                        assert held.resp.status_code == 200
                        mock_clock.jump(5.0)
                        results[path] = await held.read_to_end()
                    await proxy.state.service.running.wait_value(0)
            nursery.cancel_scope.cancel()
    assert not fired, f"stuck after 60 s (real time): {results}"
    text, finish, usage = checked_stream(results["/v1/chat/completions"])
    assert (text, finish) == (PARTIAL, "length") and usage is not None
    raw = results["/v1/responses"]
    contract.assert_valid(contract.check_responses_stream(raw, model="codex-5"))
    transcript = contract.collect_responses_stream(raw)
    assert (transcript.text, transcript.terminal) == (PARTIAL, "response.incomplete")
    assert transcript.usage is not None


# ---------------------------------------------------------------------------- disconnect, shutdown


async def test_disconnect_mid_stream(side: Side) -> None:
    """The client leaves after the first text: the turn ends, its slot is freed, and one usage
    record says client_disconnect."""
    proxy = await side.start()
    async with proxy.client() as client, open_stream(
        client, "/v1/chat/completions", stream_body("SCENARIO=stream_hang"), b'"content":" is"'
    ) as held:
        assert held.resp.status_code == 200
        assert proxy.state.service.running.value == 1
    await side.settle(proxy)
    (record,) = await usage_records(proxy, 1)
    assert record["outcome"] == "client_disconnect" and record["stream"] is True
    assert proxy.state.service.running.value == 0


async def test_shutdown_finalize_mid_stream(side: Side) -> None:
    """The drain deadline passes mid-answer (lifecycle.finalize()): finish length, the usage
    chunk and [DONE]; a waiting JSON request without text gets 503 shutting_down."""
    proxy = await side.start()
    async with proxy.client() as client, open_stream(
        client, "/v1/chat/completions", stream_body("SCENARIO=stream_hang"), b'"content":" is"'
    ) as held:
        answers: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:

            async def silent() -> None:
                answers.append(await client.post("/v1/chat/completions", headers=AUTH,
                                                 json=chat_body("SCENARIO=hang")))

            nursery.start_soon(silent)
            await proxy.state.service.running.wait_value(2)
            proxy.lifecycle.finalize()
            raw = await held.read_to_end()
    text, finish, usage = checked_stream(raw)
    assert (text, finish) == (PARTIAL, "length") and usage is not None
    assert raw.endswith(b"data: [DONE]\n\n")
    (answer,) = answers
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down"
    await side.settle(proxy)


# ---------------------------------------------------------------------------- tool blocks


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"suppress_tail_after_tools": True}, f"Let me check. {BLOCK_A} then {BLOCK_B}"),
        ({"stop_after_tools": True, "stop_after_tools_mode": "first"},
         f"Let me check. {BLOCK_A}"),
    ],
    ids=["suppress_tail", "stop_after_first"],
)
async def test_tool_blocks(side: Side, settings: dict[str, Any], expected: str) -> None:
    """``<use_tool>`` blocks in the answer: the tail after the last block is held back, or the
    answer is cut after the first block (finish stop) while the fake is still silent."""
    proxy = await side.start(**settings)
    # With stop-after-tools, the fake pauses for a minute after the tail: only the cut can
    # finish these requests (the hang guard is generous, it is not a speed assertion).
    pause = 60_000 if settings.get("stop_after_tools") else 0
    prompt = f"SCENARIO=tool_blocks PAUSE_MS={pause}"
    async with proxy.client() as client:
        with trio.fail_after(50):
            single = await client.post("/v1/chat/completions", json=chat_body(prompt),
                                       headers=AUTH)
            _, raw = await read_stream(client, "/v1/chat/completions", stream_body(prompt))
    doc = checked_json(single)
    assert doc["choices"][0]["message"]["content"] == expected
    assert doc["choices"][0]["finish_reason"] == "stop"
    text, finish, usage = checked_stream(raw)
    assert (text, finish) == (expected, "stop") and usage is not None
    await side.settle(proxy)


# ---------------------------------------------------------------------------- admission


async def test_stream_limit_and_conc_headers(side: Side) -> None:
    """One stream allowed: a second concurrent one is 429 (X-Conc headers say why); once the
    first has ended, the next one is admitted."""
    proxy = await side.start(sse_max_concurrency=1, test_endpoints=True)
    async with proxy.client() as client:
        async with open_stream(client, "/v1/chat/completions",
                               stream_body("SCENARIO=stream_hang"), b"data:") as held:
            first = held.resp
            assert first.status_code == 200
            assert (first.headers["x-conc-before"], first.headers["x-conc-after"],
                    first.headers["x-conc-limit"]) == ("0", "1", "1")
            second = await client.post("/v1/chat/completions", json=stream_body("hi"),
                                       headers=AUTH)
            assert second.status_code == 429
            contract.assert_valid(contract.check_error_json(second.content))
            assert second.json()["error"]["code"] == "concurrency_exceeded"
            assert (second.headers["x-conc-before"], second.headers["x-conc-after"],
                    second.headers["x-conc-limit"]) == ("1", "1", "1")
            # A JSON request is not a stream: it only needs a turn slot.
            assert (await client.post("/v1/chat/completions", json=chat_body("hi"),
                                      headers=AUTH)).status_code == 200
        await side.settle(proxy)
        third, raw = await read_stream(client, "/v1/chat/completions", stream_body("hi"))
    assert third.status_code == 200 and third.headers["x-conc-before"] == "0"
    assert checked_stream(raw)[:2] == (NORMAL_TEXT, "stop")


# ---------------------------------------------------------------------------- Responses API


def checked_responses_json(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    contract.assert_valid(contract.check_responses_json(resp.content, model="codex-5"))
    doc: dict[str, Any] = resp.json()
    return doc


def checked_responses_stream(raw: bytes) -> contract.ResponsesTranscript:
    contract.assert_valid(contract.check_responses_stream(raw, model="codex-5"))
    return contract.collect_responses_stream(raw)


async def test_responses_api(side: Side) -> None:
    """/v1/responses: completed (JSON and stream agree), incomplete at max_output_tokens,
    response.failed when a retry diverges, a codex error as a failed response."""
    proxy = await side.start()

    def body(prompt: str, **extra: Any) -> dict[str, Any]:
        return {"model": "codex-5", "input": prompt, **extra}

    async with proxy.client() as client:
        single = await client.post("/v1/responses", json=body("hi"), headers=AUTH)
        _, raw = await read_stream(client, "/v1/responses", body("hi", stream=True))
        cut = await client.post("/v1/responses", json=body("SCENARIO=long", max_output_tokens=10),
                                headers=AUTH)
        _, cut_raw = await read_stream(client, "/v1/responses",
                                       body("SCENARIO=long", max_output_tokens=10, stream=True))
        _, diverged = await read_stream(client, "/v1/responses",
                                        body("SCENARIO=retry_diverge", stream=True))
        _, failed = await read_stream(client, "/v1/responses",
                                      body("SCENARIO=usage_limit", stream=True))
        quota = await client.post("/v1/responses", json=body("SCENARIO=usage_limit"),
                                  headers=AUTH)
    await side.settle(proxy)

    doc = checked_responses_json(single)
    transcript = checked_responses_stream(raw)
    assert doc["status"] == "completed" and contract.response_output_text(doc) == NORMAL_TEXT
    assert (transcript.text, transcript.terminal) == (NORMAL_TEXT, "response.completed")
    assert transcript.usage == doc["usage"]
    assert (doc["usage"]["input_tokens"], doc["usage"]["output_tokens"]) == (1200, 14)

    cut_doc = checked_responses_json(cut)
    cut_transcript = checked_responses_stream(cut_raw)
    assert cut_doc["status"] == "incomplete"
    assert cut_doc["incomplete_details"] == {"reason": "max_output_tokens"}
    assert contract.response_output_text(cut_doc) == cut_transcript.text
    assert len(cut_transcript.text) == 40 and cut_transcript.terminal == "response.incomplete"

    diverge = checked_responses_stream(diverged)
    assert (diverge.text, diverge.terminal) == ("This stream will be", "response.failed")
    assert diverge.response is not None
    assert diverge.response["error"]["code"] == "upstream_retry_diverged"

    fail = checked_responses_stream(failed)
    assert fail.terminal == "response.failed" and fail.response is not None
    assert fail.response["error"]["code"] == "insufficient_quota"
    assert fail.response["output"] == []
    assert quota.status_code == 429 and quota.json()["error"]["code"] == "insufficient_quota"
    assert quota.json()["error"]["message"] == fail.response["error"]["message"]


# ---------------------------------------------------------------------------- legacy completions


async def test_legacy_completions(side: Side) -> None:
    """/v1/completions: text, finish and usage agree between JSON and stream; a truncated
    turn is length; a codex error is the same envelope as on chat, naming ``prompt``."""
    proxy = await side.start()

    def legacy(prompt: str | list[str], **extra: Any) -> dict[str, Any]:
        return {"model": "codex-5", "prompt": prompt, **extra}

    truncation = "SCENARIO=" + side.scenario(TRUNCATION)
    async with proxy.client() as client:
        single = await client.post("/v1/completions", json=legacy(["Say", "hello"]),
                                   headers=AUTH)
        _, raw = await read_stream(client, "/v1/completions",
                                   legacy("hi", stream=True, stream_options=USAGE))
        _, cut = await read_stream(client, "/v1/completions",
                                   legacy(truncation, stream=True, stream_options=USAGE))
        await side.settle(proxy)
        failed = await client.post("/v1/completions", json=legacy("SCENARIO=context_window"),
                                   headers=AUTH)
        overflow = await client.post("/v1/responses", headers=AUTH, json={
            "model": "codex-5", "input": "SCENARIO=context_window"})
    doc = checked_json(single, legacy=True)
    assert doc["choices"][0]["text"] == NORMAL_TEXT
    assert doc["choices"][0]["finish_reason"] == "stop"
    text, finish, usage = checked_stream(raw, legacy=True)
    assert (text, finish, usage) == (NORMAL_TEXT, "stop", doc["usage"])
    assert checked_stream(cut, legacy=True)[:2] == (PARTIAL, "length")
    assert failed.status_code == 400
    error = failed.json()["error"]
    # A codex context-window overflow names the field that carried the prompt on each route.
    assert (error["code"], error["param"]) == ("context_length_exceeded", "prompt"), error
    assert overflow.status_code == 400
    assert (overflow.json()["error"]["code"], overflow.json()["error"]["param"]) == (
        "context_length_exceeded", "input")
    await side.settle(proxy)
