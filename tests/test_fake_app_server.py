"""fixtures/fake_app_server.py against the real ``codex app-server`` captures.

The fake is driven as a real child process over pipes. The fidelity tests replay a capture's
client messages (thread/turn/request ids mapped to the fake's, the upstream scenario marker mapped
to the fake's scenario) and send each one only once the fake has produced everything the real
binary had produced before it. Then the two server→client sequences must be the same (runs of
streaming deltas collapsed), with the same key structure message by message.

Every wait is bounded by ``trio.fail_after``; nothing sleeps for a fixed time except the one
check that something does *not* happen (a frozen worker).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FAKE = FIXTURES / "fake_app_server.py"
FAKE_CODEX = FIXTURES / "fake_codex.py"
CAPTURES = FIXTURES / "captures" / "codex-0.169.0"
LIMIT = 10.0  # seconds for any single wait; generous for a loaded 2-core machine
STREAMY = {
    "item/agentMessage/delta",
    "item/reasoning/summaryTextDelta",
    "item/reasoning/textDelta",
    "item/commandExecution/outputDelta",
    "codex/event/agent_message_delta",
}
OPT_OUT = ["account/rateLimits/updated", "thread/status/changed", "thread/started", "warning",
           "configWarning", "remoteControl/status/changed", "item/started"]
WEATHER = {"type": "function", "name": "get_weather",
           "description": "Get the current weather for a city.",
           "inputSchema": {"type": "object", "properties": {
               "city": {"type": "string", "description": "City name"},
               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city"], "additionalProperties": False}}
TIME = {"type": "function", "name": "get_time", "description": "Current time in a timezone.",
        "inputSchema": {"type": "object", "properties": {"tz": {"type": "string"}},
                        "required": ["tz"]}}


# -- driving a child ---------------------------------------------------------------------------

class Worker:
    """A fake child: everything it printed (parsed), its stderr, and helpers to talk to it."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.msgs: list[dict[str, Any]] = []
        self.junk: list[bytes] = []
        self.stderr = bytearray()
        self.eof = False
        self._changed = trio.Event()
        self._ids = itertools.count(1)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := await self.proc.stdout.receive_some(65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = None
                if isinstance(msg, dict):
                    self.msgs.append(msg)
                else:
                    self.junk.append(line)
            self._wake()
        if buf:
            self.junk.append(buf)
        self.eof = True
        self._wake()

    async def pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.receive_some(65536):
            self.stderr += chunk
            self._wake()

    async def wait_for(self, pred: Callable[[], Any], what: str = "", limit: float = LIMIT) -> Any:
        with trio.fail_after(limit):
            while True:
                changed = self._changed
                result = pred()
                if result:
                    return result
                assert not self.eof, f"stdout closed while waiting for {what}"
                await changed.wait()

    async def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(data)

    async def send(self, obj: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(obj).encode() + b"\n")

    def response(self, req_id: Any) -> dict[str, Any] | None:
        for msg in self.msgs:
            if msg.get("id") == req_id and "method" not in msg:
                return msg
        return None

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and return its whole response (``result`` or ``error``)."""
        req_id = next(self._ids)
        await self.send({"id": req_id, "method": method, "params": params or {}})
        found: dict[str, Any] = await self.wait_for(lambda: self.response(req_id), method)
        return found

    async def result(self, method: str, params: dict[str, Any] | None = None) -> Any:
        resp = await self.call(method, params)
        assert "result" in resp, resp
        return resp["result"]

    async def handshake(self, **capabilities: Any) -> dict[str, Any]:
        init = {"clientInfo": {"name": "quartproxy-test", "title": None, "version": "9.9.9"}}
        if capabilities:
            init["capabilities"] = capabilities
        result: dict[str, Any] = await self.result("initialize", init)
        await self.send({"method": "initialized"})
        return result

    async def thread(self, **params: Any) -> str:
        result = await self.result("thread/start", {"cwd": str(ROOT), **params})
        return str(result["thread"]["id"])

    async def turn(self, thread_id: str, text: str | None) -> str:
        items = [] if text is None else [{"type": "text", "text": text}]
        result = await self.result("turn/start", {"threadId": thread_id, "input": items})
        return str(result["turn"]["id"])

    def notes(self, method: str, thread_id: str | None = None) -> list[dict[str, Any]]:
        return [m["params"] for m in self.msgs if m.get("method") == method and "id" not in m
                and (thread_id is None or m["params"].get("threadId") == thread_id)]

    def requests(self, method: str) -> list[dict[str, Any]]:
        return [m for m in self.msgs if m.get("method") == method and "id" in m]

    async def completed(self, thread_id: str, n: int = 1) -> dict[str, Any]:
        """The n-th turn/completed of the thread (waits for it)."""
        done = await self.wait_for(
            lambda: len(self.notes("turn/completed", thread_id)) >= n and
            self.notes("turn/completed", thread_id), "turn/completed")
        return dict(done[n - 1]["turn"])

    def text(self, thread_id: str) -> str:
        return "".join(p["delta"] for p in self.notes("item/agentMessage/delta", thread_id))

    async def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.aclose()

    async def exit_code(self) -> int:
        with trio.fail_after(LIMIT):
            return await self.proc.wait()

    async def wait_for_eof(self) -> None:
        with trio.fail_after(LIMIT):
            while not self.eof:
                await self._changed.wait()


Spawn = Callable[..., Awaitable[Worker]]


@pytest.fixture(scope="session")
def fast_app_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake with this interpreter in its shebang (``/usr/bin/env`` shims cost ~0.1 s)."""
    path = tmp_path_factory.mktemp("bin") / "codex"
    path.write_text(f"#!{sys.executable}\n" + FAKE.read_text().split("\n", 1)[1])
    path.chmod(0o755)
    return path


@pytest.fixture
async def spawn(nursery: trio.Nursery, fast_app_server: Path) -> AsyncIterator[Spawn]:
    workers: list[Worker] = []

    async def start(*args: str, env: dict[str, str] | None = None,
                    program: Path | None = None) -> Worker:
        child_env = {k: v for k, v in os.environ.items()
                     if not k.startswith(("FAKE_CODEX_", "FAKE_APP_"))}
        child_env.update(env or {})
        argv = [str(program or fast_app_server), *(args or ("app-server",))]
        proc = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_env)
        worker = Worker(proc)
        nursery.start_soon(worker.pump_stdout)
        nursery.start_soon(worker.pump_stderr)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.proc.returncode is None:
            worker.proc.kill()
        with trio.fail_after(LIMIT):
            await worker.proc.wait()


# -- comparing with a capture ------------------------------------------------------------------

def key(msg: dict[str, Any]) -> str:
    if "method" in msg:
        return ("request:" if "id" in msg else "") + str(msg["method"])
    return f"response:{msg.get('id')}"


def collapse(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of the same streaming notification count once (their length is the upstream's)."""
    out: list[dict[str, Any]] = []
    for msg in msgs:
        if out and key(msg) in STREAMY and key(out[-1]) == key(msg):
            continue
        out.append(msg)
    return out


def contains(have: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    """Has the fake produced (at least) everything in ``want``? Delta runs count as one."""
    got = Counter(key(m) for m in collapse(have))
    return all(got[k] >= n for k, n in Counter(key(m) for m in collapse(want)).items())


def shape(obj: Any) -> Any:
    """The key structure: dict keys recursively, a list as the shape of its first element.
    Tool ``arguments`` are data (their keys come from the tool's schema), not protocol."""
    if isinstance(obj, dict):
        return {k: None if k == "arguments" else shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(obj[0])] if obj else []
    return None


def shape_diff(real: Any, fake: Any, path: str = "") -> list[str]:
    """Paths whose keys differ between two shapes (``-`` missing in the fake, ``+`` extra)."""
    if isinstance(real, dict) and isinstance(fake, dict):
        out = [f"-{path}.{k}" for k in real if k not in fake]
        out += [f"+{path}.{k}" for k in fake if k not in real]
        for k in real.keys() & fake.keys():
            out += shape_diff(real[k], fake[k], f"{path}.{k}")
        return out
    if isinstance(real, list) and isinstance(fake, list):
        return shape_diff(real[0], fake[0], f"{path}[0]") if real and fake else []
    return [] if real == fake else [f"~{path}"]


def meaning(msg: dict[str, Any]) -> Any:
    """The values a client acts on, per message kind (ids and texts left out)."""
    params = msg.get("params") or {}
    method = msg.get("method")
    item = params.get("item") if isinstance(params.get("item"), dict) else {}
    if "error" in msg and "method" not in msg:
        return msg["error"]["code"], re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>",
                                            msg["error"]["message"])
    if method == "turn/completed":
        turn = params["turn"]
        return turn["status"], bool(turn["items"]), turn["itemsView"], turn["error"] is None
    if method == "error":
        return params["willRetry"], params["error"]["codexErrorInfo"]
    if method == "thread/status/changed":
        return params["status"]
    if method in ("item/started", "item/completed"):
        return item.get("type"), item.get("status")
    if method == "rawResponseItem/completed":
        return item.get("type"), item.get("role"), params["turnId"] == "auto-compact-0"
    if method == "thread/tokenUsage/updated":
        usage = params["tokenUsage"]
        return tuple(usage[part][field] > 0 for part in ("total", "last")
                     for field in ("inputTokens", "outputTokens"))
    return None


UPSTREAM = {  # the capture's upstream scenario → the fake's markers
    "normal": "SCENARIO=normal",
    "reasoning": "SCENARIO=reasoning",
    "drop_once": "SCENARIO=retry_diverge",
    "err429_usage": "SCENARIO=usage_limit",
    "err400ctx": "SCENARIO=context_window",
    "err429": "SCENARIO=rate_limit",
    "incomplete": "SCENARIO=incomplete",
    "slow": "SCENARIO=slow DELTAS=400 DELAY_MS=10",
    "tool_exec_write": "SCENARIO=approval",
    "echo_roles": "SCENARIO=normal",
    "dyn_call": "SCENARIO=tool_call",
    "dyn_par2": "SCENARIO=tool_calls_parallel",
    "dyn_text_call": "SCENARIO=text_then_call TOOL_REQ=late",
    "dyn_par3_gap": "SCENARIO=tool_call_gap CALLS=3 DELAY_MS=20",
    "err500": "SCENARIO=error",
    "drop": "SCENARIO=drop",
}


def remark(text: str) -> str:
    found = re.findall(r"SCENARIO=(\w+)", text)
    return f"{text} {UPSTREAM[found[-1]]}" if found else text


def adapt(obj: Any, ids: dict[str, str]) -> Any:
    """A client message of the capture, with the fake's ids and the fake's scenario markers."""
    if isinstance(obj, dict):
        out = {k: adapt(v, ids) for k, v in obj.items()}
        if out.get("type") in ("text", "input_text") and isinstance(out.get("text"), str):
            out["text"] = remark(out["text"])
        return out
    if isinstance(obj, list):
        return [adapt(v, ids) for v in obj]
    if isinstance(obj, str):
        return ids.get(obj, obj)
    return obj


def learn_ids(ids: dict[str, str], real: list[dict[str, Any]], fake: list[dict[str, Any]],
              requests: dict[Any, Any]) -> None:
    """Map the capture's thread, turn and server-request ids onto the fake's."""
    fake_by_key = {key(m): m for m in fake if "method" not in m}
    for msg in real:
        if "method" in msg or not isinstance(msg.get("result"), dict):
            continue
        mine = fake_by_key.get(key(msg))
        if mine is None or not isinstance(mine.get("result"), dict):
            continue
        for part in ("thread", "turn"):
            if isinstance(msg["result"].get(part), dict):
                ids[msg["result"][part]["id"]] = mine["result"][part]["id"]
    real_reqs = [m for m in real if "method" in m and "id" in m]
    fake_reqs = [m for m in fake if "method" in m and "id" in m]
    for a, b in zip(real_reqs, fake_reqs, strict=False):
        requests[a["id"]] = b["id"]


def capture(name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = CAPTURES / f"app-server.{name}.transcript.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta = json.loads((CAPTURES / f"app-server.{name}.meta.json").read_text())
    return records, meta


async def replay(spawn: Spawn, name: str,
                 drop: Callable[[dict[str, Any]], bool] = lambda m: False
                 ) -> tuple[list[dict[str, Any]], Worker, int]:
    """Drive the fake with the capture's client messages; return (real msgs, worker, exit)."""
    records, meta = capture(name)
    worker = await spawn(*meta["argv"][1:])
    real: list[dict[str, Any]] = []
    ids: dict[str, str] = {}
    requests: dict[Any, Any] = {}
    closed = False

    def mine() -> list[dict[str, Any]]:
        return [m for m in worker.msgs if not drop(m)]

    async def catch_up() -> None:
        want = [m for m in real if not drop(m)]
        try:
            await worker.wait_for(lambda: contains(mine(), want), f"{name}: {key(want[-1])}")
        except trio.TooSlowError:
            got = Counter(key(m) for m in collapse(mine()))
            need = Counter(key(m) for m in collapse(want))
            raise AssertionError(f"{name}: the fake never sent {dict(need - got)}; it sent"
                                 f" {[key(m) for m in collapse(mine())]}") from None

    for rec in records:
        msg = rec["msg"]
        if rec["dir"] == "server->client":
            real.append(msg)
            continue
        if rec["dir"] == "harness":
            if msg in ("stdin closed", "action: stdin_close"):
                await catch_up()
                await worker.close_stdin()
                closed = True
            elif msg == "action: sigterm":
                await catch_up()
                worker.proc.send_signal(signal.SIGTERM)
                closed = True
            continue
        if real:
            await catch_up()
        learn_ids(ids, real, worker.msgs, requests)
        if "_raw" in msg:
            await worker.send_raw(msg["_raw"].encode() + b"\n")
            continue
        out = adapt(msg, ids)
        if "method" not in out and out.get("id") in requests:
            out["id"] = requests[out["id"]]  # an answer to a server request
        await worker.send(out)
    await catch_up()
    if not closed:
        await worker.close_stdin()
    code = await worker.exit_code()
    await worker.wait_for_eof()
    return real, worker, code


def assert_same_conversation(real: list[dict[str, Any]], fake: list[dict[str, Any]]) -> None:
    want, got = collapse(real), collapse(fake)
    assert [key(m) for m in got] == [key(m) for m in want]
    for a, b in zip(want, got, strict=True):
        assert shape(b) == shape(a), f"{key(a)}: {shape_diff(shape(a), shape(b))}"
        assert meaning(b) == meaning(a), f"{key(a)}: {meaning(b)} != {meaning(a)}"


def dynamic_call_bookkeeping(msg: dict[str, Any]) -> bool:
    """item/tool/call requests and the dynamicToolCall items: compared separately where the
    capture lost a race (the 2nd request came after the delete, see dyntool_e2e)."""
    item = (msg.get("params") or {}).get("item") or {}
    return msg.get("method") == "item/tool/call" or item.get("type") == "dynamicToolCall"


FIDELITY = [
    "normal", "reasoning", "drop_once", "drop", "err429_usage", "err400ctx", "err429", "err500",
    "incomplete",
    "interrupt", "thread_cleanup", "protocol_errors", "approval_error_reply",
    "approval_untrusted_accept", "approval_untrusted_noanswer", "history", "steer_while_active",
    "dyntool_text_call", "dyntool_noanswer_delete", "dyntool_noanswer_interrupt",
    "dyntool_answer_ok", "dyntool_answer_fail", "dyntool_answer_rpc_error", "dyntool_resume",
    "dyntool_par3gap_noanswer_raw",
    "stdin_close_midturn", "sigterm_midturn",
]


@pytest.mark.parametrize("name", FIDELITY)
async def test_fake_replays_like_the_real_app_server(spawn: Spawn, name: str) -> None:
    real, worker, code = await replay(spawn, name)
    assert_same_conversation(real, worker.msgs)
    _, meta = capture(name)
    recorded = meta.get("exit_code", (meta.get("exit") or {}).get("returncode"))
    assert code == (0 if recorded is None else recorded)  # stdin EOF and SIGTERM: exit 0
    assert not worker.junk


async def test_fake_replays_the_tool_call_round_trip(spawn: Spawn) -> None:
    """dyntool_e2e: calls collected from raw items, thread deleted unanswered, then the
    stateless follow-up with the results injected."""
    real, worker, _ = await replay(spawn, "dyntool_e2e", drop=dynamic_call_bookkeeping)
    keep = [m for m in worker.msgs if not dynamic_call_bookkeeping(m)]
    assert_same_conversation([m for m in real if not dynamic_call_bookkeeping(m)], keep)
    calls = [m["params"] for m in worker.msgs if m.get("method") == "item/tool/call"]
    raw_calls = [p["item"] for p in worker.notes("rawResponseItem/completed")
                 if p["item"]["type"] == "function_call" and p["turnId"] != "auto-compact-0"]
    assert [c["callId"] for c in calls] == [r["call_id"] for r in raw_calls]
    assert [c["tool"] for c in calls] == ["get_weather", "get_time"]
    assert raw_calls[0]["arguments"] == '{"city": "Paris", "unit": "celsius"}'
    assert calls[0]["arguments"] == {"city": "Paris", "unit": "celsius"}
    failed = [p["item"] for p in worker.notes("item/completed")
              if p["item"]["type"] == "dynamicToolCall"]
    assert [i["status"] for i in failed] == ["failed", "failed"]
    # The follow-up answered from the injected outputs (call ids are the capture's).
    assert worker.notes("turn/completed")[-1]["turn"]["items"][0]["text"] == (
        "Tool results: call_fake_165_0=sunny, 21 C; call_fake_165_1=14:05")


# -- behaviour beyond the captures ---------------------------------------------------------------

async def test_concurrent_threads_interleave_and_route(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake()
    threads = [await worker.thread() for _ in range(4)]
    for n, thread_id in enumerate(threads):  # back to back, as the capture's client did
        await worker.send({"id": f"turn-{n}", "method": "turn/start", "params": {
            "threadId": thread_id,
            "input": [{"type": "text", "text": f"Count SCENARIO=paced DELAY_MS=50 N={n}"}]}})
    turns = {}
    for n, thread_id in enumerate(threads):
        started = await worker.wait_for(lambda n=n: worker.response(f"turn-{n}"), "turn/start")
        turns[thread_id] = started["result"]["turn"]["id"]
    for thread_id in threads:
        assert (await worker.completed(thread_id))["status"] == "completed"
    for msg in worker.msgs:
        params = msg.get("params") or {}
        if "threadId" in params and "turnId" in params:
            assert params["turnId"] == turns[params["threadId"]], msg
    order = [p["threadId"] for p in worker.notes("item/agentMessage/delta")]
    assert len(order) == 20
    assert order != sorted(order, key=threads.index), "deltas of the four turns did not interleave"
    for thread_id in threads:
        assert worker.text(thread_id) == "w0 w1 w2 w3 w4"
    # Each thread's own sequence is the one of a thread in app-server.concurrent4.
    records, _ = capture("concurrent4")
    real_thread = next(r["msg"]["params"]["threadId"] for r in records
                       if r["msg"].get("method") == "turn/started")
    real = [r["msg"] for r in records if r["dir"] == "server->client"
            and (r["msg"].get("params") or {}).get("threadId") == real_thread]
    mine = [m for m in worker.msgs if (m.get("params") or {}).get("threadId") == threads[0]]
    assert [key(m) for m in collapse(mine)] == [key(m) for m in collapse(real)]


async def test_scenarios_say_what_fake_codex_says(spawn: Spawn, fast_app_server: Path) -> None:
    """The same prompt gives the same answer text, deltas and usage on both fakes."""
    prompts = ["SCENARIO=normal", "SCENARIO=multi_chunk DELTAS=7", "SCENARIO=unicode",
               "SCENARIO=message_only", "SCENARIO=message_mismatch", "SCENARIO=empty",
               "SCENARIO=tool", "SCENARIO=reasoning", "SCENARIO=tool_blocks",
               "SCENARIO=retry_replay", "SCENARIO=retry_diverge",
               "SCENARIO=slow DELTAS=4 DELAY_MS=0", "SCENARIO=long DELTAS=5",
               "SCENARIO=stderr_flood STDERR_KB=8"]
    proto = await spawn(program=FAKE_CODEX, env={"FAKE_CODEX_EXIT_ON_EOF": "1"})
    app = await spawn()
    await app.handshake()
    before: dict[str, int] = {}
    for n, prompt in enumerate(prompts, 1):
        await proto.send({"id": str(n), "op": {"type": "user_input",
                                               "items": [{"type": "text", "text": prompt}]}})
        events = await proto.wait_for(lambda n=n: [
            m["msg"] for m in proto.msgs if m.get("id") == str(n)
        ] if any(m.get("id") == str(n) and m["msg"]["type"] == "task_complete"
                 for m in proto.msgs) else None, prompt)
        thread_id = await app.thread()
        await app.turn(thread_id, prompt)
        await app.completed(thread_id)
        deltas = "".join(e["delta"] for e in events if e["type"] == "agent_message_delta")
        assert app.text(thread_id) == deltas, prompt
        messages = [e["message"] for e in events if e["type"] == "agent_message"]
        items = [p["item"]["text"] for p in app.notes("item/completed", thread_id)
                 if p["item"]["type"] == "agentMessage"]
        assert items == messages, prompt
        # fake_codex's total spans the process; a thread's total is this turn's (fresh thread).
        usage = [e["info"]["total_token_usage"] for e in events if e["type"] == "token_count"][-1]
        turn_usage = {k: v - before.get(k, 0) for k, v in usage.items()}
        before = usage
        total = app.notes("thread/tokenUsage/updated", thread_id)[-1]["tokenUsage"]["total"]
        assert (total["inputTokens"], total["outputTokens"], total["cachedInputTokens"],
                total["reasoningOutputTokens"], total["totalTokens"]) == (
            turn_usage["input_tokens"], turn_usage["output_tokens"],
            turn_usage["cached_input_tokens"], turn_usage["reasoning_output_tokens"],
            turn_usage["total_tokens"]), prompt
    await proto.close_stdin()
    assert await proto.exit_code() == 0


async def test_tool_scenario_items_are_shaped_like_codex_commands(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake()
    thread_id = await worker.thread()
    await worker.turn(thread_id, "SCENARIO=tool")
    await worker.completed(thread_id)
    records, _ = capture("tool_exec")
    real = [r["msg"] for r in records if r["dir"] == "server->client"]

    def command_msgs(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [m for m in msgs if m.get("method") == "item/commandExecution/outputDelta"
                or (m.get("params") or {}).get("item", {}).get("type") == "commandExecution"]

    mine, theirs = command_msgs(worker.msgs), command_msgs(real)
    assert [key(m) for m in mine] == [key(m) for m in theirs]
    assert [shape(m) for m in mine] == [shape(m) for m in theirs]
    assert "".join(p["delta"] for p in worker.notes("item/commandExecution/outputDelta")) == (
        "hi-from-tool\nREADME.txt\n")
    # command (response 1), then two messages (response 2): two usage updates.
    assert len(worker.notes("thread/tokenUsage/updated", thread_id)) == 2


async def test_usage_is_cumulative_per_thread(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake()
    thread_id = await worker.thread()
    for n in (1, 2):
        await worker.turn(thread_id, "hi")
        await worker.completed(thread_id, n)
    totals = [p["tokenUsage"] for p in worker.notes("thread/tokenUsage/updated", thread_id)]
    assert [u["total"]["totalTokens"] for u in totals] == [1214, 2428]
    assert [u["last"]["totalTokens"] for u in totals] == [1214, 1214]
    assert worker.text(thread_id) == "Hello! This is a streamed answer from the fake upstream." * 2


async def test_handshake_errors_and_lines_that_get_no_answer(spawn: Spawn) -> None:
    worker = await spawn(env={"FAKE_APP_INIT_DELAY_MS": "30"})
    early = await worker.call("thread/loaded/list")
    assert early["error"] == {"code": -32600, "message": "Not initialized"}
    info = await worker.handshake()
    assert info["userAgent"] == (
        "quartproxy-test/0.169.0 (Debian 12.0.0; x86_64) xterm (quartproxy-test; 9.9.9)")
    again = await worker.call("initialize", {"clientInfo": {"name": "x", "version": "1"}})
    assert again["error"]["message"] == "Already initialized"
    unknown = await worker.call("thread/bogus")
    assert unknown["error"]["code"] == -32600
    assert "unknown variant `thread/bogus`" in unknown["error"]["message"]
    assert "`thread/delete`" in unknown["error"]["message"]
    seen = len(worker.msgs)
    for junk in (b"", b"not json", b"[1, 2, 3]", b'{"id": 99}', b'{"id": 12345, "result": {}}',
                 b'{"method": "no/such/notification"}',
                 b'{"jsonrpc": "2.0", "method": "initialized"}'):
        await worker.send_raw(junk + b"\n")
    await worker.send({"jsonrpc": "2.0", "id": "str-id", "method": "thread/loaded/list"})
    await worker.wait_for(lambda: worker.response("str-id"), "loaded/list")
    assert worker.msgs[seen:] == [{"id": "str-id", "result": {"data": [], "nextCursor": None}}]
    assert b"Failed to deserialize JSONRPCMessage" in worker.stderr


async def test_opt_out_and_the_experimental_capability(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake(optOutNotificationMethods=OPT_OUT)
    refused = await worker.call("thread/start", {"dynamicTools": [WEATHER]})
    assert refused["error"] == {
        "code": -32600,
        "message": "thread/start.dynamicTools requires experimentalApi capability"}
    thread_id = await worker.thread()
    await worker.turn(thread_id, "hi")
    await worker.completed(thread_id)
    assert not {m.get("method") for m in worker.msgs} & set(OPT_OUT)
    assert worker.text(thread_id)
    assert not worker.notes("rawResponse/completed")  # only for experimentalRawEvents threads


async def test_process_hooks_and_stdin_eof(spawn: Spawn, tmp_path: Path) -> None:
    pids, record = tmp_path / "pids", tmp_path / "record"
    worker = await spawn("-c", 'model="gpt-test"', "app-server", "-c", "model_provider=local",
                         env={"FAKE_CODEX_PID_DIR": str(pids), "FAKE_CODEX_RECORD": str(record),
                              "CODEX_HOME": str(tmp_path / "home")})
    await worker.handshake()
    started = await worker.result("thread/start", {"cwd": str(tmp_path)})
    thread_id = started["thread"]["id"]
    assert started["thread"]["model"] == "gpt-test" and started["modelProvider"] == "local"
    assert started["thread"]["path"].startswith(f"{tmp_path}/home/sessions/")
    assert started["thread"]["path"].endswith(f"-{thread_id}.jsonl")
    result = await worker.result("thread/loaded/list")
    assert result == {"data": [thread_id], "nextCursor": None}
    pid = worker.proc.pid
    assert json.loads((pids / str(pid)).read_text())[1:] == [
        "-c", 'model="gpt-test"', "app-server", "-c", "model_provider=local"]
    header = json.loads((record / f"{pid}.json").read_text())
    assert header["config_overrides"] == {"model": "gpt-test", "model_provider": "local"}
    await worker.turn(thread_id, "Tell a story SCENARIO=slow DELAY_MS=50")
    await worker.wait_for(lambda: worker.notes("item/agentMessage/delta"), "a delta")
    await worker.close_stdin()
    assert await worker.exit_code() == 0  # mid-turn: the turn is dropped
    await worker.wait_for_eof()
    assert not worker.notes("turn/completed")
    lines = [json.loads(line) for line in (record / f"{pid}.jsonl").read_text().splitlines()]
    assert [m.get("method") for m in lines] == [
        "initialize", "initialized", "thread/start", "thread/loaded/list", "turn/start"]
    assert b"bubblewrap" in worker.stderr and b"\x1b[" in worker.stderr


async def test_signals(spawn: Spawn) -> None:
    term, intr = await spawn(), await spawn()
    for worker in (term, intr):
        await worker.handshake()
    term.proc.send_signal(signal.SIGTERM)
    intr.proc.send_signal(signal.SIGINT)
    assert await term.exit_code() == 0
    assert await intr.exit_code() == -signal.SIGINT


async def test_versions_gate_methods_and_notifications(spawn: Spawn) -> None:
    old = await spawn(env={"FAKE_CODEX_VERSION": "0.120.0"})
    info = await old.handshake()
    assert "/0.120.0 " in info["userAgent"]
    thread_id = await old.thread()
    missing = await old.call("thread/delete", {"threadId": thread_id})
    assert "unknown variant `thread/delete`" in missing["error"]["message"]
    await old.turn(thread_id, "hi")
    await old.completed(thread_id)
    assert not old.notes("warning") and old.notes("thread/status/changed")
    assert "cacheWriteInputTokens" not in old.notes("thread/tokenUsage/updated")[0]["tokenUsage"][
        "total"]
    assert await old.result("thread/archive", {"threadId": thread_id}) == {}
    archived = await old.wait_for(lambda: old.notes("thread/archived"), "thread/archived")
    assert archived == [{"threadId": thread_id}]

    older = await spawn(env={"FAKE_CODEX_VERSION": "0.100.0"})
    await older.handshake()
    thread_id = await older.thread()
    await older.turn(thread_id, "hi")
    await older.completed(thread_id)
    assert not older.notes("thread/status/changed")
    dup = [m["params"] for m in older.msgs if m.get("method") == "codex/event/agent_message_delta"]
    assert "".join(p["msg"]["delta"] for p in dup) == older.text(thread_id)
    assert dup[0]["conversationId"] == thread_id and dup[0]["msg"]["type"] == "agent_message_delta"
    kinds = [m["method"] for m in older.msgs if m.get("method", "").startswith("codex/event/")]
    assert kinds[0] == "codex/event/task_started" and kinds[-1] == "codex/event/task_complete"
    unsub = await older.call("thread/unsubscribe", {"threadId": thread_id})
    assert "unknown variant" in unsub["error"]["message"]


async def test_approval_decline_goes_on_and_cancel_interrupts(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake()
    answers = {"decline": "declined", "cancel": "declined", "accept": "completed"}
    for n, (decision, status) in enumerate(answers.items(), 1):
        thread_id = await worker.thread()
        await worker.turn(thread_id, "write a file SCENARIO=approval")
        asks = await worker.wait_for(
            lambda n=n: len(worker.requests("item/commandExecution/requestApproval")) >= n
            and worker.requests("item/commandExecution/requestApproval"), "approval")
        ask = asks[n - 1]
        assert ask["params"]["threadId"] == thread_id
        await worker.send({"id": ask["id"], "result": {"decision": decision}})
        turn = await worker.completed(thread_id)
        command = [p["item"] for p in worker.notes("item/completed", thread_id)
                   if p["item"]["type"] == "commandExecution"]
        assert [c["status"] for c in command] == [status]
        resolved = worker.notes("serverRequest/resolved", thread_id)
        assert resolved == [{"threadId": thread_id, "requestId": ask["id"]}]
        if decision == "cancel":
            assert turn["status"] == "interrupted" and not worker.text(thread_id)
        else:
            assert turn["status"] == "completed"
            assert worker.text(thread_id) == (
                "Hello! This is a streamed answer from the fake upstream.")
    assert [r["id"] for r in worker.requests("item/commandExecution/requestApproval")] == [0, 1, 2]


async def test_tool_calls_answered_and_the_follow_up(spawn: Spawn, tmp_path: Path) -> None:
    worker = await spawn(env={"FAKE_CODEX_RECORD": str(tmp_path)})
    await worker.handshake(experimentalApi=True)
    thread_id = await worker.thread(dynamicTools=[WEATHER, TIME], experimentalRawEvents=True)
    turn_id = await worker.turn(thread_id, "weather? SCENARIO=tool_calls_parallel")
    done = await worker.wait_for(lambda: worker.notes("rawResponse/completed", thread_id),
                                 "rawResponse/completed")
    calls = worker.requests("item/tool/call")
    assert [c["params"]["tool"] for c in calls] == ["get_weather", "get_time"]
    assert calls[1]["params"] == {
        "threadId": thread_id, "turnId": turn_id, "callId": calls[1]["params"]["callId"],
        "namespace": None, "tool": "get_time", "arguments": {"tz": "Europe/Paris"}}
    assert done[0]["usage"]["inputTokens"] == 1200
    assert not worker.notes("thread/tokenUsage/updated", thread_id)  # held for the answers
    await worker.send({"id": calls[0]["id"], "result": {
        "contentItems": [{"type": "inputText", "text": "sunny"}], "success": True}})
    await worker.send({"id": calls[1]["id"], "error": {"code": -32601, "message": "no"}})
    turn = await worker.completed(thread_id)
    first, second = (c["params"]["callId"] for c in calls)
    assert turn["items"][0]["text"] == (
        f"Tool results: {first}=sunny; {second}=dynamic tool request failed")
    statuses = [p["item"]["status"] for p in worker.notes("item/completed", thread_id)
                if p["item"]["type"] == "dynamicToolCall"]
    assert statuses == ["completed", "failed"]
    usage = worker.notes("thread/tokenUsage/updated", thread_id)
    assert [u["tokenUsage"]["total"]["inputTokens"] for u in usage] == [1200, 2400]

    # Stateless follow-up: a fresh thread, history injected, input [].
    follow = await worker.thread(dynamicTools=[WEATHER, TIME], experimentalRawEvents=True)
    history = [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "weather? SCENARIO=tool_calls_parallel"}]},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "x"}]},
        {"type": "function_call", "call_id": "call_w", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_t", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_w", "output": "sunny"},
    ]
    assert await worker.result("thread/inject_items", {"threadId": follow, "items": history}) == {}
    echoed = worker.notes("rawResponseItem/completed", follow)
    assert {p["turnId"] for p in echoed} == {"auto-compact-0"}
    assert [p["item"]["type"] for p in echoed][2:] == [
        "message", "function_call", "function_call", "function_call_output"]  # system dropped
    await worker.turn(follow, None)
    turn = await worker.completed(follow)
    assert turn["items"][0]["text"] == "Tool results: call_w=sunny; call_t=aborted"
    assert not [m for m in worker.msgs if m.get("method") == "item/tool/call"
                and m["params"]["threadId"] == follow]
    recorded = [json.loads(line) for line in
                (tmp_path / f"{worker.proc.pid}.jsonl").read_text().splitlines()]
    assert {"id": calls[0]["id"], "result": {
        "contentItems": [{"type": "inputText", "text": "sunny"}], "success": True}} in recorded
    assert any(m.get("method") == "thread/inject_items" and len(m["params"]["items"]) == 5
               for m in recorded)


async def test_tool_scenarios_without_tools_and_with_gaps(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake(experimentalApi=True)
    plain = await worker.thread()
    await worker.turn(plain, "SCENARIO=tool_call")
    await worker.completed(plain)
    assert worker.text(plain) == "Hello! This is a streamed answer from the fake upstream."
    tools = await worker.thread(dynamicTools=[WEATHER])
    await worker.turn(tools, "SCENARIO=tool_call_gap DELAY_MS=30 CALLS=2")
    calls = await worker.wait_for(lambda: len(worker.requests("item/tool/call")) == 2
                                  and worker.requests("item/tool/call"), "two calls")
    assert [c["params"]["arguments"]["city"] for c in calls] == ["Paris", "Oslo"]
    assert await worker.result("thread/delete", {"threadId": tools}) == {}
    turn = worker.notes("turn/completed", tools)[-1]["turn"]
    assert turn["status"] == "interrupted"
    failed = [p["item"]["status"] for p in worker.notes("item/completed", tools)
              if p["item"]["type"] == "dynamicToolCall"]
    assert failed == ["failed", "failed"]
    # The held usage of the response is reported when the turn ends.
    assert worker.notes("thread/tokenUsage/updated", tools)
    gone = await worker.call("turn/start", {"threadId": tools, "input": []})
    assert gone["error"]["message"] == f"thread not found: {tools}"


async def test_failure_scenarios(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake()
    cases = {
        "SCENARIO=rate_limit RETRIES=2": (2, {"responseTooManyFailedAttempts":
                                              {"httpStatusCode": 429}}),
        "SCENARIO=error RETRIES=1": (1, "internalServerError"),
        "SCENARIO=drop RETRIES=2": (2, "other"),
        "SCENARIO=error_after_text": (0, "other"),
        "SCENARIO=no_such_scenario": (0, "other"),
    }
    for prompt, (retries, info) in cases.items():
        thread_id = await worker.thread()
        await worker.turn(thread_id, prompt)
        turn = await worker.completed(thread_id)
        errors = worker.notes("error", thread_id)
        assert [e["willRetry"] for e in errors] == [True] * retries + [False], prompt
        assert errors[-1]["error"]["codexErrorInfo"] == info, prompt
        assert turn["status"] == "failed" and turn["error"] == errors[-1]["error"]
    drops = worker.notes("error")[5:7]
    assert drops[0]["error"]["message"] == "Reconnecting... 1/2"


async def test_interrupts_stop_hangs_and_nothing_follows(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake()
    threads = []
    for prompt in ("SCENARIO=hang", "SCENARIO=stream_hang DELTAS=2", "SCENARIO=interrupt"):
        thread_id = await worker.thread()
        threads.append(thread_id)
        turn_id = await worker.turn(thread_id, prompt)
        await worker.wait_for(lambda t=thread_id: worker.notes("turn/started", t), "started")
        assert await worker.result("turn/interrupt",
                                   {"threadId": thread_id, "turnId": turn_id}) == {}
        turn = await worker.completed(thread_id)
        assert turn["status"] == "interrupted" and turn["items"] == []
        again = await worker.call("turn/interrupt", {"threadId": thread_id, "turnId": turn_id})
        assert again["error"]["message"] == "no active turn to interrupt"
    # A round trip later, nothing more was said for any interrupted turn.
    assert await worker.result("thread/loaded/list") == {"data": threads, "nextCursor": None}
    for thread_id in threads:
        tail = [m for m in worker.msgs if (m.get("params") or {}).get("threadId") == thread_id]
        assert tail[-1]["method"] == "turn/completed"


async def test_noise_burst_and_crash(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake()
    noisy = await worker.thread()
    await worker.turn(noisy, "SCENARIO=noise")
    await worker.completed(noisy)
    assert worker.text(noisy) == "Hello! This is a streamed answer from the fake upstream."
    assert b"this is not json at all" in worker.junk and b"[1, 2, 3]" in worker.junk
    assert any(m.get("method") == "mystery/notification" for m in worker.msgs)
    burst = await worker.thread()
    await worker.turn(burst, "SCENARIO=burst DELTAS=300")
    await worker.completed(burst)
    assert worker.text(burst) == "".join(f"w{i % 10} " for i in range(300))
    crash = await worker.thread()
    await worker.turn(crash, "SCENARIO=worker_crash DELTAS=2")
    assert await worker.exit_code() == 1
    await worker.wait_for_eof()
    assert worker.text(crash) == "Hello! This"
    assert not worker.notes("turn/completed", crash)


async def test_worker_freeze_answers_nothing_until_signalled(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake()
    thread_id = await worker.thread()
    await worker.turn(thread_id, "SCENARIO=worker_freeze")
    await worker.wait_for(lambda: b"frozen" in worker.stderr, "the freeze")
    seen = len(worker.msgs)
    assert worker.notes("turn/started", thread_id)
    await worker.send({"id": "probe", "method": "thread/loaded/list"})
    await worker.close_stdin()
    with trio.move_on_after(0.3):  # a negative check: nothing may arrive
        await worker.proc.wait()
    assert worker.proc.returncode is None and len(worker.msgs) == seen
    worker.proc.send_signal(signal.SIGTERM)
    assert await worker.exit_code() == 0


async def test_steering_keeps_the_turn_id(spawn: Spawn) -> None:
    worker = await spawn()
    await worker.handshake()
    thread_id = await worker.thread()
    first = await worker.turn(thread_id, "SCENARIO=slow DELTAS=400 DELAY_MS=10")
    await worker.wait_for(lambda: worker.notes("item/agentMessage/delta"), "a delta")
    second = await worker.turn(thread_id, "SCENARIO=normal")
    assert second == first
    turn = await worker.completed(thread_id)
    assert turn["items"][-1]["text"] == "Hello! This is a streamed answer from the fake upstream."
    assert len(worker.notes("turn/started", thread_id)) == 1


async def test_version_flags_and_bad_subcommands() -> None:
    for program, env, expected in (
        (FAKE, {}, "codex-cli 0.169.0"),
        (FAKE, {"FAKE_CODEX_VERSION": "0.140.0"}, "codex-cli 0.140.0"),
        (FAKE_CODEX, {}, "codex-cli 0.42.0"),
        (FAKE_CODEX, {"FAKE_CODEX_VERSION": "0.36.0"}, "codex-cli 0.36.0"),
    ):
        with trio.fail_after(LIMIT):
            done = await trio.run_process([str(program), "--version"], capture_stdout=True,
                                          env={**os.environ, **env})
        assert done.stdout.decode().strip() == expected
    for argv in ([str(FAKE), "proto"], [str(FAKE)]):
        with trio.fail_after(LIMIT):
            done = await trio.run_process(argv, capture_stderr=True, check=False,
                                          stdin=subprocess.DEVNULL)
        assert done.returncode == 2 and b"error" in done.stderr
