"""Real processes for tests that need them: the proxy as a subprocess, and redis-server.

Readiness is detected from the process itself (the proxy's "serving on" line, redis's PING),
never from a fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from .conftest import API_KEY, ROOT, pid_alive


def source_env() -> dict[str, str]:
    """The environment minus PROXY_* settings, with this checkout first on PYTHONPATH: a
    subprocess runs the code under test, not whatever copy of quartproxy is installed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(ROOT), os.environ.get("PYTHONPATH", "")) if part)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _read_until(stream: trio.abc.ReceiveStream, marker: bytes, into: bytearray) -> None:
    while marker not in into:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise RuntimeError(f"process ended before printing {marker!r}: {bytes(into)!r}")
        into += chunk


class ServerProcess:
    """`python -m quartproxy serve` on a free loopback port, with the given env."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.tmp = tmp
        self.pid_dir = tmp / f"pids-{self.port}"
        self.pid_dir.mkdir(parents=True)
        self.env = {
            **source_env(),
            "PROXY_API_KEY": API_KEY,
            "PORT": str(self.port),
            "CODEX_HOME": str(tmp / "codex-home"),
            "PROXY_CODEX_WORKDIR": str(tmp / "work"),
            "TOKEN_LOG_PATH": str(tmp / f"usage-{self.port}.ndjson"),
            "PROXY_SSE_KEEPALIVE_MS": "0",
            "FAKE_CODEX_PID_DIR": str(self.pid_dir),
            **env,
        }
        self.process: trio.Process | None = None
        self.stderr = bytearray()
        self.stdout = bytearray()

    async def start(self, nursery: trio.Nursery) -> ServerProcess:
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "quartproxy", "serve"], env=self.env, cwd=str(self.tmp),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self.process.stderr is not None and self.process.stdout is not None
        try:
            with trio.fail_after(300):  # hang guard: a loaded machine imports slowly
                await _read_until(self.process.stderr, b"quartproxy: serving on", self.stderr)
        except RuntimeError as exc:
            code = await self.process.wait()
            raise RuntimeError(f"{exc} (exit code {code})") from None
        nursery.start_soon(self._drain, self.process.stderr, self.stderr)
        nursery.start_soon(self._drain, self.process.stdout, self.stdout)
        return self

    @staticmethod
    async def _drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        try:
            while chunk := await stream.receive_some(65536):
                into += chunk
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    def child_pids(self) -> list[int]:
        return sorted(int(p.name) for p in self.pid_dir.iterdir() if p.name.isdigit())

    def kill_orphans(self) -> None:
        """After a SIGKILL the server could not end its children: the test does it."""
        for pid in self.child_pids():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI (.ci/run installs it)")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    return path


class RedisServer:
    def __init__(self, tmp: Path, port: int | None = None) -> None:
        self.port = port or free_port()  # a port: a restart of an earlier server (no data)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.tmp = tmp
        self.process: trio.Process | None = None

    async def start(self) -> RedisServer:
        binary = redis_server_binary()
        self.process = await trio.lowlevel.open_process(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        with trio.fail_after(60):
            # Another process's readiness: nothing to wait on but its answer to PING.
            while not await self.ping():  # noqa: ASYNC110
                await trio.sleep(0.02)
        return self

    async def ping(self) -> bool:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        except OSError:
            return False
        async with stream:
            await stream.send_all(b"PING\r\n")
            reply = bytearray()
            try:
                with trio.fail_after(2):
                    await _read_until(stream, b"\r\n", reply)
            except (RuntimeError, trio.TooSlowError):
                return False
            return reply.startswith(b"+PONG")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL: gone at once, with whatever it held in memory."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def fake_env(fast_fake: Path, **extra: Any) -> dict[str, str]:
    env = {"CODEX_BIN": str(fast_fake), "PROXY_BACKEND": "proto"}
    env.update({key: str(value) for key, value in extra.items()})
    return env
