"""Codex processes: which program, with which environment, and how it is always ended.

Shared by both backends: the proto backend starts one process per turn, the app-server backend
a few long-lived workers. The rules are the same for both:

* argv carries ``-c key=<TOML literal>`` overrides built from settings and whitelisted values
  only (:func:`toml_string` is the one way a string reaches codex's ``-c`` parser);
* the environment is the server's minus every ``PROXY_*`` variable (codex runs shell commands
  and must not see the proxy's keys), plus ``CODEX_HOME``;
* each process starts in a session of its own, and ending it signals the whole *process group*:
  the npm ``codex`` command is a node launcher that starts the native binary, and codex's tools
  start processes of their own, so signalling only the leader would orphan them. See
  :func:`end`: close stdin, SIGTERM the group, SIGKILL it after the grace; the rest of the
  group gets the same grace as the leader, and is swept with SIGKILL before the leader is
  reaped (while its zombie still pins the group id, so no signal can reach a stranger).
* the leader is watched through a pidfd opened when it is spawned, before anything could reap
  it: a pid number can be reused once its process is reaped, a pidfd cannot.
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
import weakref
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


# Each spawned process's pidfd, opened at spawn time: end() takes it over (detaching the
# finalizer, so the fd number is closed exactly once); should end() never run, it is closed
# when the process object is collected.
_pidfds: weakref.WeakKeyDictionary[trio.Process, weakref.finalize[[int], trio.Process]] = (
    weakref.WeakKeyDictionary()
)


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None  # not Linux 5.3+ (end() falls back to waiting), or already gone


async def spawn(argv: list[str], *, env: dict[str, str], cwd: Path) -> trio.Process:
    """Start a codex process with three pipes, in a session (and process group) of its own."""
    process = await _open(argv, env=env, cwd=cwd)
    pidfd = _open_pidfd(process.pid)  # nothing has waited for it yet: this is our child
    if pidfd is not None:
        _pidfds[process] = weakref.finalize(process, _close_quietly, pidfd)
    return process


def _take_pidfd(process: trio.Process) -> int | None:
    finalizer = _pidfds.pop(process, None)
    detached = finalizer.detach() if finalizer is not None else None
    return int(detached[2][0]) if detached is not None else None


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


async def _open(argv: list[str], *, env: dict[str, str], cwd: Path) -> trio.Process:
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


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _readable(fd: int) -> bool:
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def _live_group_of(pid: int) -> int | None:
    """The process group of ``pid``, or ``None`` if it is gone or a zombie (dead; only its
    parent's wait is missing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # after "pid (comm) "; comm may hold ")"
    if len(fields) < 3 or fields[0] == b"Z":
        return None
    return int(fields[2])


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``, from /proc ([] where there is none)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit() and _live_group_of(int(name)) == pgid]


async def _wait_for_group(pgid: int) -> None:
    """Until no live process is left in the group. Each member found is waited for through a
    pidfd — checked after it is opened to belong to a member still, as a pid can be reused —
    and then the group is looked at again: members may have started others meanwhile."""
    while members := await trio.to_thread.run_sync(group_members, pgid):
        for pid in members:
            fd = _open_pidfd(pid)
            if fd is None:
                continue
            try:
                if _live_group_of(pid) == pgid:
                    await trio.lowlevel.wait_readable(fd)
            finally:
                trio.lowlevel.notify_closing(fd)
                os.close(fd)


async def end(process: trio.Process, grace_s: float, *, close_stdin: bool = True) -> ExitInfo:
    """Close stdin, SIGTERM the process group, SIGKILL it after ``grace_s``, reap the leader.

    The leader's exit does not end the wait: what else lives in its group (the native binary
    under the npm launcher, a tool codex started) is SIGTERMed too and gets the rest of the
    same grace before the group is SIGKILLed. All group signals are sent while the leader is
    unreaped, so its pid — the group id — cannot belong to anyone else.

    Call under a shield. Never raises for a process that is already gone.
    """
    deadline = trio.current_time() + grace_s
    pidfd = _take_pidfd(process)
    # Looked at before stdin closes, while the leader (usually) still runs: codex leaves on EOF.
    company = pidfd is not None and _may_have_company(process.pid, pidfd)
    if close_stdin and process.stdin is not None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await process.stdin.aclose()
    cause: ExitCause = "exited"
    if pidfd is not None:
        try:
            cause = await _end_group(process.pid, pidfd, deadline, company)
        finally:
            trio.lowlevel.notify_closing(pidfd)
            os.close(pidfd)
    else:
        cause = await _end_without_pidfd(process, deadline)
    returncode = await process.wait()
    if returncode >= 0:
        cause = "exited"
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(trio.ClosedResourceError, OSError):
                await stream.aclose()
    return ExitInfo(returncode, cause)


def _may_have_company(pid: int, pidfd: int) -> bool:
    """Whether the group of a *live* leader may hold other processes: the leader has children.

    Finding the members means reading every process's stat in /proc — about 1.5 ms with a
    hundred processes, more than the rest of a request's work — while the common leader (codex
    itself, or a fake) has no children at all. Processes of the group that are not the leader's
    children (orphans of a child that died) are missed here; they get no grace, but the final
    SIGKILL of the group still reaches them. If the leader exits while it is looked at, its
    children have been handed to init and cannot be seen: then (and for a leader that is already
    gone) the answer is "maybe".
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as children:
                if children.read().strip():
                    return True
    except OSError:
        return True  # no /proc, or no children files in this kernel: look at the whole group
    return _readable(pidfd)


async def _end_group(pgid: int, pidfd: int, deadline: float, company: bool) -> ExitCause:
    cause: ExitCause = "exited"
    if not _readable(pidfd):  # a pidfd turns readable when its process exits; it does not reap
        _signal_group(pgid, signal.SIGTERM)
        cause = "sigterm"
        with trio.move_on_at(deadline):
            await trio.lowlevel.wait_readable(pidfd)
        if not _readable(pidfd):
            cause = "sigkill"
            _signal_group(pgid, signal.SIGKILL)
            await trio.lowlevel.wait_readable(pidfd)
    others = [] if cause == "sigkill" or not company else \
        await trio.to_thread.run_sync(group_members, pgid)
    if others:
        if cause == "exited":  # the leader left on its own; the rest never heard of it
            _signal_group(pgid, signal.SIGTERM)
        with trio.move_on_at(deadline):
            await _wait_for_group(pgid)
    _signal_group(pgid, signal.SIGKILL)  # whatever is left (or was missed), before the reap
    return cause


async def _end_without_pidfd(process: trio.Process, deadline: float) -> ExitCause:
    """Where pidfds do not exist (not Linux 5.3+): the same steps, but the leader is reaped as
    it is waited for, so the final sweep relies on the group id staying in use while a member
    lives; group members get no extra grace (there is no /proc to find them)."""
    cause: ExitCause = "exited"
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGTERM)
        cause = "sigterm"
        with trio.move_on_at(deadline):
            await process.wait()
        if process.returncode is None:
            cause = "sigkill"
            _signal_group(process.pid, signal.SIGKILL)
    _signal_group(process.pid, signal.SIGKILL)
    return cause


class StderrTail:
    """Keeps the last bytes of a process's stderr for diagnostics; never shown to clients."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        # Made at the first write: most processes never write to stderr, and an empty deque
        # is most of a kilobyte per open request.
        self._chunks: deque[bytes] | None = None
        self._size = 0
        self._limit = limit
        self.total = 0

    def add(self, data: bytes) -> None:
        if self._chunks is None:
            self._chunks = deque()
        self.total += len(data)
        self._chunks.append(data)
        self._size += len(data)
        while self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        if self._chunks is None:
            return ""
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
