"""Fixtures shared by the real-codex modules (collected only when they run)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from .support import UPSTREAM, Upstream


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    process = subprocess.Popen(
        [sys.executable, str(UPSTREAM), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the server has bound its port
    assert line.startswith("listening 127.0.0.1:"), (line, process.poll())
    yield Upstream(process, int(line.rsplit(":", 1)[1]))
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
