"""The proto backend: one ``codex proto`` child per turn (Codex CLI 0.8–0.42).

A turn is a process: ``open_turn`` spawns it, writes the one ``user_input`` submission, and
yields a :class:`ProtoTurn` whose iteration is the child's stdout, read and parsed a whole read
at a time (one batch per read, so a burst becomes one socket write). Leaving ``open_turn`` ends
the child — real codex never exits by itself, not after ``task_complete`` and not on stdin EOF —
with :func:`~quartproxy.backends.process.end` under a shield. The stderr drain and the
submission writer are short helpers bounded by the process's life; they run in the backend's
own nursery so that ``open_turn`` holds no nursery across its ``yield`` (an exception from the
request would otherwise come back wrapped in an exception group).
"""

from __future__ import annotations

import contextlib
import logging
import select
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from ...completion import End
from ...config import Settings
from ...events import Event
from ...lifecycle import Lifecycle
from ..base import BackendUnavailable, Capabilities, TurnDiagnostics, TurnRequest
from ..process import (
    SpawnError,
    StderrTail,
    child_env,
    directory_problems,
    end,
    prepare_dirs,
    resolve_executable,
    spawn,
    toml_string,
)
from .codec import LineBuffer, NotAnEvent, parse_line, submission

log = logging.getLogger("quartproxy.proto")

# Once the shutdown deadline has passed, a child that ignores SIGTERM gets this long, not the
# full PROXY_CHILD_KILL_GRACE_MS: the process must exit within grace + 2 s.
SHUTDOWN_KILL_GRACE_S = 0.5
TOOLS_UNSUPPORTED = (
    "Function calling (tools) needs the app-server backend with codex 0.169.0; this server runs "
    "the proto backend."
)

LineHook = Callable[[str, bytes], None]
ARGV_CACHE_SIZE = 64


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


class ProtoTurn:
    """One child's stdout as batches of events."""

    def __init__(self, process: trio.Process, request_id: str, on_line: LineHook | None) -> None:
        self.process = process
        self.request_id = request_id
        self.on_line = on_line
        self.diagnostics = TurnDiagnostics()
        self.end: End | None = None
        self.stderr = StderrTail()
        self.reads = 0  # stdout reads; each yields at most one batch
        self.eof = False
        self._lines = LineBuffer()

    def __aiter__(self) -> AsyncIterator[list[Event]]:
        return self

    async def __anext__(self) -> list[Event]:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            chunk = await stdout.receive_some(65536)
            self.reads += 1
            if not chunk:
                self.eof = True
                if self._lines.partial:
                    log.debug("dropped partial last line", extra={"req_id": self.request_id})
                raise StopAsyncIteration
            events: list[Event] = []
            for line in self._lines.feed(bytes(chunk)):
                if self.on_line is not None:
                    self.on_line(self.request_id, line)
                try:
                    event = parse_line(line)
                except NotAnEvent as exc:
                    log.debug("skipped stdout line: %s", exc, extra={"req_id": self.request_id})
                    continue
                if event is not None:
                    events.append(event)
            if events:
                return events

    async def write_submission(self, line: bytes) -> None:
        stdin = self.process.stdin
        if stdin is None:
            return
        try:
            await stdin.send_all(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("child closed stdin early", extra={"req_id": self.request_id})


class ProtoBackend:
    def __init__(
        self,
        settings: Settings,
        lifecycle: Lifecycle,
        *,
        version: str | None = None,
        on_line: LineHook | None = None,
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.on_line = on_line
        self.env = child_env(settings)
        self._argvs: dict[tuple[tuple[str, ...], str, str | None], tuple[str, ...]] = {}
        self._capabilities = Capabilities(
            name="proto", version=version, tools=False, tools_reason=TOOLS_UNSUPPORTED
        )
        self._nursery: trio.Nursery | None = None

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with contextlib.suppress(OSError):
            prepare_dirs(self.settings)  # readiness says so when this failed
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def aclose(self) -> None:
        """Nothing long-lived to end."""

    def readiness(self) -> list[str]:
        reasons: list[str] = []
        try:
            resolve_executable(self.settings)
        except SpawnError as exc:
            reasons.append(str(exc))
        return reasons + directory_problems(self.settings)

    def _argv(self, program: list[str], model: str, effort: str | None) -> list[str]:
        """The child's argv, its strings shared between requests that ask for the same model
        and effort (a process keeps its argv for as long as it runs). Bounded: models are
        validated names, but a client chooses them."""
        key = (tuple(program), model, effort)
        argv = self._argvs.get(key)
        if argv is None:
            argv = tuple(build_argv(self.settings, program, model, effort))
            if len(self._argvs) < ARGV_CACHE_SIZE:
                self._argvs[key] = argv
        return list(argv)

    @asynccontextmanager
    async def open_turn(self, request: TurnRequest) -> AsyncIterator[ProtoTurn]:
        nursery = self._nursery
        if nursery is None:
            raise BackendUnavailable("The backend is not running.")
        settings = self.settings
        try:
            program = resolve_executable(settings)
            process = await spawn(
                self._argv(program, request.model, request.effort),
                env=self.env, cwd=settings.codex_workdir,
            )
        except SpawnError as exc:
            raise BackendUnavailable(str(exc)) from None
        turn = ProtoTurn(process, request.request_id, self.on_line)
        assert process.stderr is not None
        nursery.start_soon(turn.stderr.drain, process.stderr)
        line = submission(request.request_id, request.prompt)
        try:
            if len(line) <= select.PIPE_BUF:
                await turn.write_submission(line)  # a new pipe takes this much without waiting
            else:  # a long prompt is written while the relay reads, as codex reads it
                nursery.start_soon(turn.write_submission, line)
            yield turn
        finally:
            with trio.CancelScope(shield=True):
                grace = settings.child_kill_grace_ms / 1000
                if self.lifecycle.finalize_now.is_set():
                    grace = min(grace, SHUTDOWN_KILL_GRACE_S)
                info = await end(process, grace)
                diag = turn.diagnostics
                diag.exit_cause = info.cause
                diag.returncode = info.returncode
                diag.died_early = turn.eof or (info.cause == "exited" and bool(info.returncode))
                if diag.died_early:
                    diag.stderr_tail = turn.stderr.text()
