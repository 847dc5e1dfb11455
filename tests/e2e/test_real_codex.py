"""The proxy in front of the *real* Codex CLI (npm ``@openai/codex`` 0.36.0 and 0.42.0).

Everything is real except the model: a client talks HTTP to ``python -m quartproxy serve``,
which spawns the real ``codex proto`` binary, which calls ``fixtures/fake_responses_upstream.py``
through a ``[model_providers.fake]`` entry in ``$CODEX_HOME/config.toml``. The upstream's usage
numbers (input 1234, cached 7, output 56, reasoning 8) appear nowhere else, so seeing them in a
response proves the proxy took codex's ``token_count`` and did not estimate.

Only the nox session ``e2e`` runs this module: it installs the codex versions into a cache dir
and sets ``E2E_CODEX_ROOT``. Without it the module is skipped at collection time.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CODEX_ROOT = os.environ.get("E2E_CODEX_ROOT")
if not CODEX_ROOT:
    pytest.skip(
        "real-codex e2e tests need E2E_CODEX_ROOT (run them with `nox -s e2e`, which installs "
        "@openai/codex 0.36.0 and 0.42.0)",
        allow_module_level=True,
    )

import httpx  # noqa: E402
import trio  # noqa: E402

from quartproxy.contract import (  # noqa: E402
    assert_valid,
    check_chat_json,
    check_chat_stream,
    check_completion_json,
    check_completion_stream,
    check_error_json,
    collect_stream_content,
    parse_sse,
)

from ..conftest import AUTH, pid_alive, read_stream  # noqa: E402
from ..servers import ServerProcess  # noqa: E402
from .support import (  # noqa: E402
    REAL_USAGE,
    STREAM_MAX_RETRIES,
    UPSTREAM_KEY,
    UPSTREAM_TEXT,
    Upstream,
    chat,
    proc_field,
    tagged,
    usage_records,
    write_codex_home,
)

pytestmark = pytest.mark.trio

VERSIONS = ["0.36.0", "0.42.0"]
FAIL_ATTEMPTS = STREAM_MAX_RETRIES + 1
REQUEST_TIMEOUT = 60


# --------------------------------------------------------------------------- codex binaries

_ELF_MACHINE = {"x86_64": 62, "aarch64": 183, "arm64": 183}


def _is_native_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(20)
    except OSError:
        return False
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return False
    wanted = _ELF_MACHINE.get(platform.machine())
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return wanted is None or machine == wanted


def find_codex_binary(install_dir: Path) -> Path:
    """The native codex executable inside an ``npm install --prefix`` tree.

    <=0.40 ship it as ``bin/codex-<triple>``, 0.42 as ``vendor/<triple>/codex/codex``; both
    folders also hold builds for other platforms, so candidates are checked by their ELF header.
    """
    package = install_dir / "node_modules" / "@openai" / "codex"
    candidates = sorted(
        [*package.glob("bin/codex*"), *package.glob("vendor/*/codex/codex*"),
         *package.glob("vendor/*/bin/codex*")],
        key=lambda p: ("linux" not in str(p), str(p)),
    )
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK) and _is_native_elf(path):
            return path
    raise FileNotFoundError(f"no native codex executable under {package}")


@pytest.fixture(scope="session", params=VERSIONS)
def codex_bin(request: pytest.FixtureRequest) -> tuple[str, Path]:
    version: str = request.param
    assert CODEX_ROOT is not None
    install_dir = Path(CODEX_ROOT) / version
    try:
        binary = find_codex_binary(install_dir)
    except FileNotFoundError as exc:
        pytest.fail(f"codex {version} is not installed under {install_dir} ({exc}); "
                    "`nox -s e2e` installs it")
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and version in out.stdout, (out.stdout, out.stderr)
    return version, binary


# --------------------------------------------------------------------------- fake upstream




# --------------------------------------------------------------------------- processes




def _ppid(pid: int) -> int | None:
    fields = proc_field(pid, "stat").decode(errors="replace").rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 else None


def codex_pids(codex_home: Path, parent: int | None = None) -> set[int]:
    """Live ``codex proto`` processes started with this CODEX_HOME, whoever their parent is
    (or only the children of ``parent``: codex itself forks short-lived helpers, e.g. for
    ``lsb_release``, that look like codex until they exec)."""
    marker = f"CODEX_HOME={codex_home}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = proc_field(pid, "cmdline").split(b"\0")
        if len(argv) < 2 or argv[1] != b"proto":
            continue
        if marker in proc_field(pid, "environ").split(b"\0") and (
            parent is None or _ppid(pid) == parent
        ):
            found.add(pid)
    return found


def zombie_children(parent: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_field(int(entry.name), "stat").decode(errors="replace")
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[0] == "Z" and fields[1] == str(parent):
                found.add(int(entry.name))
    return found


@dataclass
class Stack:
    version: str
    server: ServerProcess
    upstream: Upstream
    codex_home: Path
    client: httpx.AsyncClient
    seen_codex: set[int] = field(default_factory=set)

    @property
    def usage_log(self) -> Path:
        return Path(self.server.env["TOKEN_LOG_PATH"])

    @property
    def proxy_pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def leftovers(self) -> set[int]:
        return codex_pids(self.codex_home) | zombie_children(self.proxy_pid)

    async def wait_no_codex(self, timeout: float = 10) -> None:
        """The proxy ends (and reaps) each child right after its answer; give it a moment."""
        with trio.move_on_after(timeout):
            while self.leftovers():  # noqa: ASYNC110 - polling /proc, nothing to wait on
                await trio.sleep(0.02)
        assert not self.leftovers(), f"codex processes left behind: {self.leftovers()}"

    async def watch(self) -> None:
        """Remember every codex child ever seen, so the end of the test can check them all."""
        while True:
            self.seen_codex |= codex_pids(self.codex_home, parent=self.proxy_pid)
            await trio.sleep(0.01)

    def upstream_requests(self, run: str) -> list[dict[str, Any]]:
        return self.upstream.requests(run)



@pytest.fixture
async def stack(
    codex_bin: tuple[str, Path], upstream: Upstream, tmp_path: Path
) -> AsyncIterator[Stack]:
    version, binary = codex_bin
    codex_home = tmp_path / "codex-home"
    write_codex_home(codex_home, upstream)
    server = ServerProcess(tmp_path, {
        "CODEX_BIN": str(binary),
        "CODEX_HOME": str(codex_home),
        "CODEX_FORCE_PROVIDER": "fake",
        "CODEX_MODEL": "gpt-5",
        "FAKE_UPSTREAM_KEY": UPSTREAM_KEY,
    })
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
            st = Stack(version, server, upstream, codex_home, client)
            nursery.start_soon(st.watch)
            try:
                yield st
                await st.wait_no_codex()
            finally:
                await server.stop()
                nursery.cancel_scope.cancel()
    assert server.process is not None
    stderr = server.stderr.decode(errors="replace")
    assert server.process.returncode == 0, f"proxy exit {server.process.returncode}: {stderr}"
    left = codex_pids(codex_home) | {pid for pid in st.seen_codex if pid_alive(pid)}
    assert not left, f"codex processes alive after the proxy exited: {left}"




def check_upstream_saw(st: Stack, run: str, attempts: int) -> list[dict[str, Any]]:
    """The real codex (this version) made exactly ``attempts`` requests for this call."""
    seen = st.upstream_requests(run)
    assert len(seen) == attempts, seen
    assert len({r["conversation"] for r in seen}) == 1, "one codex conversation per request"
    assert [r["count"] for r in seen] == list(range(1, attempts + 1))
    for r in seen:
        assert r["path"] == "/v1/responses"
        assert r["user_agent"].startswith(f"codex_cli_rs/{st.version} "), r["user_agent"]
        assert r["authorization"] == f"Bearer {UPSTREAM_KEY}"  # env_key reached the child
        assert r["model"] == "gpt-5" and r["stream"] is True
        assert r["user_text"].startswith("[user] Say hello.")
    return seen



# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("legacy", [False, True], ids=["chat", "completions"])
async def test_non_stream_real_text_and_usage(stack: Stack, legacy: bool) -> None:
    run, prompt = tagged("normal")
    with trio.fail_after(30):
        if legacy:
            resp = await stack.client.post("/v1/completions", headers=AUTH,
                                           json={"model": "codex-5", "prompt": prompt})
        else:
            resp = await stack.client.post("/v1/chat/completions", headers=AUTH,
                                           json=chat(prompt))
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    if legacy:
        assert_valid(check_completion_json(doc, model="codex-5"))
        assert doc["choices"][0]["text"] == UPSTREAM_TEXT
    else:
        assert_valid(check_chat_json(doc, model="codex-5"))
        assert doc["choices"][0]["message"]["content"] == UPSTREAM_TEXT
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"] == REAL_USAGE
    check_upstream_saw(stack, run, attempts=1)
    await stack.wait_no_codex()
    records = usage_records(stack.usage_log)
    assert records and records[-1]["counts_source"] == "codex", records


@pytest.mark.parametrize("legacy", [False, True], ids=["chat", "completions"])
async def test_stream_with_usage(stack: Stack, legacy: bool) -> None:
    run, prompt = tagged("normal")
    options = {"stream": True, "stream_options": {"include_usage": True}}
    with trio.fail_after(30):
        if legacy:
            resp, raw = await read_stream(stack.client, "/v1/completions",
                                          {"model": "codex-5", "prompt": prompt, **options})
        else:
            resp, raw = await read_stream(stack.client, "/v1/chat/completions",
                                          chat(prompt, **options))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    check = check_completion_stream if legacy else check_chat_stream
    assert_valid(check(raw, include_usage=True, model="codex-5"))
    text, finish, usage = collect_stream_content(raw)
    assert (text, finish, usage) == (UPSTREAM_TEXT, "stop", REAL_USAGE)
    check_upstream_saw(stack, run, attempts=1)


async def test_drop_once_non_stream_answers_with_the_retry(stack: Stack) -> None:
    run, prompt = tagged("drop_once")
    with trio.fail_after(30):
        resp = await stack.client.post("/v1/chat/completions", headers=AUTH, json=chat(prompt))
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert_valid(check_chat_json(doc))
    assert doc["choices"][0]["message"]["content"] == UPSTREAM_TEXT
    assert doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"] == REAL_USAGE
    check_upstream_saw(stack, run, attempts=2)  # the dropped attempt and codex's retry


async def test_drop_once_stream_continues_through_the_retry(stack: Stack) -> None:
    """The retry repeats the streamed prefix, so the proxy swallows it and goes on cleanly."""
    run, prompt = tagged("drop_once")
    body = chat(prompt, stream=True, stream_options={"include_usage": True})
    with trio.fail_after(30):
        resp, raw = await read_stream(stack.client, "/v1/chat/completions", body)
    assert resp.status_code == 200
    assert_valid(check_chat_stream(raw, include_usage=True))
    assert b"upstream_retry_diverged" not in raw and b'"error"' not in raw
    text, finish, usage = collect_stream_content(raw)
    assert (text, finish, usage) == (UPSTREAM_TEXT, "stop", REAL_USAGE)
    check_upstream_saw(stack, run, attempts=2)


async def test_fail_non_stream_is_502_with_codex_message(stack: Stack) -> None:
    run, prompt = tagged("fail")
    with trio.fail_after(45):
        resp = await stack.client.post("/v1/chat/completions", headers=AUTH, json=chat(prompt))
    assert resp.status_code == 502, resp.text
    doc = resp.json()
    assert_valid(check_error_json(doc))
    error = doc["error"]
    assert (error["type"], error["code"]) == ("server_error", "backend_error")
    # codex's `error` text, first line: the upstream status and its error body.
    assert error["message"].startswith("unexpected status 400 Bad Request: "), error
    assert "rejects this request on purpose" in error["message"]
    assert "retrying" not in error["message"]
    check_upstream_saw(stack, run, attempts=FAIL_ATTEMPTS)


async def test_fail_stream_ends_with_error_frame(stack: Stack) -> None:
    run, prompt = tagged("fail")
    with trio.fail_after(45):
        resp, raw = await read_stream(stack.client, "/v1/chat/completions",
                                      chat(prompt, stream=True))
    assert resp.status_code == 200
    assert_valid(check_chat_stream(raw, include_usage=False))
    frames = [f for f in parse_sse(raw) if f.kind == "data"]
    assert frames[-1].is_done
    error = frames[-2].json["error"]
    assert (error["type"], error["code"]) == ("server_error", "backend_error")
    assert error["message"].startswith("unexpected status 400 Bad Request: ")
    text, finish, _ = collect_stream_content(raw)
    assert text == "" and finish is None
    check_upstream_saw(stack, run, attempts=FAIL_ATTEMPTS)


async def _timed_stream(client: httpx.AsyncClient, body: dict[str, Any],
                        stop_after_content: int | None = None) -> list[tuple[float, str]]:
    """(arrival time, content) for each content delta as it comes off the socket."""
    start = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    buffer = b""
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as resp:
        assert resp.status_code == 200
        async for chunk in resp.aiter_raw():
            buffer += chunk
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                if not block.startswith(b"data: {"):
                    continue
                doc = json.loads(block[len(b"data: "):])
                for choice in doc.get("choices") or []:
                    content = choice.get("delta", {}).get("content")
                    if content:
                        arrivals.append((time.monotonic() - start, content))
            if stop_after_content is not None and len(arrivals) >= stop_after_content:
                break  # leave mid-stream: the response is closed under the server's feet
    return arrivals


async def test_slow_upstream_streams_progressively(stack: Stack) -> None:
    run, prompt = tagged("slow")
    with trio.fail_after(30):
        arrivals = await _timed_stream(stack.client, chat(prompt, stream=True))
    assert "".join(c for _, c in arrivals) == UPSTREAM_TEXT
    pieces = len(UPSTREAM_TEXT.split())
    assert len(arrivals) >= pieces // 2, arrivals  # not buffered into one lump
    # The upstream spaces its deltas 100 ms apart; they must reach the client spread out too.
    spread = arrivals[-1][0] - arrivals[0][0]
    assert spread >= 0.1 * (pieces - 1) * 0.6, arrivals
    check_upstream_saw(stack, run, attempts=1)


async def test_client_disconnect_ends_codex(stack: Stack) -> None:
    _, prompt = tagged("slow")
    with trio.fail_after(30):
        arrivals = await _timed_stream(stack.client, chat(prompt, stream=True),
                                       stop_after_content=2)
    assert len(arrivals) >= 2
    assert stack.seen_codex, "a codex child should have been running"
    await stack.wait_no_codex(timeout=10)


async def test_client_giving_up_on_non_stream_ends_codex(stack: Stack) -> None:
    _, prompt = tagged("slow")
    with trio.move_on_after(0.6) as waited:  # the slow answer needs about 1.2 s
        await stack.client.post("/v1/chat/completions", headers=AUTH, json=chat(prompt))
    assert waited.cancelled_caught
    assert stack.seen_codex, "a codex child should have been running"
    await stack.wait_no_codex(timeout=10)


async def test_sigterm_drains_a_running_stream(stack: Stack) -> None:
    """Shutdown lets the in-flight stream finish (within the drain grace), then exits cleanly."""
    run, prompt = tagged("slow")
    got: list[bytes] = []

    async def consume() -> None:
        _, raw = await read_stream(stack.client, "/v1/chat/completions", chat(
            prompt, stream=True, stream_options={"include_usage": True}))
        got.append(raw)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            while not stack.upstream_requests(run):  # noqa: ASYNC110 - another process
                await trio.sleep(0.02)
            await trio.sleep(0.2)  # a few deltas are out
            stack.server.signal(signal.SIGTERM)
        assert await stack.server.wait() == 0
    assert_valid(check_chat_stream(got[0], include_usage=True))
    assert collect_stream_content(got[0]) == (UPSTREAM_TEXT, "stop", REAL_USAGE)


@pytest.mark.parametrize("effort", ["minimal", "high"])
async def test_reasoning_effort_and_overrides_reach_the_upstream(stack: Stack, effort: str) -> None:
    """``codex-5-<effort>`` becomes ``-c model_reasoning_effort=...``; the quieting overrides
    (``tools.web_search=false`` ...) are accepted by this codex version."""
    run, prompt = tagged("normal")
    with trio.fail_after(30):
        resp = await stack.client.post("/v1/chat/completions", headers=AUTH,
                                       json={**chat(prompt), "model": f"codex-5-{effort}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == f"codex-5-{effort}"
    assert resp.json()["choices"][0]["message"]["content"] == UPSTREAM_TEXT
    (seen,) = check_upstream_saw(stack, run, attempts=1)
    assert seen["reasoning"]["effort"] == effort, seen["reasoning"]
    assert "web_search" not in seen["tools"] and "shell" in seen["tools"], seen["tools"]


async def test_conversation_is_flattened_into_one_prompt(stack: Stack) -> None:
    run, prompt = tagged("normal")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": [{"type": "text", "text": prompt}]},
    ]
    with trio.fail_after(30):
        resp = await stack.client.post("/v1/chat/completions", headers=AUTH,
                                       json={"model": "codex-5", "messages": messages})
    assert resp.status_code == 200, resp.text
    (seen,) = stack.upstream_requests(run)
    assert seen["user_text"] == (
        f"[system] Be brief.\n[user] First question\n[assistant] First answer\n[user] {prompt}"
    ), seen["user_text"]


async def test_concurrent_requests_each_get_their_own_codex(stack: Stack) -> None:
    results: dict[int, tuple[str, int, dict[str, Any]]] = {}

    async def one(i: int, stream: bool) -> None:
        run, prompt = tagged("slow" if i % 2 else "normal")
        if stream:
            _, raw = await read_stream(stack.client, "/v1/chat/completions", chat(
                prompt, stream=True, stream_options={"include_usage": True}))
            assert_valid(check_chat_stream(raw, include_usage=True))
            text, _, usage = collect_stream_content(raw)
        else:
            resp = await stack.client.post("/v1/chat/completions", headers=AUTH,
                                           json=chat(prompt))
            text, usage = resp.json()["choices"][0]["message"]["content"], resp.json()["usage"]
        results[i] = (text, len(stack.upstream_requests(run)), usage or {})

    with trio.fail_after(45):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(one, i, i >= 2)
    assert results == {i: (UPSTREAM_TEXT, 1, REAL_USAGE) for i in range(4)}
    assert len(stack.seen_codex) == 4, "one codex child per request"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_max_tokens_cuts_the_answer_and_ends_codex(stack: Stack, stream: bool) -> None:
    """The cut comes from the proxy (estimator: 4 characters a token), mid-turn."""
    _, prompt = tagged("slow")
    body = chat(prompt, max_tokens=5)
    with trio.fail_after(30):
        if stream:
            _, raw = await read_stream(stack.client, "/v1/chat/completions",
                                       {**body, "stream": True})
            assert_valid(check_chat_stream(raw, include_usage=False))
            text, finish, _ = collect_stream_content(raw)
        else:
            resp = await stack.client.post("/v1/chat/completions", headers=AUTH, json=body)
            assert resp.status_code == 200, resp.text
            assert_valid(check_chat_json(resp.content))
            choice = resp.json()["choices"][0]
            text, finish = choice["message"]["content"], choice["finish_reason"]
            assert resp.json()["usage"]["completion_tokens"] == 5
    assert (text, finish) == (UPSTREAM_TEXT[:20], "length")
    await stack.wait_no_codex()  # ended long before the slow upstream would have finished
