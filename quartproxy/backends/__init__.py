"""Backends: how a turn reaches codex (see :mod:`.base` for the seam).

:func:`create_backend` picks one at start-up, once:

* ``PROXY_BACKEND=proto``: one ``codex proto`` child per request, as configured;
* otherwise ``codex --version`` is read and the release decides — 0.8–0.42 speak ``proto``,
  0.100–0.139 ``app-server`` in a reduced mode (no thread deletion or history injection),
  0.140+ ``app-server`` fully, and function calling needs 0.169+. ``PROXY_BACKEND=app-server``
  insists on the latter.

``--demo`` (``PROXY_DEMO``) puts the bundled demo program (:mod:`quartproxy.demo_backend`) in
codex's place and takes the same road: its ``--version`` is read, and it is driven as an
app-server (it reports 0.140, so: full mode, no function calling), or as a proto codex with
``PROXY_BACKEND=proto``. Either way the proxy's process, pool and protocol code runs for real.

A codex that cannot work stops the server at start-up with one line that names the supported
ranges, rather than failing every request later. A codex that cannot be *found* does not: the
server starts, ``/readyz`` says what to set, and completions answer 503, so a container whose
volume is mounted late still comes up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from ..config import Settings
from ..lifecycle import Lifecycle
from .appserver.backend import AppServerBackend
from .appserver.version import (
    SUPPORTED_RANGES,
    BackendKind,
    CodexVersion,
    UnsupportedVersion,
    choose_backend,
)
from .base import Backend, BackendUnavailable, Capabilities, Turn, TurnRequest
from .process import SpawnError, child_env, codex_version, prepare_dirs, resolve_executable
from .proto.backend import ProtoBackend

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Capabilities",
    "StartupError",
    "Turn",
    "TurnRequest",
    "UnavailableBackend",
    "create_backend",
]

log = logging.getLogger("quartproxy.backends")

LineHook = Callable[[str, bytes], None]


class StartupError(Exception):
    """The configured codex cannot be served; ``str()`` is the one-line message."""


class UnavailableBackend:
    """Stands in when no codex can be found: every turn is a 503 that says what to set."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self._capabilities = Capabilities(name="unavailable", tools_reason=reason)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def aclose(self) -> None:
        """Nothing long-lived to end."""

    def readiness(self) -> list[str]:
        return [self.reason]

    @asynccontextmanager
    async def open_turn(self, request: TurnRequest) -> AsyncIterator[Turn]:
        raise BackendUnavailable(self.reason)
        yield  # pragma: no cover - a generator, so this is an async context manager


def _ranges() -> str:
    return SUPPORTED_RANGES


async def create_backend(
    settings: Settings, lifecycle: Lifecycle, *, on_line: LineHook | None = None
) -> Backend:
    if settings.backend == "proto":
        # Taken as given: the program is resolved per turn, so a codex installed after start-up
        # is picked up, and /readyz reports a missing one.
        if settings.demo:
            log.info("demo backend: proto (the bundled demo program, one process per request)")
        return ProtoBackend(settings, lifecycle, version="demo" if settings.demo else None,
                            on_line=on_line)
    try:
        program = resolve_executable(settings)
    except SpawnError as exc:
        log.error("%s", exc)
        return UnavailableBackend(str(exc))
    try:
        prepare_dirs(settings)
    except OSError as exc:
        raise StartupError(f"cannot create CODEX_HOME or the workdir: {exc}") from None
    try:
        text = await codex_version(program, child_env(settings), settings.codex_workdir)
    except SpawnError as exc:
        return UnavailableBackend(str(exc))
    try:
        version = CodexVersion.parse(text)
    except ValueError:
        raise StartupError(
            f"could not read the Codex CLI version: `{program[-1]} --version` printed "
            f"{text[:80]!r}. Supported: {_ranges()}."
        ) from None
    try:
        kind = choose_backend(version)
    except UnsupportedVersion as exc:
        raise StartupError(str(exc)) from None
    if settings.backend == "app-server" and kind is BackendKind.PROTO:
        raise StartupError(
            f"PROXY_BACKEND=app-server needs codex 0.100.0 or later; CODEX_BIN is codex "
            f"{version}. Use PROXY_BACKEND=auto."
        )
    if kind is BackendKind.PROTO:
        log.info("codex %s: proto backend (one process per request)", version)
        return ProtoBackend(settings, lifecycle, version=str(version), on_line=on_line)
    if settings.demo:
        log.info("demo backend: app-server (the bundled demo program, protocol of codex %s), "
                 "%d workers x %d turns", version, settings.workers, settings.worker_max_turns)
        return AppServerBackend(settings, lifecycle, version=version, program=program)
    mode = "reduced mode" if kind is BackendKind.APP_SERVER_REDUCED else "full"
    log.info("codex %s: app-server backend (%s), %d workers x %d turns", version, mode,
             settings.workers, settings.worker_max_turns)
    return AppServerBackend(settings, lifecycle, version=version, program=program)
