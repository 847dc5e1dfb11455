"""The codex child process: how it is started, and how it is always ended.

Start: argv is ``proto`` plus ``-c key=<TOML value>`` overrides built only from settings and
whitelisted request values; the environment is the server's minus every ``PROXY_*`` variable
(the child runs shell commands and must not see the proxy's keys).

End: real codex never exits by itself — not after ``task_complete``, not on stdin EOF — so the
proxy always ends it: close stdin, SIGTERM, SIGKILL after the grace, then reap. :func:`end` is
written to run under a shield so a cancelled request still reaps its child.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import trio

from .config import Settings

DEMO_BACKEND = Path(__file__).with_name("demo_backend.py")
STDERR_TAIL_BYTES = 8192


class SpawnError(Exception):
    """The child could not be started; the message says what to set."""


def toml_string(value: str) -> str:
    """A TOML basic string: the only way any value reaches codex's ``-c`` parser."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything needed to start one child; built per request, spawned once."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


def resolve_executable(settings: Settings) -> list[str]:
    """The program part of argv, or :class:`SpawnError` saying what to configure."""
    if settings.demo:
        return [sys.executable, str(DEMO_BACKEND)]
    value = settings.codex_bin
    if os.sep in value:
        path = Path(value)
        if not path.is_absolute():
            path = Path.cwd() / path
    else:
        found = shutil.which(value)
        if found is None:
            raise SpawnError(
                f"The Codex CLI ({value!r}) was not found on PATH. Install @openai/codex or set "
                "CODEX_BIN to the codex executable (or start the server with --demo)."
            )
        path = Path(found)
    if not path.is_file():
        raise SpawnError(
            f"CODEX_BIN points to {value!r}, which does not exist. Set CODEX_BIN to the codex "
            "executable."
        )
    if not os.access(path, os.X_OK):
        raise SpawnError(
            f"CODEX_BIN points to {value!r}, which is not executable. Fix its permissions "
            "(chmod +x) or set CODEX_BIN to the codex executable."
        )
    return [str(path)]


def build_argv(
    settings: Settings, program: list[str], effective_model: str, effort: str | None
) -> list[str]:
    overrides = {
        "sandbox_mode": toml_string(settings.sandbox_mode),
        "model": toml_string(effective_model),
        "approval_policy": toml_string("never"),
        "project_doc_max_bytes": "0",
        "history.persistence": toml_string("none"),
        "tools.web_search": "false",
    }
    if effort is not None:
        overrides["model_reasoning_effort"] = toml_string(effort)
    if settings.force_provider:
        overrides["model_provider"] = toml_string(settings.force_provider)
    argv = [*program, "proto"]
    for key, value in overrides.items():
        argv += ["-c", f"{key}={value}"]
    return argv


def child_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    source = os.environ if base is None else base
    env = {key: value for key, value in source.items() if not key.startswith("PROXY_")}
    env["CODEX_HOME"] = str(settings.codex_home.resolve())
    return env


def prepare_dirs(settings: Settings) -> None:
    """Create CODEX_HOME and the workdir once at start (readiness reports if this failed)."""
    for path in (settings.codex_home, settings.codex_workdir):
        path.mkdir(parents=True, exist_ok=True)


async def spawn(launch: Launch) -> trio.Process:
    try:
        return await trio.lowlevel.open_process(
            launch.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=launch.env,
            cwd=str(launch.cwd),
            start_new_session=True,
        )
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.EPERM):
            raise SpawnError(
                f"Could not start the Codex CLI ({launch.argv[0]!r}): {exc.strerror}. Set "
                "CODEX_BIN to an executable codex binary."
            ) from exc
        raise SpawnError(f"Could not start the Codex CLI: {exc.strerror or exc}.") from exc


@dataclass(slots=True)
class ExitInfo:
    returncode: int | None
    cause: str  # exited | sigterm | sigkill


async def end(process: trio.Process, grace_s: float) -> ExitInfo:
    """close stdin -> SIGTERM -> SIGKILL after ``grace_s`` -> reap. Call under a shield."""
    if process.stdin is not None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await process.stdin.aclose()
    if process.returncode is not None:
        await process.wait()
        return ExitInfo(process.returncode, "exited")
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    cause = "sigterm"
    with trio.move_on_after(grace_s):
        await process.wait()
    if process.returncode is None:
        cause = "sigkill"
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    if process.returncode is not None and process.returncode >= 0:
        cause = "exited"
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            await stream.aclose()
    return ExitInfo(process.returncode, cause)


class StderrTail:
    """Keeps the last bytes of the child's stderr for diagnostics; never shown to clients."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self._chunks.append(data)
        self._size += len(data)
        while self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        data = b"".join(self._chunks)[-self._limit :]
        return data.decode("utf-8", "replace")

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        """Read stderr to EOF: a full pipe would block the child."""
        try:
            while chunk := await stream.receive_some(65536):
                self.add(bytes(chunk))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
