"""The test doubles must behave like the real ``codex proto`` child they replace.

Every proxy test that uses ``fixtures/fake_codex.py`` or the ``--demo`` backend trusts that
these programs speak the protocol the way the real binary does (see ``fixtures/captures/``).
If they drift, proxy tests keep passing against a fiction, so the doubles are checked here
directly, line by line, against the recorded captures where a capture exists.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
