"""The test doubles must behave like the real ``codex proto`` child they replace.

Every proxy test that uses ``fixtures/fake_codex.py`` or the ``--demo`` backend trusts that
these programs speak the protocol the way the real binary does (see ``fixtures/captures/``).
If they drift, proxy tests keep passing against a fiction, so the doubles are checked here
directly, line by line, against the recorded captures where a capture exists. The demo's
app-server mode is held against ``fixtures/fake_app_server.py``, which
``tests/test_fake_app_server.py`` holds against the app-server captures.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quartproxy.backends.appserver.params import OPT_OUT_METHODS
from quartproxy.backends.appserver.version import (
    BackendKind,
    CodexVersion,
    choose_backend,
    features_for,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
CAPTURES = FIXTURES / "captures"
FAKE = FIXTURES / "fake_codex.py"
DEMO = ROOT / "quartproxy" / "demo_backend.py"
READ_TIMEOUT = 60.0  # a hang guard: a loaded machine may start the fake slowly
NORMAL_TEXT = "Hello! This is a streamed answer from the fake upstream."


class Child:
    """A proto child under test, read with deadlines so a broken double fails instead of hangs."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_CODEX_")}
        clean.update(env or {})
        # A file rather than a pipe: nothing has to drain it, so the child can never block on it.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in cleanup()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=clean,
        )
        self.buf = b""
        self.eof = False

    def raw_line(self, timeout: float = READ_TIMEOUT) -> bytes | None:
        """Next stdout line including its newline; a newline-less tail at EOF; None at EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                rest, self.buf = self.buf, b""
                return rest or None
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no complete stdout line within {timeout}s: {self.buf!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    self.buf += chunk
                else:
                    self.eof = True
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def event(self, timeout: float = READ_TIMEOUT) -> dict[str, Any] | None:
        line = self.raw_line(timeout)
        if line is None:
            return None
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        return obj

    def events_until(self, *stop: str) -> list[dict[str, Any]]:
        """Events up to and including the first whose type is in ``stop`` (or up to EOF)."""
        got: list[dict[str, Any]] = []
        while (obj := self.event()) is not None:
            got.append(obj)
            if kind(obj) in stop:
                break
        return got

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        self.proc.stdin.flush()

    def submit(self, text: str, sub_id: str = "1") -> None:
        items = [{"type": "text", "text": text}]
        self.send({"id": sub_id, "op": {"type": "user_input", "items": items}})

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def stays_alive(self, seconds: float = 0.3) -> bool:
        """True if the child is still running after ``seconds`` (it must not exit by itself)."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return True
        return False

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=READ_TIMEOUT)

    def exit_code(self) -> int:
        return self.proc.wait(timeout=READ_TIMEOUT)

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=READ_TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
        self.stderr.close()


def kind(obj: dict[str, Any]) -> str:
    """Event type in either envelope: ``{"id","msg":{"type"}}`` or the old ``{"type","msg"}``."""
    if "id" in obj and isinstance(obj.get("msg"), dict):
        return str(obj["msg"].get("type"))
    return str(obj.get("type"))


def msgs(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["msg"] for e in events]


def types(events: list[dict[str, Any]]) -> list[str]:
    return [kind(e) for e in events]


def deltas_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["msg"]["delta"] for e in events if kind(e) == "agent_message_delta")


def load_capture(name: str) -> list[dict[str, Any]]:
    path = CAPTURES / f"{name}.stdout.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def without_retry_timing(msg: dict[str, Any]) -> dict[str, Any]:
    """Retry back-off in stream_error text is jittered in real captures; compare the rest."""
    if msg.get("type") in ("stream_error", "background_event"):
        return {**msg, "message": msg["message"].rsplit(" in ", 1)[0]}
    return msg


@pytest.fixture
def spawn() -> Iterator[Any]:
    children: list[Child] = []

    def start(*args: str, env: dict[str, str] | None = None, demo: bool = False) -> Child:
        argv = [sys.executable, str(DEMO)] if demo else [str(FAKE)]
        child = Child([*argv, "proto", *args], env)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.cleanup()


def test_fixture_scripts_are_executable_with_shebang() -> None:
    scripts = [p for p in FIXTURES.iterdir() if p.is_file() and p.suffix in (".py", ".sh")]
    assert FAKE in scripts
    for script in scripts:
        assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable"
        assert script.read_bytes().startswith(b"#!"), f"{script.name} has no shebang"


def test_fake_normal_is_the_real_protocol(spawn: Any) -> None:
    child = spawn("-c", 'model="gpt-test"', "-c", 'sandbox_mode="read-only"')
    # session_configured must come before anything is written to stdin.
    first = child.event()
    assert first is not None
    assert first["id"] == ""
    assert first["msg"]["type"] == "session_configured"
    assert first["msg"]["model"] == "gpt-test"

    child.submit("Say hello", "req-7")
    events = child.events_until("task_complete")
    assert {e["id"] for e in events} == {"req-7"}
    expected = ["task_started"] + ["agent_message_delta"] * 10
    assert types(events) == [*expected, "agent_message", "token_count", "task_complete"]
    assert deltas_text(events) == NORMAL_TEXT
    assert events[-3]["msg"]["message"] == NORMAL_TEXT
    assert events[-1]["msg"]["last_agent_message"] == NORMAL_TEXT
    total = events[-2]["msg"]["info"]["total_token_usage"]
    assert (total["input_tokens"], total["output_tokens"], total["total_tokens"]) == (
        1200,
        14,
        1214,
    )

    # Like codex: alive after task_complete and after stdin EOF; SIGTERM ends it.
    assert child.stays_alive(0.2)
    child.close_stdin()
    assert child.stays_alive(0.3)
    assert child.terminate() == -signal.SIGTERM
    assert "INFO" in child.stderr_text()


@pytest.mark.parametrize(
    ("prompt", "capture"),
    [
        ("Say hello SCENARIO=normal", "codex-0.36.0/normal"),
        ("Say hello SCENARIO=normal TOKENS=nested_rl", "codex-0.42.0/normal"),
        ("SCENARIO=retry_diverge", "codex-0.36.0/drop_once"),
        ("SCENARIO=error", "codex-0.42.0/err_seq"),
        ("SCENARIO=incomplete TOKENS=nested_rl", "codex-0.42.0/incomplete"),
        ("SCENARIO=error_08", "codex-0.8.0/err_seq"),
        ("SCENARIO=usage_limit", "codex-0.36.0/err429_usage"),
        ("SCENARIO=usage_limit TOKENS=nested_rl", "codex-0.42.0/err429_usage"),
        ("SCENARIO=rate_limit", "codex-0.36.0/err429"),
        ("SCENARIO=context_window", "codex-0.36.0/err400ctx"),
        ("SCENARIO=context_window TOKENS=nested_rl", "codex-0.42.0/err_seq"),
        ("SCENARIO=server_error", "codex-0.36.0/err500"),
    ],
)
def test_fake_scenarios_replay_the_captures(spawn: Any, prompt: str, capture: str) -> None:
    recorded = load_capture(capture)
    child = spawn()
    assert kind(child.event() or {}) == "session_configured"
    child.submit(prompt)
    got = [child.event() for _ in recorded[1:]]
    assert all(e is not None and e["id"] == "1" for e in got)
    want = [without_retry_timing(e["msg"]) for e in recorded[1:]]
    assert [without_retry_timing(e["msg"]) for e in got if e] == want
    assert child.stays_alive(0.1)  # also after 0.8's bare `error` with no task_complete


def test_fake_flat_and_legacy_token_counts(spawn: Any) -> None:
    flat_capture = load_capture("codex-0.29.0/normal")
    flat_want = next(e["msg"] for e in flat_capture if kind(e) == "token_count")

    child = spawn()
    child.submit("SCENARIO=normal TOKENS=flat")
    events = child.events_until("task_complete")
    counts = [e["msg"] for e in events if kind(e) == "token_count"]
    assert counts == [flat_want]

    child = spawn()
    child.submit("SCENARIO=normal TOKENS=legacy")
    events = child.events_until("task_complete")
    counts = [e["msg"] for e in events if kind(e) == "token_count"]
    legacy = {"type": "token_count", "prompt_tokens": 1200, "completion_tokens": 14}
    assert counts == [{**legacy, "total_tokens": 1214}]


def test_fake_type_envelope(spawn: Any) -> None:
    child = spawn(env={"FAKE_CODEX_ENVELOPE": "type"})
    first = child.event()
    assert first is not None
    assert first["type"] == "session_configured" and "id" not in first
    child.submit("SCENARIO=normal")
    events = child.events_until("task_complete")
    assert all("id" not in e and "type" not in e["msg"] for e in events)
    assert types(events)[-3:] == ["agent_message", "token_count", "task_complete"]
    assert "".join(e["msg"]["delta"] for e in events if e["type"] == "agent_message_delta") == (
        NORMAL_TEXT
    )


def test_fake_no_complete_truncates_and_exits_1(spawn: Any) -> None:
    child = spawn()
    child.submit("SCENARIO=no_complete")
    events = child.events_until("task_complete")
    assert child.eof
    assert types(events) == ["session_configured", "task_started", *["agent_message_delta"] * 3]
    assert child.exit_code() == 1


def test_fake_noise_lines_and_partial_tail(spawn: Any) -> None:
    child = spawn()
    child.submit("SCENARIO=noise")
    raw: list[bytes] = []
    while (line := child.raw_line()) is not None:
        raw.append(line)
    assert child.exit_code() == 0
    assert not raw[-1].endswith(b"\n")  # partial last line at EOF
    parsed: list[Any] = []
    junk = 0
    for line in raw[:-1]:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            junk += 1
    assert junk >= 2  # the garbage text line and the cut JSON line
    assert any(line.strip() == b"" for line in raw)
    assert any(not isinstance(obj, dict) for obj in parsed)
    events = [o for o in parsed if isinstance(o, dict) and isinstance(o.get("msg"), dict)]
    assert "mystery_event" in types(events)
    assert deltas_text(events) == NORMAL_TEXT
    assert events[-1]["msg"] == {"type": "task_complete", "last_agent_message": NORMAL_TEXT}


def test_fake_unicode_survives_line_framing(spawn: Any) -> None:
    child = spawn()
    child.submit("SCENARIO=unicode")
    events = child.events_until("task_complete")
    text = deltas_text(events)
    assert "\u2028" in text and "👋🏽" in text and "e\u0301" in text and '"quoted"' in text
    assert events[-1]["msg"]["last_agent_message"] == text


def test_fake_exit_on_eof_is_opt_in(spawn: Any) -> None:
    child = spawn()
    child.submit("SCENARIO=normal EXIT_ON_EOF=1")
    child.events_until("task_complete")
    child.close_stdin()
    assert child.exit_code() == 0


def test_fake_interrupt_aborts_the_turn(spawn: Any) -> None:
    child = spawn()
    child.submit("SCENARIO=interrupt DELAY_MS=20", "task-1")
    child.events_until("agent_message_delta")
    child.send({"id": "int-2", "op": {"type": "interrupt"}})
    rest = child.events_until("turn_aborted", "task_complete")
    assert rest[-1] == {"id": "task-1", "msg": {"type": "turn_aborted", "reason": "interrupted"}}
    assert "task_complete" not in types(rest)
    assert child.stays_alive(0.1)


def test_fake_crash_immediately_exits_2_after_session_configured(spawn: Any) -> None:
    child = spawn(env={"FAKE_CODEX_SCENARIO": "crash_immediately"})
    assert kind(child.event() or {}) == "session_configured"
    assert child.event() is None
    assert child.exit_code() == 2


def test_fake_observability_hooks(spawn: Any, tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    record = tmp_path / "record"
    pid_dir.mkdir()
    env = {
        "FAKE_CODEX_PID_DIR": str(pid_dir),
        "FAKE_CODEX_RECORD": str(record),
        "MARKER_FOR_TEST": "42",
    }
    child = spawn("-c", 'model="m"', env=env)
    child.submit("SCENARIO=normal")
    child.events_until("task_complete")
    pid = child.proc.pid
    assert json.loads((pid_dir / str(pid)).read_text())[1:] == ["proto", "-c", 'model="m"']
    doc = json.loads((record / f"{pid}.json").read_text())
    assert doc["env"]["MARKER_FOR_TEST"] == "42"
    assert doc["cwd"] == os.getcwd()
    assert json.loads(doc["stdin_lines"][0])["op"]["items"][0]["text"] == "SCENARIO=normal"


def test_demo_backend_answers_like_codex_042(spawn: Any) -> None:
    child = spawn("-c", 'model="gpt-demo"', "-c", 'sandbox_mode="read-only"', demo=True)
    first = child.event()
    assert first is not None
    assert first["id"] == "" and first["msg"]["type"] == "session_configured"
    assert first["msg"]["model"] == "gpt-demo"

    prompt = "[system] Be brief.\n[user] What is the capital of France?"
    child.send({"id": "bad line without op"})  # reported on stderr, then ignored
    child.submit(prompt, "d-1")
    events = child.events_until("task_complete")
    assert {e["id"] for e in events} == {"d-1"}
    seq = types(events)
    assert seq[:2] == ["task_started", "token_count"]
    assert seq[-3:] == ["agent_message", "token_count", "task_complete"]
    assert set(seq[2:-3]) == {"agent_message_delta"} and len(seq) > 8
    assert events[0]["msg"]["model_context_window"] == 272000
    assert events[1]["msg"] == {
        "type": "token_count",
        "info": None,
        "rate_limits": {"primary": None, "secondary": None},
    }
    answer = events[-3]["msg"]["message"]
    assert deltas_text(events) == answer
    assert "demo" in answer and "What is the capital of France?" in answer
    assert events[-1]["msg"]["last_agent_message"] == answer
    info = events[-2]["msg"]["info"]
    total = info["total_token_usage"]
    assert total == info["last_token_usage"]
    assert total["input_tokens"] == math.ceil(len(prompt) / 4)
    assert total["output_tokens"] == math.ceil(len(answer) / 4)
    assert total["total_tokens"] == total["input_tokens"] + total["output_tokens"]
    assert total["cached_input_tokens"] == 0 and total["reasoning_output_tokens"] == 0

    child.close_stdin()
    assert child.stays_alive(0.3)
    assert child.terminate() == -signal.SIGTERM
    err = child.stderr_text()
    assert "INFO" in err and "invalid submission" in err


def test_demo_backend_honours_interrupt(spawn: Any) -> None:
    child = spawn(demo=True)
    child.event()
    child.submit("[user] " + "please stream a long reply " * 4, "d-2")
    child.events_until("agent_message_delta")
    child.send({"id": "d-3", "op": {"type": "interrupt"}})
    rest = child.events_until("turn_aborted", "task_complete")
    assert rest[-1] == {"id": "d-2", "msg": {"type": "turn_aborted", "reason": "interrupted"}}
    assert child.stays_alive(0.1)


# ------------------------------------------------------------------ the demo as an app-server

FAKE_APP = FIXTURES / "fake_app_server.py"
# What codex says that the demo has nothing to say about: account limits, model metadata,
# sandbox and remote-control notices. Everything else it sends as codex does.
DEMO_NEVER_SENDS = frozenset(
    {"account/rateLimits/updated", "warning", "configWarning", "remoteControl/status/changed"}
)


class Rpc:
    """A JSON-RPC session with an app-server child: every message it printed, in order."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.seen: list[dict[str, Any]] = []
        self.ids = itertools.count(1)

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": next(self.ids), "method": method, "params": params or {}}

    def write(self, *messages: dict[str, Any]) -> None:
        """All in one write: the child reads them together (a pipe write this small is atomic)."""
        assert self.child.proc.stdin is not None
        self.child.proc.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
        self.child.proc.stdin.flush()

    def until(self, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Messages up to and including the first for which ``done`` is true."""
        got: list[dict[str, Any]] = []
        while True:
            msg = self.child.event()
            assert msg is not None, f"stdout closed; got {[key(m) for m in got]}"
            got.append(msg)
            self.seen.append(msg)
            if done(msg):
                return got

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request; its response (``result`` or ``error``) once it arrives."""
        req = self.request(method, params)
        self.write(req)
        return self.until(lambda m: answers(m, req))[-1]

    def result(self, method: str, params: dict[str, Any] | None = None) -> Any:
        resp = self.call(method, params)
        assert "result" in resp, resp
        return resp["result"]

    def handshake(self, **capabilities: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"clientInfo": {"name": "qp-test", "title": None,
                                                 "version": "9.9.9"}}
        if capabilities:
            params["capabilities"] = capabilities
        result: dict[str, Any] = self.result("initialize", params)
        self.write({"method": "initialized"})
        return result


def answers(msg: dict[str, Any], req: dict[str, Any]) -> bool:
    return "method" not in msg and msg.get("id") == req["id"]


def is_note(method: str) -> Callable[[dict[str, Any]], bool]:
    return lambda msg: msg.get("method") == method and "id" not in msg


def key(msg: dict[str, Any]) -> str:
    if "method" in msg:
        return str(msg["method"])
    return "error" if "error" in msg else "result"


def collapsed(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Without what the demo never sends, and a run of deltas as one (its length is the text's)."""
    out: list[dict[str, Any]] = []
    for msg in msgs:
        if key(msg) in DEMO_NEVER_SENDS:
            continue
        if out and key(msg) == key(out[-1]) == "item/agentMessage/delta":
            continue
        out.append(msg)
    return out


def shape(obj: Any) -> Any:
    """The key structure: dict keys recursively, a list as the shape of its first element."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(obj[0])] if obj else []
    return None


def extra_keys(real: Any, demo: Any, path: str = "") -> list[str]:
    """Keys the demo has that codex does not (it may leave some out, never invent any)."""
    if isinstance(real, dict) and isinstance(demo, dict):
        out = [f"{path}.{k}" for k in demo if k not in real]
        for k in real.keys() & demo.keys():
            out += extra_keys(real[k], demo[k], f"{path}.{k}")
        return out
    if isinstance(real, list) and isinstance(demo, list) and real and demo:
        return extra_keys(real[0], demo[0], f"{path}[0]")
    return []


@pytest.fixture
def app_server() -> Iterator[Callable[..., Rpc]]:
    children: list[Child] = []

    def start(*args: str, demo: bool = True, env: dict[str, str] | None = None) -> Rpc:
        program = DEMO if demo else FAKE_APP
        child = Child([sys.executable, str(program), "app-server", *args], env)
        children.append(child)
        return Rpc(child)

    try:
        yield start
    finally:
        for child in children:
            child.cleanup()


def play_script(rpc: Rpc, hang: str) -> dict[str, list[dict[str, Any]]]:
    """The conversation the proxy holds with a worker, plus the ways a turn can be cut short.

    ``hang`` is appended to the texts of turns that are cut short: the fake needs a marker to
    keep such a turn running, the demo ignores it (it quotes it). Every interruption is sent in
    the same write as the ``turn/start`` it cuts short when the child is the demo (its turn has
    not streamed a word by then), and after the turn's user message otherwise.
    """
    demo = not hang
    parts: dict[str, list[dict[str, Any]]] = {}
    mark = len(rpc.seen)
    rpc.handshake()
    thread = rpc.result("thread/start", {
        "cwd": str(ROOT), "approvalPolicy": "never", "sandbox": "read-only", "model": "gpt-demo",
        "developerInstructions": "Be brief.\n\n"})["thread"]["id"]
    rpc.result("thread/inject_items", {"threadId": thread, "items": [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "first question"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "first answer"}]}]})
    rpc.result("turn/start", {"threadId": thread, "input": [
        {"type": "text", "text": "What is the capital of France?"}]})
    rpc.until(is_note("turn/completed"))
    rpc.result("thread/loaded/list")
    rpc.call("thread/delete", {"threadId": thread})
    rpc.until(is_note("thread/deleted"))
    parts["normal"] = rpc.seen[mark:]

    for cut in ("turn/interrupt", "thread/delete", "thread/archive"):
        mark = len(rpc.seen)
        thread = rpc.result("thread/start", {"cwd": str(ROOT)})["thread"]["id"]
        start = rpc.request("turn/start", {"threadId": thread, "input": [
            {"type": "text", "text": f"please stop {hang}"}]})
        stop = rpc.request(cut, {"threadId": thread})
        if demo:
            rpc.write(start, stop)
        else:
            rpc.write(start)
            turn = rpc.until(lambda m, s=start: answers(m, s))[-1]["result"]["turn"]["id"]
            rpc.until(is_note("item/completed"))  # the user message: the turn is under way
            if cut == "turn/interrupt":
                stop["params"]["turnId"] = turn  # codex wants it; the demo does not need it
            rpc.write(stop)
        rpc.until(lambda m, s=stop: answers(m, s))
        if cut == "turn/interrupt":
            rpc.until(is_note("turn/completed"))
            rpc.call("thread/archive", {"threadId": thread})
        rpc.until(is_note("thread/archived" if cut != "thread/delete" else "thread/deleted"))
        parts[cut] = rpc.seen[mark:]
    return parts


def test_demo_app_server_answers_like_the_fake(app_server: Callable[..., Rpc]) -> None:
    """The same conversation with the fake (as codex 0.140, the release the demo reports) and
    with the demo: the same messages in the same order and, where codex's structure matters to
    a client, the same keys."""
    fake = play_script(app_server(demo=False, env={"FAKE_CODEX_VERSION": "0.140.0"}),
                       "SCENARIO=hang")
    demo = play_script(app_server("-c", 'model="gpt-demo"'), "")
    for part, real_msgs in fake.items():
        want, got = collapsed(real_msgs), collapsed(demo[part])
        assert [key(m) for m in got] == [key(m) for m in want], part
        for real, mine in zip(want, got, strict=True):
            params = mine.get("params") or {}
            if "turnId" in params or "turn" in params or "status" in params or (
                    key(mine) in ("thread/deleted", "thread/archived")):
                assert shape(mine) == shape(real), (part, key(mine))  # turn and item shapes
            else:
                assert not extra_keys(shape(real), shape(mine)), (part, key(mine))
    statuses = [m["params"]["turn"]["status"] for part in demo.values() for m in part
                if key(m) == "turn/completed"]
    assert statuses == ["completed", "interrupted", "interrupted", "interrupted"]
    assert "\u201cWhat is the capital of France?\u201d" in "".join(
        m["params"]["delta"] for m in demo["normal"] if key(m) == "item/agentMessage/delta")


def test_demo_app_server_turn_with_the_proxys_opt_outs(app_server: Callable[..., Rpc]) -> None:
    rpc = app_server()
    init = rpc.handshake(optOutNotificationMethods=list(OPT_OUT_METHODS))
    assert init["userAgent"] == "qp-test/0.140.0-demo (demo)"
    version = CodexVersion.parse(init["userAgent"])
    assert version == CodexVersion(0, 140, 0) == CodexVersion.parse(
        subprocess.run([sys.executable, str(DEMO), "--version"], capture_output=True, text=True,
                       check=True, timeout=READ_TIMEOUT).stdout)
    assert choose_backend(version) is BackendKind.APP_SERVER  # full mode, but …
    assert not features_for(version).dynamic_tools  # … no function calling

    thread = rpc.result("thread/start", {"cwd": str(ROOT), "developerInstructions": "Brief."})
    thread_id = thread["thread"]["id"]
    assert thread["model"] == "gpt-5" and thread["thread"]["cwd"] == str(ROOT)
    turns = []
    for text in ("  hello   there ", "and again"):
        turn = rpc.result("turn/start", {"threadId": thread_id,
                                         "input": [{"type": "text", "text": text}]})["turn"]
        msgs = rpc.until(is_note("turn/completed"))
        assert not {key(m) for m in msgs} & set(OPT_OUT_METHODS)
        kinds = [key(m) for m in msgs]
        n = kinds.count("item/agentMessage/delta")
        assert kinds == ["turn/started", "item/completed", *["item/agentMessage/delta"] * n,
                         "item/completed", "thread/tokenUsage/updated", "turn/completed"]
        assert n > 10
        assert {m["params"]["turnId"] for m in msgs[1:-1]} == {turn["id"]}
        answer = msgs[-3]["params"]["item"]["text"]
        assert "".join(m["params"]["delta"] for m in msgs[2:-3]) == answer
        assert f"\u201c{' '.join(text.split())}\u201d" in answer
        assert msgs[-1]["params"]["turn"]["items"][0]["text"] == answer
        turns.append((text, answer, msgs[-2]["params"]["tokenUsage"]))

    # Estimated counts: the thread's text (instructions and input) and the answer, 4 chars each.
    first, second = (usage["last"] for _, _, usage in turns)
    assert first["inputTokens"] == math.ceil(len("Brief." + turns[0][0]) / 4)
    assert first["outputTokens"] == math.ceil(len(turns[0][1]) / 4)
    assert second["outputTokens"] == math.ceil(len(turns[1][1]) / 4)
    total = turns[1][2]["total"]
    for field in ("inputTokens", "outputTokens"):
        assert total[field] == first[field] + second[field]
    assert total["totalTokens"] == total["inputTokens"] + total["outputTokens"]

    # A turn that ends with the assistant's words quotes the newest injected user message.
    other = rpc.result("thread/start", {})["thread"]["id"]
    rpc.result("thread/inject_items", {"threadId": other, "items": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q1"}]},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "x"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]})
    rpc.result("turn/start", {"threadId": other, "input": []})
    msgs = rpc.until(is_note("turn/completed"))
    assert "\u201cq1\u201d" in msgs[-3]["params"]["item"]["text"]
    assert rpc.result("thread/loaded/list") == {"data": [thread_id, other], "nextCursor": None}


def test_demo_app_server_refuses_like_codex(app_server: Callable[..., Rpc]) -> None:
    rpc = app_server()
    assert rpc.call("thread/start")["error"] == {"code": -32600, "message": "Not initialized"}
    rpc.handshake()
    assert rpc.call("initialize", {})["error"]["message"] == "Already initialized"
    unknown = rpc.call("thread/fork", {})["error"]
    assert unknown["code"] == -32600 and "unknown variant `thread/fork`" in unknown["message"]
    assert rpc.call("turn/start", {"threadId": "nope", "input": []})["error"]["message"] == (
        "thread not found: nope")
    tools = [{"type": "function", "name": "f", "description": "", "inputSchema": {}}]
    assert "error" in rpc.call("thread/start", {"dynamicTools": tools})
    thread = rpc.result("thread/start")["thread"]["id"]
    assert rpc.call("turn/interrupt", {"threadId": thread})["error"]["message"] == (
        "no active turn to interrupt")
    rpc.child.send({"method": "someNotification"})  # accepted without an answer
    assert rpc.child.proc.stdin is not None
    rpc.child.proc.stdin.write(b"not json\n[1, 2]\n")  # junk: logged, never answered
    listing = rpc.request("thread/loaded/list")
    rpc.write(listing)
    assert rpc.until(lambda m: answers(m, listing)) == [  # and nothing came before this answer
        {"id": listing["id"], "result": {"data": [thread], "nextCursor": None}}]

    # stdin EOF ends the process with 0, even mid-turn.
    rpc.write(rpc.request("turn/start", {"threadId": thread, "input": [
        {"type": "text", "text": "a long turn"}]}))
    rpc.until(is_note("item/agentMessage/delta"))
    rpc.child.close_stdin()
    assert rpc.child.exit_code() == 0
    assert "Failed to deserialize" in rpc.child.stderr_text()

    # SIGTERM: exit 0 as well.
    other = app_server()
    other.handshake()
    assert other.child.terminate() == 0

    # No subcommand: a usage error, as codex gives one for an unknown subcommand.
    bad = subprocess.run([sys.executable, str(DEMO), "serve"], capture_output=True, text=True,
                         timeout=READ_TIMEOUT, check=False)
    assert bad.returncode == 2 and "unrecognized subcommand 'serve'" in bad.stderr
