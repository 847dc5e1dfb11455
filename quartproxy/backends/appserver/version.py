"""Which codex releases this proxy can drive, and how.

The version is read once at start-up (``codex --version`` or the ``userAgent`` that
``initialize`` returns) and decides everything here; nothing is probed per request. Only measured
releases are accepted; anything else is refused at start-up with a message naming the ranges:

* 0.8.0–0.42.x: ``codex proto`` (one child per request);
* 0.43.0–0.99.x: refused (proto is gone from 0.44; the app-server of those releases is v1 only,
  or its threads ignore the ``-c`` overrides);
* 0.100.0–0.139.x: app-server, reduced (no ``thread/delete``/``thread/inject_items``: the history
  is flattened into one input and threads are archived);
* 0.140.0 and later: app-server with the full feature set; function calling (dynamic tools with
  an end-of-response signal) from 0.169.0.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_AFTER_SLASH = re.compile(r"/(\d+)\.(\d+)\.(\d+)(?!\d)")
_ANYWHERE = re.compile(r"(?<![\d.])(\d+)\.(\d+)\.(\d+)(?!\d)")


@dataclass(frozen=True, order=True)
class CodexVersion:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> CodexVersion:
        """Read ``codex-cli 0.169.0``, ``0.169.0`` or a user agent ``name/0.169.0 (…)``.

        In a user agent the version is the first ``/X.Y.Z`` (the platform part that follows has
        version numbers of its own); otherwise the first ``X.Y.Z``. A pre-release suffix
        (``-alpha.1``) is ignored.
        """
        match = _AFTER_SLASH.search(text) or _ANYWHERE.search(text)
        if match is None:
            raise ValueError(f"no codex version (X.Y.Z) in {text.strip()[:200]!r}")
        major, minor, patch = (int(group) for group in match.groups())
        return cls(major, minor, patch)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


class BackendKind(enum.Enum):
    PROTO = "proto"
    APP_SERVER_REDUCED = "app-server-reduced"
    APP_SERVER = "app-server"


PROTO_MIN = CodexVersion(0, 8, 0)
PROTO_END = CodexVersion(0, 43, 0)  # exclusive
APP_SERVER_MIN = CodexVersion(0, 100, 0)
APP_SERVER_FULL = CodexVersion(0, 140, 0)
NO_V1_EVENTS = CodexVersion(0, 120, 0)
DYNAMIC_TOOLS_MIN = CodexVersion(0, 169, 0)

SUPPORTED_RANGES = (
    "0.8.0–0.42.x (proto), 0.100.0–0.139.x (app-server, reduced: history flattened), "
    "0.140.0 and later (app-server); function calling needs 0.169.0 or later"
)


class UnsupportedVersion(Exception):
    """The installed codex cannot be driven; the message names the supported ranges."""

    def __init__(self, version: CodexVersion | str) -> None:
        super().__init__(
            f"codex {version} is not supported. Supported releases: {SUPPORTED_RANGES}. "
            "Install one of them (npm @openai/codex@<version>) or point CODEX_BIN at it."
        )
        self.version = version


def choose_backend(version: CodexVersion) -> BackendKind:
    if PROTO_MIN <= version < PROTO_END:
        return BackendKind.PROTO
    if APP_SERVER_MIN <= version < APP_SERVER_FULL:
        return BackendKind.APP_SERVER_REDUCED
    if version >= APP_SERVER_FULL:
        return BackendKind.APP_SERVER
    raise UnsupportedVersion(version)


@dataclass(frozen=True)
class Features:
    """What one app-server release offers, as far as this proxy uses it."""

    thread_delete: bool  # else clean up with thread/archive
    inject_items: bool  # else flatten the history into one text input
    dynamic_tools: bool  # native function calling (with rawResponse/completed)
    duplicate_v1_events: bool  # every event also arrives as codex/event/* (dropped)
    opt_out: bool  # initialize may carry capabilities.optOutNotificationMethods


def features_for(version: CodexVersion) -> Features:
    return Features(
        thread_delete=version >= APP_SERVER_FULL,
        inject_items=version >= APP_SERVER_FULL,
        dynamic_tools=version >= DYNAMIC_TOOLS_MIN,
        duplicate_v1_events=version < NO_V1_EVENTS,
        opt_out=version >= APP_SERVER_MIN,
    )
