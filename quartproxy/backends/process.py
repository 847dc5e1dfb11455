"""Codex processes: which program, with which environment, and how it is always ended.

Shared by both backends: the proto backend starts one process per turn, the app-server backend
a few long-lived workers. The rules are the same for both:

* argv carries ``-c key=<TOML literal>`` overrides built from settings and whitelisted values
  only (:func:`toml_string` is the one way a string reaches codex's ``-c`` parser);
* the environment is the server's minus every ``PROXY_*`` variable (codex runs shell commands
  and must not see the proxy's keys), plus ``CODEX_HOME``;
* each process starts in a session of its own, and ending it signals the whole *process group*:
  the npm ``codex`` command is a node launcher that starts the native binary, and codex's tools
  start processes of their own, so signalling only the leader would orphan them. Close stdin,
  SIGTERM the group, SIGKILL it after the grace, and sweep the group once more before the leader
  is reaped (while its zombie still pins the group id, so the sweep cannot hit a stranger).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from ..config import Settings

DEMO_BACKEND = Path(__file__).resolve().parent.parent / "demo_backend.py"
STDERR_TAIL_BYTES = 8192
VERSION_TIMEOUT_S = 20.0


class SpawnError(Exception):
    """The codex program could not be started; the message says what to set."""


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


def child_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    source = os.environ if base is None else base
    env = {key: value for key, value in source.items() if not key.startswith("PROXY_")}
    env["CODEX_HOME"] = str(settings.codex_home.resolve())
    env.setdefault("RUST_LOG", "error")
    return env


def prepare_dirs(settings: Settings) -> None:
    """Create CODEX_HOME and the workdir once at start (readiness reports if this failed)."""
    for path in (settings.codex_home, settings.codex_workdir):
        path.mkdir(parents=True, exist_ok=True)


def directory_problems(settings: Settings) -> list[str]:
    problems = []
    for name, path in (("CODEX_HOME", settings.codex_home),
                       ("PROXY_CODEX_WORKDIR", settings.codex_workdir)):
        if not (path.is_dir() and os.access(path, os.W_OK)):
            problems.append(f"{name} ({path}) is not a writable directory")
    return problems


async def spawn(argv: list[str], *, env: dict[str, str], cwd: Path) -> trio.Process:
    """Start a codex process with three pipes, in a session (and process group) of its own."""
    try:
        return await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(cwd),
            start_new_session=True,
        )
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.EPERM):
            raise SpawnError(
                f"Could not start the Codex CLI ({argv[0]!r}): {exc.strerror}. Set "
                "CODEX_BIN to an executable codex binary."
            ) from exc
        raise SpawnError(f"Could not start the Codex CLI: {exc.strerror or exc}.") from exc


ExitCause = Literal["exited", "sigterm", "sigkill"]


@dataclass(slots=True)
class ExitInfo:
    returncode: int | None
    cause: ExitCause


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _has_exited(pidfd: int | None, process: trio.Process) -> bool:
    if pidfd is None:
        return process.poll() is not None
    # A pidfd turns readable when the process exits; it does not reap it.
    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)


async def end(process: trio.Process, grace_s: float, *, close_stdin: bool = True) -> ExitInfo:
    """close stdin -> SIGTERM the group -> SIGKILL it after ``grace_s`` -> sweep -> reap.

    Call under a shield. Never raises for a process that is already gone.
    """
    if close_stdin and process.stdin is not None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await process.stdin.aclose()
    pidfd: int | None
    try:
        pidfd = os.pidfd_open(process.pid)
    except (OSError, AttributeError):
        pidfd = None  # already reaped (or no pidfd here): nothing left to signal safely
    cause: ExitCause = "exited"
    try:
        if pidfd is not None:
            if not _has_exited(pidfd, process):
                _signal_group(process.pid, signal.SIGTERM)
                cause = "sigterm"
                with trio.move_on_after(grace_s):
                    await trio.lowlevel.wait_readable(pidfd)
                if not _has_exited(pidfd, process):
                    cause = "sigkill"
                    _signal_group(process.pid, signal.SIGKILL)
                    await trio.lowlevel.wait_readable(pidfd)
            # The leader is a zombie now, so its pid (= the group id) cannot be reused: sweep
            # whatever it left running in its group (codex's tools, a native binary under the
            # npm launcher).
            _signal_group(process.pid, signal.SIGKILL)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    returncode = await process.wait()
    if returncode >= 0:
        cause = "exited"
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(trio.ClosedResourceError, OSError):
                await stream.aclose()
    return ExitInfo(returncode, cause)


class StderrTail:
    """Keeps the last bytes of a process's stderr for diagnostics; never shown to clients."""

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
        """Read stderr to EOF: a full pipe would block the process."""
        try:
            while chunk := await stream.receive_some(65536):
                self.add(bytes(chunk))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass


async def codex_version(program: list[str], env: dict[str, str], cwd: Path) -> str:
    """``codex --version``'s output, read once at start-up (first line, stripped)."""
    try:
        with trio.fail_after(VERSION_TIMEOUT_S):
            result = await trio.run_process(
                [*program, "--version"], capture_stdout=True, capture_stderr=True, check=False,
                env=env, cwd=str(cwd), start_new_session=True,
            )
    except trio.TooSlowError:
        raise SpawnError(f"`{program[-1]} --version` did not answer within "
                         f"{VERSION_TIMEOUT_S:.0f} s.") from None
    except OSError as exc:
        raise SpawnError(f"Could not run the Codex CLI ({program[-1]!r}): "
                         f"{exc.strerror or exc}. Set CODEX_BIN to an executable codex "
                         "binary.") from exc
    text = result.stdout.decode("utf-8", "replace").strip() or \
        result.stderr.decode("utf-8", "replace").strip()
    return text.splitlines()[0].strip() if text else ""
