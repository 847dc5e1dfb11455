"""Backends: how a turn reaches codex (see :mod:`.base` for the seam).

:func:`create_backend` picks one at start-up, once: the bundled demo program or an explicit
``PROXY_BACKEND`` is taken as given; ``auto`` reads ``codex --version`` and maps the release to
the backend that can drive it. A codex that cannot work stops the server at start-up with one
line, rather than failing every request later.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Settings
from ..lifecycle import Lifecycle
from .base import Backend, BackendUnavailable, Capabilities, Turn, TurnRequest
from .proto.backend import ProtoBackend

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Capabilities",
    "StartupError",
    "Turn",
    "TurnRequest",
    "create_backend",
]


class StartupError(Exception):
    """The configured codex cannot be served; ``str()`` is the one-line message."""


async def create_backend(
    settings: Settings, lifecycle: Lifecycle, *, on_line: Callable[[str, bytes], None] | None = None
) -> Backend:
    return ProtoBackend(settings, lifecycle, on_line=on_line)
