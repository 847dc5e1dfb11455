"""What both real-codex modules share: the local fake Responses upstream and /proc reading."""

from __future__ import annotations

import json
import subprocess
import uuid
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
    log_path: Path

    def stderr_tail(self, size: int = 3000) -> str:
        """The end of the upstream's stderr, for a failure message."""
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

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


UPSTREAM_TEXT = "Hello from the fake Responses upstream: real codex streamed this answer."
UPSTREAM_KEY = "fake-upstream-key-e2e"
# What codex reports from the upstream's usage block, mapped to OpenAI's names. These numbers
# appear nowhere else, so seeing them proves the proxy used codex's own counts.
REAL_USAGE = {
    "prompt_tokens": 1234,
    "completion_tokens": 56,
    "total_tokens": 1290,
    "prompt_tokens_details": {"cached_tokens": 7},
    "completion_tokens_details": {"reasoning_tokens": 8},
}
# Fewer visible retries than codex's default 5 keep the `fail` case under a second; the
# request count the upstream sees proves codex honoured it.
STREAM_MAX_RETRIES = 2


def write_codex_home(codex_home: Path, upstream: Upstream) -> None:
    """A CODEX_HOME whose ``fake`` provider is the local upstream."""
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        "[model_providers.fake]\n"
        'name = "fake"\n'
        f'base_url = "{upstream.base_url}/v1"\n'
        'wire_api = "responses"\n'
        'env_key = "FAKE_UPSTREAM_KEY"\n'
        f"stream_max_retries = {STREAM_MAX_RETRIES}\n"
    )


def tagged(scenario: str) -> tuple[str, str]:
    """A prompt selecting the upstream scenario, with a RUN tag unique to this call."""
    run = uuid.uuid4().hex[:12]
    return run, f"Say hello. SCENARIO={scenario} RUN={run}"


def chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "codex-5", "messages": [{"role": "user", "content": prompt}], **extra}


def usage_records(path: Path) -> list[dict[str, Any]]:
    """The proxy's usage records so far (NDJSON)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
