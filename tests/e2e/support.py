"""What both real-codex modules share: the local fake Responses upstream and /proc reading."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..conftest import FIXTURES

UPSTREAM = FIXTURES / "fake_responses_upstream.py"


@dataclass
class Upstream:
    process: subprocess.Popen[str]
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, run: str) -> list[dict[str, Any]]:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            resp = client.get("/__requests", params={"run": run})
        resp.raise_for_status()
        found: list[dict[str, Any]] = resp.json()
        return found


def proc_field(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""
