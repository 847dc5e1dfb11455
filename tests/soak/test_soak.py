"""Soak: the server as its own process, abused for a few minutes; what must stay true after.

Run with ``nox -s soak`` (it sets ``QUARTPROXY_SOAK=1`` and shows the figures each check
prints); the default test run skips this module. Sizes: ``QUARTPROXY_SOAK_DISCONNECTS``
(default 400), ``QUARTPROXY_SOAK_FUZZ`` (default 600); ``QUARTPROXY_SOAK_SEED`` replays a run.

1. Random disconnects: clients that reset the TCP connection at random moments — mid-headers,
   mid-body, right after the request, mid-stream, mid-wait for a non-stream answer — while
   others complete. Afterwards: no child process and no zombie, the running-turns gauge at 0,
   the server's file descriptors back to their starting count within seconds, and exactly one
   usage record per turn (every child that received a prompt has one, none has two).
2. Fuzzed requests: random JSON shapes, wrong types in every field, invalid UTF-8, truncated
   bodies, huge and odd headers, odd methods and paths. Every well-formed HTTP request is
   answered with an OpenAI error envelope or a 2xx; nothing gets a 5xx; nothing hangs. Requests
   that are not valid HTTP/1.1 may be refused by the HTTP server itself (a bare 4xx) or closed.
3. Redis restarted under load: a stream limit of 4 shared by two replicas, 4 long streams
   open, redis-server restarted without its data; 4 more streams are refused (429), so the
   streams really open on the two replicas never exceed the limit.

Every wait is a poll of another process's state under a hang guard; figures are printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("QUARTPROXY_SOAK") != "1":
    pytest.skip("soak checks run in `nox -s soak` (set QUARTPROXY_SOAK=1 to run them directly)",
                allow_module_level=True)

import httpx
import orjson
import trio

from quartproxy import contract

from ..conftest import API_KEY, AUTH, chat_body, pid_alive
from ..servers import RedisServer, ServerProcess, fake_env
from . import rawhttp
from .rawhttp import Header, request_bytes

DISCONNECTS = int(os.environ.get("QUARTPROXY_SOAK_DISCONNECTS", "400"))
FUZZ = int(os.environ.get("QUARTPROXY_SOAK_FUZZ", "600"))
SEED = int(os.environ.get("QUARTPROXY_SOAK_SEED", str(random.SystemRandom().randrange(1 << 30))))
CHAT = b"/v1/chat/completions"
BEARER: Header = (b"Authorization", b"Bearer " + API_KEY.encode())
JSON_TYPE: Header = (b"Content-Type", b"application/json")


def say(line: str) -> None:
    print(f"[soak] {line}", flush=True)


# ---------------------------------------------------------------------------- the server process


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> Counter[str]:
    """The server's open descriptors by kind (socket, pipe, anon_inode:…, file)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds[target.split(":[")[0] if ":[" in target else "file"] += 1
    return kinds


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process whose parent is ``pid``; state ``Z`` is a zombie."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(entry), fields[0]))
    return found


async def metric(server: ServerProcess, name: str) -> float:
    answer = await rawhttp.send_and_read(server.port, request_bytes(b"GET", b"/metrics", []))
    assert answer.status == 200, answer
    match = re.search(rb"^" + name.encode() + rb" (\S+)$", answer.body, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


def usage_records(server: ServerProcess) -> list[dict[str, Any]]:
    path = Path(server.env["TOKEN_LOG_PATH"])
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # being appended
    return records


@asynccontextmanager
async def soak_server(tmp_path: Path, fast_fake: Path, **env: Any) -> AsyncIterator[ServerProcess]:
    async with trio.open_nursery() as nursery:
        server = ServerProcess(tmp_path, fake_env(fast_fake, **env))
        try:
            await server.start(nursery)
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()
                server.kill_orphans()
            nursery.cancel_scope.cancel()


async def poll(what: str, ready: Callable[[], Any], guard: float) -> float:
    """Wait until ``ready()`` (sync or async) is true; the seconds it took. ``guard`` is a hang
    guard: past it the check fails, naming what never happened."""
    started = time.monotonic()
    try:
        with trio.fail_after(guard):
            while True:
                value = ready()
                if hasattr(value, "__await__"):
                    value = await value
                if value:
                    return time.monotonic() - started
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"{what}: not within {guard:.0f} s") from None


# ---------------------------------------------------------------------------- 1. disconnects

ANY_SCENARIO = [
    "SCENARIO=slow DELTAS=30 DELAY_MS=20",
    "SCENARIO=stream_hang",
    "SCENARIO=hang",
    "SCENARIO=normal",
    "SCENARIO=big DELTAS=3000",
    "SCENARIO=tool_blocks PAUSE_MS=400",
]
ANSWERED_SCENARIO = ["SCENARIO=normal", "SCENARIO=slow DELTAS=10 DELAY_MS=10",
                     "SCENARIO=big DELTAS=2000"]


@dataclass
class DisconnectStats:
    modes: Counter[str] = field(default_factory=Counter)
    completed_ok: int = 0
    failures: list[str] = field(default_factory=list)


async def one_disconnect(port: int, index: int, rng: random.Random, stats: DisconnectStats) -> None:
    stream_mode = rng.random() < 0.6
    mode = rng.choices(["mid_request", "after_send", "mid_answer", "complete"],
                       weights=[1, 3, 4, 2])[0]
    scenario = rng.choice(ANSWERED_SCENARIO if mode == "complete" else ANY_SCENARIO)
    body = chat_body(f"{scenario} soak-id={index}", stream=stream_mode,
                     stream_options={"include_usage": True} if stream_mode else None)
    if not stream_mode:
        body.pop("stream_options")
    data = request_bytes(b"POST", CHAT, [BEARER, JSON_TYPE,
                                         (b"X-Request-Id", f"soak-{index}".encode())],
                         orjson.dumps(body))
    stats.modes[f"{mode}/{'stream' if stream_mode else 'json'}"] += 1
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    if mode == "mid_request":  # somewhere in the headers or the body
        await stream.send_all(data[: rng.randrange(1, len(data))])
        await trio.sleep(rng.uniform(0, 0.05))
        await rawhttp.reset(stream)
    elif mode == "after_send":  # before or after the child starts
        await stream.send_all(data)
        await trio.sleep(rng.uniform(0, 0.4))
        await rawhttp.reset(stream)
    elif mode == "mid_answer":  # some bytes of the answer (or none yet), then gone
        await stream.send_all(data)
        want, got = rng.randrange(1, 8000), 0
        with trio.move_on_after(rng.uniform(0.05, 1.5)):
            while got < want:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                got += len(chunk)
        await rawhttp.reset(stream)
    else:
        async with stream:
            await stream.send_all(data)
            with trio.fail_after(120):  # hang guard
                answer = await rawhttp.read_answer(stream)
        if answer.status != 200 or not answer.complete:
            stats.failures.append(f"soak-{index}: {answer.status} {answer.body[:200]!r}")
        elif stream_mode:
            problems = contract.check_chat_stream(answer.body, include_usage=True)
            if problems:
                stats.failures.append(f"soak-{index}: {problems[:3]}")
            else:
                stats.completed_ok += 1
        else:
            problems = contract.check_chat_json(answer.body)
            if problems:
                stats.failures.append(f"soak-{index}: {problems[:3]}")
            else:
                stats.completed_ok += 1


def child_requests(record_dir: Path) -> dict[int, str]:
    """pid -> the soak request id each child received in its prompt (children that read one)."""
    found: dict[int, str] = {}
    for path in record_dir.glob("*.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for line in doc.get("stdin_lines", []):
            match = re.search(r"soak-id=(\d+)", line)
            if match:
                found[int(path.stem)] = f"soak-{match.group(1)}"
    return found


async def test_random_disconnects_leave_nothing_behind(tmp_path: Path, fast_fake: Path) -> None:
    rng = random.Random(SEED)
    record_dir = tmp_path / "child-records"
    record_dir.mkdir()
    env = {"PROXY_SSE_MAX_CONCURRENCY": 0, "PROXY_MAX_CONCURRENCY": 0,
           "PROXY_TEST_ENDPOINTS": "true", "FAKE_CODEX_RECORD": str(record_dir)}
    async with soak_server(tmp_path, fast_fake, **env) as server:
        assert server.process is not None
        pid = server.process.pid
        # Warm up (lazy imports, thread pools, the usage writer), then take the baseline.
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            for stream in (False, True):
                resp = await client.post("/v1/chat/completions", headers=AUTH,
                                         json=chat_body("warm-up", stream=stream))
                assert resp.status_code == 200
        await poll("warm-up turns over", lambda: not children_of(pid), 60)
        await poll("warm-up usage records", lambda: len(usage_records(server)) == 2, 60)
        baseline_fds = fd_count(pid)
        baseline_kinds = fd_kinds(pid)
        stats = DisconnectStats()
        started = time.monotonic()
        limiter = trio.CapacityLimiter(24)

        async def worker(index: int) -> None:
            async with limiter:
                await one_disconnect(server.port, index, random.Random(rng.random()), stats)

        with trio.fail_after(300):  # hang guard for the whole run
            async with trio.open_nursery() as nursery:
                for index in range(DISCONNECTS):
                    nursery.start_soon(worker, index)
        elapsed = time.monotonic() - started
        modes = dict(sorted(stats.modes.items()))
        say(f"disconnects: {DISCONNECTS} requests in {elapsed:.1f} s, seed {SEED}: {modes}")

        async def quiet() -> bool:
            return await metric(server, "quartproxy_turns_running") == 0 and not children_of(pid)

        settle_s = await poll("turns ended and children reaped", quiet, 60)
        children_left = children_of(pid)
        zombies = [p for p, state in children_left if state == "Z"]
        alive = [p for p in server.child_pids() if pid_alive(p)]
        turns_running = await metric(server, "quartproxy_turns_running")
        spawned = len(server.child_pids())
        say(f"disconnects: settled {settle_s:.2f} s after the last client; children spawned "
            f"{spawned}, left {len(children_left)}, zombies {len(zombies)}, pids alive "
            f"{len(alive)}, quartproxy_turns_running {turns_running:g}")
        fds_before = fd_count(pid)
        try:
            fd_s = await poll("server fds back to their starting count",
                              lambda: fd_count(pid) <= baseline_fds, 20)
            fd_note = f"back in {fd_s:.2f} s"
        except AssertionError:
            fd_s = None
            fd_note = "NOT back within 20 s"
        fds_after = fd_count(pid)
        extra = fd_kinds(pid) - baseline_kinds
        say(f"disconnects: fds at start {baseline_fds}, right after settling {fds_before}, "
            f"then {fds_after} ({fd_note}); more than at start: {dict(extra) or 'none'}")
        prompted = child_requests(record_dir)

        def recorded() -> bool:
            ids = {r.get("req_id") for r in usage_records(server)}
            return set(prompted.values()) <= ids

        with contextlib.suppress(AssertionError):  # reported below with the figures
            await poll("a usage record for every child", recorded, 30)
        records = usage_records(server)[2:]  # after the two warm-up records
        per_request = Counter(r["req_id"] for r in records)
        twice = sorted(rid for rid, n in per_request.items() if n > 1)
        missing = sorted(set(prompted.values()) - set(per_request))
        strangers = sorted(rid for rid in per_request if not str(rid).startswith("soak-"))
        outcomes = Counter(r["outcome"] for r in records)
        say(f"disconnects: usage records {len(records)} for {len(prompted)} children that got a "
            f"prompt ({spawned - 2} spawned); duplicates {len(twice)}, children without a "
            f"record {len(missing)}; outcomes {dict(outcomes)}; completed answers "
            f"{stats.completed_ok}, bad answers {len(stats.failures)}")
    assert not stats.failures, stats.failures[:5]
    assert (children_left, zombies, alive, turns_running) == ([], [], [], 0)
    assert not twice and not missing and not strangers, (twice[:5], missing[:5], strangers[:5])
    assert len(records) <= DISCONNECTS
    assert fd_s is not None, f"fd leak: {baseline_fds} at start, {fds_after} after the soak"


# ---------------------------------------------------------------------------- 2. fuzz

FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens",
          "max_completion_tokens", "temperature", "top_p", "n", "stop", "tools", "tool_choice",
          "parallel_tool_calls", "response_format", "user", "reasoning_effort", "prompt",
          "seed", "logprobs", "metadata"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "null", "big", "neg", "unicode", "empty"]
    if depth < 3:
        kinds += ["list", "dict"] * 2
    kind = rng.choice(kinds)
    if kind == "str":
        return "".join(rng.choice("abcXYZ 0123_-/\\\"'\n\t{}[]") for _ in range(rng.randrange(30)))
    if kind == "int":
        return rng.randrange(-5, 100)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "big":
        return rng.choice([2**63, 2**64 + 1, 10**30, 1e308])
    if kind == "neg":
        return rng.choice([-1, -(2**63), -0.5])
    if kind == "unicode":
        return rng.choice(["👋🏽", "\u0000", "\ud7ff", "\u2028", "e\u0301", "日本語", "\x7f"])
    if kind == "empty":
        return rng.choice(["", [], {}])
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [*FIELDS, "role", "content", "type", "text", "x"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def dumps(value: Any, rng: random.Random) -> bytes:
    """JSON of any shape (integers beyond 64 bits included), ASCII-escaped or not."""
    return json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def valid_body(rng: random.Random) -> dict[str, Any]:
    body = chat_body(f"fuzz {rng.randrange(10**6)}")
    if rng.random() < 0.3:
        body.update(stream=True, stream_options={"include_usage": rng.random() < 0.5})
    return body


def mutated_body(rng: random.Random) -> Any:
    body = valid_body(rng)
    for _ in range(rng.randrange(1, 4)):
        action = rng.choice(["set", "delete", "message", "part"])
        if action == "set":
            body[rng.choice(FIELDS)] = random_value(rng)
        elif action == "delete" and body:
            body.pop(rng.choice(list(body)))
        elif action == "message":
            message: dict[str, Any] = {"role": rng.choice(["user", "system", "assistant", "tool",
                                                           "developer", "bogus", 7, None])}
            message[rng.choice(["content", "tool_calls", "tool_call_id", "name", "x"])] = (
                random_value(rng))
            body["messages"] = [message] if rng.random() < 0.5 else random_value(rng)
        else:
            body["messages"] = [{"role": "user", "content": [
                {"type": rng.choice(["text", "image_url", "input_audio", "file", "x", 3]),
                 rng.choice(["text", "image_url", "x"]): random_value(rng)}
                for _ in range(rng.randrange(1, 4))]}]
    return body


@dataclass
class FuzzCase:
    kind: str  # what was sent
    data: bytes
    http_valid: bool  # well-formed HTTP/1.1: the application must answer it
    half_close: bool = False
    chunk: int = 0


def build_case(rng: random.Random) -> FuzzCase:
    path = rng.choice([CHAT, CHAT, b"/v1/completions", b"/v1/responses"])
    headers = [BEARER, JSON_TYPE]
    kind = rng.choice(["random_json", "mutated", "mutated", "invalid_utf8", "truncated",
                       "short_body", "big_header", "too_many_header_bytes", "many_headers",
                       "odd_header_bytes", "content_type", "auth", "chunked", "bad_chunked",
                       "method", "path", "query", "empty", "not_json", "deep"])
    body = dumps(mutated_body(rng), rng)
    if kind == "random_json":
        return FuzzCase(kind, request_bytes(b"POST", path, headers,
                                            dumps(random_value(rng), rng)), True)
    if kind == "mutated":
        return FuzzCase(kind, request_bytes(b"POST", path, headers, body), True,
                        chunk=rng.choice([0, 0, 1, 7]))
    if kind == "invalid_utf8":
        raw = bytearray(orjson.dumps(valid_body(rng)))
        at = raw.index(b"fuzz")
        raw[at:at] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        return FuzzCase(kind, request_bytes(b"POST", path, headers, bytes(raw)), True)
    if kind == "truncated":
        return FuzzCase(kind, request_bytes(b"POST", path, headers,
                                            body[: rng.randrange(len(body))]), True)
    if kind == "short_body":  # fewer bytes than announced, then the client stops sending
        return FuzzCase(kind, request_bytes(b"POST", path, headers, body,
                                            content_length=len(body) + rng.randrange(1, 500)),
                        False, half_close=True)
    if kind == "big_header":  # large but within the server's header limit
        value = b"x" * rng.randrange(1000, 40_000)
        return FuzzCase(kind, request_bytes(b"POST", path, [*headers, (b"X-Junk", value)], body),
                        True)
    if kind == "too_many_header_bytes":
        value = b"y" * rng.randrange(70_000, 200_000)
        return FuzzCase(kind, request_bytes(b"POST", path, [*headers, (b"X-Huge", value)], body),
                        False)
    if kind == "many_headers":
        extra = [(f"X-H{i}".encode(), str(i).encode()) for i in range(rng.randrange(50, 400))]
        return FuzzCase(kind, request_bytes(b"POST", path, [*headers, *extra], body), True)
    if kind == "odd_header_bytes":
        odd = bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(1, 40)))
        name = rng.choice([b"Authorization", b"User-Agent", b"X-Request-Id", b"Origin",
                           b"X-No-Keepalive", b"Content-Type"])
        kept = [h for h in headers if h[0] != name]
        return FuzzCase(kind, request_bytes(b"POST", path, [*kept, (name, b"v" + odd)], body),
                        True)
    if kind == "content_type":
        value = rng.choice([b"text/plain", b"multipart/form-data; boundary=x",
                            b"application/x-www-form-urlencoded", b"", b"application/json; q=\xff"])
        return FuzzCase(kind, request_bytes(b"POST", path, [BEARER, (b"Content-Type", value)],
                                            body), True)
    if kind == "auth":
        value = rng.choice([b"", b"Bearer", b"Bearer ", b"Basic dXNlcjpwYXNz", b"bearer x" * 500,
                            b"Bearer " + API_KEY.encode() + b" extra", b"Token abc"])
        auth = [(b"Authorization", value)] * rng.choice([1, 2])
        return FuzzCase(kind, request_bytes(b"POST", path, [*auth, JSON_TYPE], body), True)
    if kind == "chunked":
        pieces = [body[i : i + 50] for i in range(0, len(body), 50)]
        chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
        return FuzzCase(kind, request_bytes(b"POST", path, [*headers,
                                                            (b"Transfer-Encoding", b"chunked")],
                                            chunked), True)
    if kind == "bad_chunked":
        garbage = rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc\r\n0\r\n\r\n",
                              b"ffffffffffffffffff\r\n"])
        return FuzzCase(kind, request_bytes(b"POST", path, [*headers,
                                                            (b"Transfer-Encoding", b"chunked")],
                                            garbage), False, half_close=True)
    if kind == "method":
        method = rng.choice([b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE"])
        return FuzzCase(kind, request_bytes(method, path, headers, body), True)
    if kind == "path":
        target = rng.choice([b"/v1/chat/completions/extra", b"/v1//chat/completions", b"/v2/x",
                             b"/%ff%fe", b"/v1/models/" + b"a" * 3000, b"/v1/chat/completions%00"])
        return FuzzCase(kind, request_bytes(b"POST", target, headers, body), True)
    if kind == "query":
        query = rng.choice([b"?no_keepalive=%ff", b"?a=" + b"b" * 5000, b"?%zz", b"?&&&=&"])
        return FuzzCase(kind, request_bytes(b"POST", path + query, headers, body), True)
    if kind == "empty":
        return FuzzCase(kind, request_bytes(b"POST", path, headers, b""), True)
    if kind == "not_json":
        junk = rng.choice([b"hello", b"\x00\x01\x02", b"{'a': 1}", b"[1,2", b"NaN", b"1e999",
                           b'{"model": "codex-5", "messages": [' * 50])
        return FuzzCase(kind, request_bytes(b"POST", path, headers, junk), True)
    depth = rng.choice([100, 1000, 5000, 100_000])
    deep = b'{"model":"codex-5","messages":' + b"[" * depth + b'"x"' + b"]" * depth + b"}"
    return FuzzCase("deep", request_bytes(b"POST", path, headers, deep), True)


def is_envelope(body: bytes) -> bool:
    try:
        return not contract.check_error_json(body)
    except Exception:
        return False


@dataclass
class FuzzStats:
    verdicts: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


async def one_fuzz(port: int, case: FuzzCase, stats: FuzzStats) -> None:
    stats.kinds[case.kind] += 1
    try:
        with trio.fail_after(60):  # hang guard
            answer = await rawhttp.send_and_read(port, case.data, half_close=case.half_close,
                                                 chunk=case.chunk)
    except trio.TooSlowError:
        stats.verdicts["hang"] += 1
        stats.failures.append(f"{case.kind}: no answer within 60 s: {case.data[:200]!r}")
        return
    except OSError as exc:  # connection refused: the server is gone
        stats.verdicts["refused"] += 1
        stats.failures.append(f"{case.kind}: cannot connect ({exc}) after {stats.kinds.total()}")
        return
    status = answer.status
    if status is None:
        verdict = "closed without answer"
    else:
        stats.statuses[status] += 1
        if status >= 500:
            verdict = "5xx"
        elif 200 <= status < 300:
            verdict = "2xx"
        elif is_envelope(answer.body):
            verdict = "envelope"
        else:
            verdict = "no envelope"
    stats.verdicts[verdict] += 1
    allowed = {"2xx", "envelope"}
    if not case.http_valid:  # the HTTP server may refuse it itself (a bare 4xx) or hang up
        allowed |= {"closed without answer"}
        if status is not None and 400 <= status < 500:
            allowed.add(verdict)
    if verdict not in allowed:
        stats.failures.append(f"{case.kind}: {verdict} {status} {answer.body[:200]!r} for "
                              f"{case.data[:300]!r}")


async def test_fuzzed_requests_get_envelopes_never_5xx_or_hangs(
    tmp_path: Path, fast_fake: Path
) -> None:
    """Well-formed HTTP first (the application's answers), then malformed HTTP (the HTTP
    server's), so that a failure of the second kind cannot hide the figures of the first."""
    rng = random.Random(SEED + 1)
    cases = [build_case(rng) for _ in range(FUZZ)]
    phases = {"well-formed HTTP": [c for c in cases if c.http_valid],
              "malformed HTTP": [c for c in cases if not c.http_valid]}
    results: dict[str, FuzzStats] = {}
    async with soak_server(tmp_path, fast_fake, PROXY_MAX_BODY_BYTES=2 * 1024 * 1024) as server:
        assert server.process is not None
        for phase, phase_cases in phases.items():
            stats = results[phase] = FuzzStats()
            started = time.monotonic()
            limiter = trio.CapacityLimiter(12)

            async def worker(
                case: FuzzCase, stats: FuzzStats = stats,
                limiter: trio.CapacityLimiter = limiter,
            ) -> None:
                async with limiter:
                    await one_fuzz(server.port, case, stats)

            with trio.fail_after(300):  # hang guard for the whole phase
                async with trio.open_nursery() as nursery:
                    for case in phase_cases:
                        nursery.start_soon(worker, case)
            elapsed = time.monotonic() - started
            try:
                with trio.fail_after(60):  # hang guard
                    health = await rawhttp.send_and_read(
                        server.port, request_bytes(b"GET", b"/healthz", []))
                alive = health.status == 200
            except (OSError, trio.TooSlowError):
                alive = False
            if not alive:
                with trio.move_on_after(30):
                    await server.wait()
            say(f"fuzz, {phase}: {len(phase_cases)} requests in {elapsed:.1f} s, seed {SEED}; "
                f"server {'alive' if alive else f'EXITED with code {server.process.returncode}'}")
            say(f"fuzz, {phase}: verdicts {dict(stats.verdicts)}")
            say(f"fuzz, {phase}: statuses {dict(sorted(stats.statuses.items()))}")
            say(f"fuzz, {phase}: kinds {dict(sorted(stats.kinds.items()))}")
            for failure in stats.failures[:5]:
                say(f"fuzz, {phase}, FAILURE: {failure}")
            if not alive:
                (tmp_path / "server-stderr.txt").write_bytes(bytes(server.stderr))
                say(f"fuzz: the server's stderr is in {tmp_path / 'server-stderr.txt'}")
                break
            await poll("fuzz turns over", lambda: not children_of(server.process.pid), 60)
        traceback = b"Traceback" in server.stderr
        exit_code = server.process.returncode
    assert exit_code is None, f"the server died during the fuzz (exit code {exit_code})"
    for phase, stats in results.items():
        assert not stats.failures, (
            f"{phase}: {len(stats.failures)} bad answers (first: {stats.failures[0]})")
    assert not traceback, "the server logged a traceback"


# ---------------------------------------------------------------------------- 3. Redis restart


async def open_held_stream(
    base_url: str, held: list[int], release: trio.Event, answered: trio.Semaphore
) -> None:
    """A stream_hang stream on ``base_url``, held open until ``release``; its status is kept."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client, client.stream(
        "POST", "/v1/chat/completions", headers=AUTH,
        json=chat_body("SCENARIO=stream_hang", stream=True),
    ) as resp:
        chunks = resp.aiter_raw()
        try:
            if resp.status_code == 200:
                seen = b""
                while b"data:" not in seen:
                    seen += await chunks.__anext__()
            held.append(resp.status_code)
            answered.release()
            await release.wait()
        finally:
            await chunks.aclose()


async def test_redis_restart_keeps_the_shared_limit(tmp_path: Path, fast_fake: Path) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis = await RedisServer(redis_dir).start()
    ttl_ms = 1500
    env = {"PROXY_REDIS_URL": redis.url, "PROXY_SSE_MAX_CONCURRENCY": 4,
           "PROXY_MAX_CONCURRENCY": 0, "PROXY_REDIS_LEASE_TTL_MS": ttl_ms,
           "PROXY_TEST_ENDPOINTS": "true"}
    try:
        async with soak_server(tmp_path / "a", fast_fake, **env) as first, \
                soak_server(tmp_path / "b", fast_fake, **env) as second:
            replicas = [first, second]

            async def conc(server: ServerProcess) -> dict[str, Any]:
                async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                    doc: dict[str, Any] = (await client.get("/__test/conc", headers=AUTH)).json()
                    return doc

            release = trio.Event()
            before: list[int] = []
            after: list[int] = []
            async with trio.open_nursery() as nursery:
                answered = trio.Semaphore(0)
                for i in range(4):
                    nursery.start_soon(open_held_stream, replicas[i % 2].base_url, before,
                                       release, answered)
                for _ in range(4):
                    await answered.acquire()
                shared_before = (await conc(first))["streams"]
                await redis.stop()
                await redis.start()  # same port, no data: every lease is gone
                restarted_at = time.monotonic()

                # Both replicas talk to the new Redis again (out of their fallback) and a lease
                # period has passed, so whatever re-registration exists has happened.
                async def recovered() -> bool:
                    docs = [await conc(server) for server in replicas]
                    return (not any(d["redis_degraded"] for d in docs)
                            and time.monotonic() - restarted_at > 2 * ttl_ms / 1000)

                await poll("replicas back on Redis", recovered, 60)
                shared_after_restart = (await conc(first))["streams"]
                more = trio.Semaphore(0)
                async with trio.open_nursery() as extra:
                    for i in range(4):
                        extra.start_soon(open_held_stream, replicas[i % 2].base_url, after,
                                         release, more)
                    for _ in range(4):
                        await more.acquire()
                    # What is really open: each replica's own count, added up.
                    peak = sum([(await conc(server))["local_streams"] for server in replicas])
                    release.set()
            say(f"redis restart: first 4 streams {before}, shared count {shared_before}; after "
                f"the restart the shared count read {shared_after_restart}; 4 more streams "
                f"{sorted(after)}; streams open on the two replicas together {peak}")
    finally:
        await redis.stop()
    assert before == [200] * 4
    assert sorted(after) == [429] * 4, f"the limit did not hold after a Redis restart: {after}"
    assert peak <= 4
