"""Fixtures shared by the real-codex modules (collected only when they run)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from .support import UPSTREAM, Upstream


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    # stderr goes to a file, never to a pipe nobody reads: a full pipe would block the
    # upstream thread that writes a traceback, and with it that thread's socket.
    log_path = tmp_path_factory.mktemp("upstream") / "stderr.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(UPSTREAM), "--port", "0"],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the server has bound its port
    assert line.startswith("listening 127.0.0.1:"), (line, process.poll())
    yield Upstream(process, int(line.rsplit(":", 1)[1]), log_path)
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
