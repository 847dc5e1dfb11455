"""Shared test harness: the real app served by Hypercorn on loopback, real fake-codex children.

Every proxy a test starts records the PIDs of the children it spawned (the fake writes them to
``FAKE_CODEX_PID_DIR``); when the test ends, the server is cancelled and the harness asserts that
every one of those children is gone — reaped, not a zombie — so a leaked child fails the test
that leaked it.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from quartproxy.app import ProxyApp
from quartproxy.config import Settings
from quartproxy.lifecycle import Lifecycle
from quartproxy.server import serve

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FAKE_CODEX = FIXTURES / "fake_codex.py"
FAKE_APP_SERVER = FIXTURES / "fake_app_server.py"
API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def repeat_count(full: int) -> int:
    """How many times a repeat-for-determinism loop runs.

    Once in the default gate (the behaviour is proved by one pass; repeating it only hunts for
    rare races). ``nox -s stress`` sets ``QUARTPROXY_REPEAT=full`` for the full ``full`` passes;
    a number sets the count for every loop. Tests that use it carry the ``slow`` marker.
    """
    value = os.environ.get("QUARTPROXY_REPEAT", "").strip().lower()
    if not value:
        return 1
    if value == "full":
        return full
    return max(1, int(value))


def pid_alive(pid: int) -> bool:
    """True while the process exists, zombies included (kill(0) succeeds on a zombie)."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


@dataclass
class Proxy:
    base_url: str
    app: ProxyApp
    settings: Settings
    lifecycle: Lifecycle
    pid_dir: Path

    @property
    def state(self) -> Any:
        return self.app.state

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        kwargs.setdefault("timeout", 120)  # a hang guard, not a speed requirement
        return httpx.AsyncClient(base_url=self.base_url, **kwargs)

    def pids(self) -> list[int]:
        return sorted(int(p.name) for p in self.pid_dir.iterdir() if p.name.isdigit())

    async def wait_ready(self, workers: int = 1) -> None:
        """App-server backend: wait until ``workers`` workers accept turns."""
        backend = self.state.backend
        with trio.fail_after(60):
            await backend.ready_count.wait_value(lambda n: n >= workers)

    async def wait_idle(self, timeout: float = 60) -> None:
        """Wait until every child this proxy started has been reaped."""
        with trio.fail_after(timeout):
            await self.state.service.running.wait_value(0)
        alive = [pid for pid in self.pids() if pid_alive(pid)]
        assert not alive, f"children still alive after reaping: {alive}"


def chat_body(prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "codex-5", "messages": [{"role": "user", "content": prompt}]}
    body.update(extra)
    return body


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "api_key": API_KEY,
        "codex_bin": str(FAKE_CODEX),
        "codex_home": tmp_path / "codex-home",
        "codex_workdir": tmp_path / "work",
        "token_log_path": tmp_path / "usage.ndjson",
        "proto_log_path": tmp_path / "proto.ndjson",
        "sse_keepalive_ms": 0,
        "shutdown_grace_ms": 2000,
        "backend": "proto",
        "child_kill_grace_ms": 2000,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture(scope="session")
def fast_fake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fixtures/fake_codex.py with this interpreter in its shebang.

    Going through ``/usr/bin/env python3`` costs a version-manager shim on some machines (about
    0.1 s per spawn); the tests spawn hundreds of children, the behaviour is identical.
    """
    path = tmp_path_factory.mktemp("bin") / "codex"
    source = FAKE_CODEX.read_text().split("\n", 1)[1]
    path.write_text(f"#!{sys.executable}\n{source}")
    path.chmod(0o755)
    return path


def _with_shebang(source: Path, target: Path) -> Path:
    text = source.read_text().split("\n", 1)[1]
    target.write_text(f"#!{sys.executable}\n{text}")
    target.chmod(0o755)
    return target


@pytest.fixture(scope="session")
def fast_fake_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fixtures/fake_app_server.py with this interpreter in its shebang (see ``fast_fake``)."""
    return _with_shebang(FAKE_APP_SERVER, tmp_path_factory.mktemp("bin") / "codex")


@pytest.fixture
async def start_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_fake: Path, fast_fake_app: Path
) -> AsyncIterator[StartProxy]:
    pid_root = tmp_path / "pids"
    pid_root.mkdir()
    started: list[Proxy] = []
    async with trio.open_nursery() as nursery:

        async def start(child_env: dict[str, str] | None = None, **overrides: Any) -> Proxy:
            pid_dir = pid_root / str(len(started))
            pid_dir.mkdir()
            monkeypatch.setenv("FAKE_CODEX_PID_DIR", str(pid_dir))
            for key, value in (child_env or {}).items():
                monkeypatch.setenv(key, value)
            app_server = overrides.get("backend") == "app-server"
            overrides.setdefault("codex_bin", str(fast_fake_app if app_server else fast_fake))
            settings = make_settings(tmp_path, **overrides)
            lifecycle = Lifecycle()
            holder: list[ProxyApp] = []
            binds = await nursery.start(
                partial(
                    serve, settings, lifecycle=lifecycle, handle_signals=False,
                    app_ready=holder.append,
                )
            )
            proxy = Proxy(binds[0], holder[0], settings, lifecycle, pid_dir)
            started.append(proxy)
            return proxy

        yield start
        nursery.cancel_scope.cancel()
    leaked = [pid for proxy in started for pid in proxy.pids() if pid_alive(pid)]
    assert not leaked, f"children left behind: {leaked}"


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> Proxy:
    return await start_proxy()


async def read_stream(client: httpx.AsyncClient, path: str, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> tuple[httpx.Response, bytes]:
    """POST and return the response with its raw body bytes (as sent on the wire)."""
    async with client.stream("POST", path, json=body, headers={**AUTH, **(headers or {})}) as resp:
        raw = b"".join([chunk async for chunk in resp.aiter_raw()])
    return resp, raw
