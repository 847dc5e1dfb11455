"""The command line as a user meets it: start-up errors are one line, --help documents all."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from quartproxy.config import Settings, env_names


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    # This checkout, not whatever copy of quartproxy is installed.
    base["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(Path(__file__).resolve().parents[1]),
                          os.environ.get("PYTHONPATH", "")) if part)
    return subprocess.run(
        [sys.executable, "-m", "quartproxy", *args], env={**base, **(env or {})}, cwd=cwd,
        capture_output=True, text=True, timeout=300,  # hang guard: a loaded machine is slow
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "abc"), ("PROXY_TIMEOUT_MS", ""), ("PROXY_SANDBOX_MODE", "root"),
     ("PROXY_SSE_KEEPALIVE_MS", "1.5s"), ("PROXY_DEV_TRUNCATE_AFTER_MS", "-5")],
)
def test_invalid_setting_is_one_line_naming_the_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    result = run_cli("serve", env={name: value}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_setting_in_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PROXY_MAX_CONCURRENCY=many\n")
    result = run_cli("serve", cwd=tmp_path)
    assert result.returncode == 2 and "PROXY_MAX_CONCURRENCY" in result.stderr


def test_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("serve", "--demo", "--port", str(port),
                         env={"PROXY_API_KEY": "k"}, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("quartproxy: cannot serve on")
    assert "Traceback" not in result.stderr


def test_help_documents_every_setting(tmp_path: Path) -> None:
    result = run_cli("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for field in Settings.model_fields:
        for name in env_names(field):
            assert name in result.stdout, name
