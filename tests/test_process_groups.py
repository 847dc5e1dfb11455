"""Ending a turn ends every process of its group, through an npm-style launcher.

The npm ``codex`` command is a launcher that starts the native binary, and codex starts tool
processes; signalling only the process the proxy started orphaned the rest (and SIGKILL made
sure of it). ``fixtures/fake_launcher.py`` has that shape: a launcher (the process the proxy
starts) running fake_codex as its child, plus a tool process nobody waits for. Each records its
pid and start time, so "nothing left" is checked against exactly those processes.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
import trio

from quartproxy import contract
from quartproxy.observability import read_usage

from .conftest import AUTH, FIXTURES, Proxy, StartProxy, chat_body
from .servers import ServerProcess

ROLES = ("launcher", "child", "tool")
GONE_GUARD_S = 30  # signals are delivered at once; this only guards against a hang


@pytest.fixture(scope="session")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fixtures/fake_launcher.py with this interpreter in its shebang (see ``fast_fake``)."""
    path = tmp_path_factory.mktemp("launcher") / "codex"
    source = (FIXTURES / "fake_launcher.py").read_text().split("\n", 1)[1]
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)
    return path


def launcher_env(tool: str = "meek", term: str = "exit") -> dict[str, str]:
    return {"FAKE_LAUNCHER_TARGET": str(FIXTURES / "fake_codex.py"),
            "FAKE_LAUNCHER_TOOL": tool, "FAKE_LAUNCHER_TERM": term}


def running(pid: int, start_time: str) -> bool:
    """The recorded process still exists and is not a zombie (a zombie is dead; its parent —
    init, for an orphan — just has not collected it yet). A different start time means the pid
    now belongs to another process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            data = stat.read()
    except OSError:
        return False
    fields = data[data.rfind(")") + 2 :].split()
    return fields[0] != "Z" and fields[19] == start_time


def recorded(pid_dir: Path) -> dict[str, list[tuple[int, str]]]:
    found: dict[str, list[tuple[int, str]]] = {role: [] for role in ROLES}
    for path in pid_dir.iterdir():
        role, _, pid = path.name.partition("-")
        if role in found and pid.isdigit():
            found[role].append((int(pid), path.read_text().strip()))
    return found


def kill_recorded(pid_dir: Path) -> None:
    for entries in recorded(pid_dir).values():
        for pid, start in entries:
            if running(pid, start):
                os.kill(pid, signal.SIGKILL)


async def assert_group_gone(pid_dir: Path, turns: int = 1) -> None:
    processes = recorded(pid_dir)
    assert {role: len(entries) for role, entries in processes.items()} == dict.fromkeys(
        ROLES, turns), processes
    with trio.fail_after(GONE_GUARD_S):
        # Other processes' state: nothing to wait on but a look now and then.
        while left := [f"{role} {pid}" for role, entries in processes.items()  # noqa: ASYNC110
                       for pid, start in entries if running(pid, start)]:
            await trio.sleep(0.02)
    assert not left


async def proxy_with_launcher(start_proxy: StartProxy, launcher: Path, *, tool: str = "meek",
                              term: str = "exit", grace_ms: int = 500) -> Proxy:
    return await start_proxy(child_env=launcher_env(tool, term), codex_bin=str(launcher),
                             child_kill_grace_ms=grace_ms)


@pytest.mark.parametrize("tool", ["meek", "graceful", "stubborn"])
async def test_answered_request_leaves_no_process_of_its_group(
    start_proxy: StartProxy, launcher: Path, tool: str
) -> None:
    proxy = await proxy_with_launcher(start_proxy, launcher, tool=tool)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"].startswith("Hello!")
    await proxy.wait_idle()
    await assert_group_gone(proxy.pid_dir)


@pytest.mark.parametrize("tool", ["meek", "stubborn"])
async def test_disconnect_leaves_no_process_of_its_group(
    start_proxy: StartProxy, launcher: Path, tool: str
) -> None:
    proxy = await proxy_with_launcher(start_proxy, launcher, tool=tool)
    async with proxy.client() as client:
        raw = b""
        async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                 json=chat_body("SCENARIO=stream_hang", stream=True)) as resp:
            async for chunk in resp.aiter_raw():
                raw += chunk
                if b'" is"' in raw:
                    break  # the client leaves mid-answer
    await proxy.wait_idle()
    await assert_group_gone(proxy.pid_dir)


async def test_sigkill_escalation_ends_the_whole_group(
    start_proxy: StartProxy, launcher: Path
) -> None:
    # Neither the launcher nor the tool yields to SIGTERM: only the SIGKILL after the grace
    # ends them, and it must reach both (and the child, long dead of the SIGTERM).
    proxy = await proxy_with_launcher(start_proxy, launcher, tool="stubborn", term="ignore",
                                      grace_ms=300)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
    assert resp.status_code == 200
    await proxy.wait_idle()
    await assert_group_gone(proxy.pid_dir)
    usage = proxy.state.usage_log
    with trio.fail_after(GONE_GUARD_S):
        await usage.written.wait_value(1)
    (record,) = read_usage(proxy.settings.token_log_path)
    assert record["child_exit"] == "sigkill"


async def test_rest_of_the_group_gets_sigterm_when_the_launcher_leaves_first(
    start_proxy: StartProxy, launcher: Path
) -> None:
    # fake_codex dies before task_complete; the launcher exits with it, so the turn ends on
    # EOF with the leader already gone. The tool must still be asked to stop (SIGTERM, which
    # it records), not only killed.
    proxy = await proxy_with_launcher(start_proxy, launcher, tool="graceful", grace_ms=5000)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions", json=chat_body("SCENARIO=no_complete"),
                                 headers=AUTH)
    assert resp.status_code == 200  # the text so far, finish "length"
    await proxy.wait_idle()
    await assert_group_gone(proxy.pid_dir)
    ((tool_pid, _),) = recorded(proxy.pid_dir)["tool"]
    assert (proxy.pid_dir / f"tool-{tool_pid}.term").exists()


async def test_without_pidfds_the_group_is_still_ended(
    start_proxy: StartProxy, launcher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a kernel before 5.3 (or another Unix): ending a turn must neither hang nor leave
    # the group behind. (It used to skip every signal, then wait for a child that stays alive
    # after stdin EOF, as codex does: forever, under a shield.)
    def no_pidfds(pid: int, flags: int = 0) -> NoReturn:
        raise OSError(errno.ENOSYS, "pidfd_open not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfds)
    proxy = await proxy_with_launcher(start_proxy, launcher, tool="meek")
    try:
        async with proxy.client() as client:
            resp = await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        assert resp.status_code == 200
        await proxy.wait_idle()
        await assert_group_gone(proxy.pid_dir)
    finally:
        kill_recorded(proxy.pid_dir)  # a failure must not leave the server stuck on them


async def test_shutdown_leaves_no_process_of_any_group(
    tmp_path: Path, launcher: Path
) -> None:
    streams = 3
    raws = [b""] * streams
    env = {"CODEX_BIN": str(launcher), "PROXY_BACKEND": "proto",
           "PROXY_SHUTDOWN_GRACE_MS": "120000", "PROXY_CHILD_KILL_GRACE_MS": "500",
           **launcher_env(tool="stubborn")}
    async with trio.open_nursery() as nursery:
        server = await ServerProcess(tmp_path, env).start(nursery)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            started = trio.Semaphore(0)

            async def stream(index: int) -> None:
                async with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                                         json=chat_body("SCENARIO=stream_hang",
                                                        stream=True)) as resp:
                    announced = False
                    async for chunk in resp.aiter_raw():
                        raws[index] += chunk
                        if not announced and b'" is"' in raws[index]:
                            announced = True
                            started.release()

            async with trio.open_nursery() as clients:
                for index in range(streams):
                    clients.start_soon(stream, index)
                for _ in range(streams):
                    await started.acquire()
                server.signal(signal.SIGTERM)
                with trio.fail_after(30):
                    while b"SIGTERM received" not in server.stderr:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                server.signal(signal.SIGTERM)  # finalize now
        with trio.fail_after(60):
            code = await server.wait()
        nursery.cancel_scope.cancel()
    assert code == 0
    for raw in raws:
        contract.assert_valid(contract.check_chat_stream(raw, include_usage=False))
        assert contract.collect_stream_content(raw)[1] == "length"
    await assert_group_gone(server.pid_dir, turns=streams)


LEADER_WITH_SLOW_CHILD = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import os, signal, sys, time
def term(*_):
    time.sleep(0.3)  # ok-sleep: a member that needs part of its grace to stop
    open(sys.argv[1], "w").close()
    os._exit(0)
signal.signal(signal.SIGTERM, term)
print("ready", flush=True)
signal.pause()
''', sys.argv[1]], stdout=subprocess.PIPE)
child.stdout.readline()
print("ready", flush=True)
sys.stdin.read()  # until stdin closes; SIGTERM (default action) ends it at once
time.sleep(3600)  # ok-sleep: after EOF, wait to be signalled like codex proto does
"""


async def test_members_of_a_live_leader_get_their_grace(tmp_path: Path) -> None:
    # The leader stops at once on SIGTERM; its child takes a moment. end() must give the child
    # the grace (it writes its marker) rather than SIGKILL the group as soon as the leader
    # is gone: the whole-group look is skipped only for a leader without children.
    from quartproxy.backends.process import end, spawn

    marker = tmp_path / "child-stopped"
    process = await spawn([sys.executable, "-c", LEADER_WITH_SLOW_CHILD, str(marker)],
                          env=dict(os.environ), cwd=tmp_path)
    assert process.stdout is not None
    with trio.fail_after(GONE_GUARD_S):
        assert (await process.stdout.receive_some(64)).startswith(b"ready")
        with trio.CancelScope(shield=True):
            info = await end(process, grace_s=GONE_GUARD_S, close_stdin=False)
    assert info.cause == "sigterm"
    assert marker.exists()
