"""Every development task is a nox session. `python -m nox` runs the default set (the CI gate)."""

from __future__ import annotations

import nox
from nox.command import CommandFailed

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and loopback integration tests (real server, real child processes, openai SDK)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python=PYTHON)
def stress(session: nox.Session) -> None:
    """The repeat loops at their full counts (tests marked ``slow``; the default run does one
    pass of each): 10 x SIGTERM with open streams, 50 x truncation, 50 x 429 at the limit.
    ``QUARTPROXY_REPEAT=<n>`` in the environment sets another count for every loop."""
    import os

    session.install("-e", ".[test]")
    repeat = os.environ.get("QUARTPROXY_REPEAT", "full")
    session.run("pytest", "-q", "-m", "slow", *session.posargs,
                env={"QUARTPROXY_REPEAT": repeat})


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """A few minutes of abuse against the server process, with figures: hundreds of random
    client resets (then no child, no zombie, fds back, one usage record per turn), fuzzed
    requests (envelopes, never a 5xx or a hang), and a Redis restart under a shared limit.
    Sizes: QUARTPROXY_SOAK_DISCONNECTS, QUARTPROXY_SOAK_FUZZ; QUARTPROXY_SOAK_SEED replays."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/soak", *session.posargs,
                env={"QUARTPROXY_SOAK": "1"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "quartproxy", "tests", "fixtures", "deploy", "benchmarks",
                "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[otel]", "mypy>=1.10")
    session.run("mypy", "--strict", "quartproxy")


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Run the server; `nox -s serve -- --demo` for the bundled demo backend."""
    session.install("-e", ".")
    session.run("python", "-m", "quartproxy", "serve", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Every figure beside its floor (proto and app-server over C stand-ins), in one run.

    `-- --quick` is the smoke test CI runs; `-- --runs 3 --json out.json` for figures;
    `-- --compare URL` loads another server too; `-- --real-codex PATH` measures real codex.
    """
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session(python=PYTHON)
def bench_usage(session: nox.Session) -> None:
    """/v1/usage over a 1,000,000-record log: cold and indexed queries, raw tails."""
    session.install("-e", ".")
    session.run("python", "benchmarks/usage_query.py", *session.posargs)


@nox.session(python=PYTHON)
def goldens(session: nox.Session) -> None:
    """Regenerate fixtures/goldens/*.golden from the real server, then show what changed.

    Not in the default set: the `tests` session compares against the stored goldens and fails on
    any difference; only this session (QUARTPROXY_UPDATE_GOLDENS=1) writes them.
    """
    import shutil

    session.install("-e", ".[test]")
    session.run("pytest", "-q", "tests/test_goldens.py", *session.posargs,
                env={"QUARTPROXY_UPDATE_GOLDENS": "1"})
    if shutil.which("git") is None:
        session.log("git not found: review the changes in fixtures/goldens by hand")
        return
    # Outside a work tree git exits non-zero; that must not fail the regeneration.
    session.run("git", "diff", "--stat", "--", "fixtures/goldens", external=True,
                success_codes=[0, 128, 129])
    session.run("git", "status", "--short", "--", "fixtures/goldens", external=True,
                success_codes=[0, 128, 129])


# ----------------------------------------------------------------------------- end-to-end
# Not in the default set: they fetch npm packages (once, into .nox/cache) and take longer.

# proto: the captures' main target and the last release with `codex proto`; app-server: the
# release everything is measured on, and one of the reduced range 0.100-0.139.
E2E_CODEX_VERSIONS = ("0.36.0", "0.42.0", "0.169.0", "0.120.0")


def _e2e_cache(name: str) -> str:
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".nox", "cache", name)
    os.makedirs(path, exist_ok=True)
    return path


def _npm_installed(prefix: str, package: str, version: str | None = None) -> bool:
    import json
    import os

    manifest = os.path.join(prefix, "node_modules", *package.split("/"), "package.json")
    try:
        with open(manifest) as fh:
            found = json.load(fh).get("version")
    except (OSError, ValueError):
        return False
    return version is None or found == version


def _timed(session: nox.Session, label: str, started: float) -> None:
    import time

    session.log(f"timing: {label} took {time.monotonic() - started:.1f}s")


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """The proxy in front of the real Codex CLI from npm — proto (0.36.0, 0.42.0) and app-server
    (0.169.0, 0.120.0) — talking to fixtures/fake_responses_upstream.py. The codex packages are
    cached in .nox/cache/codex."""
    import os
    import time

    t0 = time.monotonic()
    session.install("-e", ".[test]")
    _timed(session, "pip install", t0)
    root = _e2e_cache("codex")
    for version in E2E_CODEX_VERSIONS:
        prefix = os.path.join(root, version)
        if _npm_installed(prefix, "@openai/codex", version):
            session.log(f"codex {version}: cached in {prefix}")
            continue
        t1 = time.monotonic()
        session.run("npm", "install", "--prefix", prefix, "--no-audit", "--no-fund",
                    "--loglevel=error", f"@openai/codex@{version}", external=True)
        _timed(session, f"npm install @openai/codex@{version}", t1)
    t2 = time.monotonic()
    modules = ("tests/e2e/test_real_codex.py", "tests/e2e/test_real_appserver.py")
    try:
        session.run("pytest", "-q", *modules, *session.posargs, env={"E2E_CODEX_ROOT": root})
    except CommandFailed:
        # The real codex binaries are outside this project's control (their own timers, retry
        # back-off, sqlite); a failure is shown in full above and its tests run once more. A
        # failure that repeats fails the session.
        session.warn("e2e: real-codex tests failed; running the failed ones once more")
        session.run("pytest", "-q", "--last-failed", "--last-failed-no-failures", "none",
                    *modules, *session.posargs, env={"E2E_CODEX_ROOT": root})
    _timed(session, "pytest tests/e2e", t2)
    _timed(session, "e2e session", t0)


@nox.session(python=PYTHON)
def clients(session: nox.Session) -> None:
    """Real clients against the proxy (fake codex backend): openai-python sync/async, LangChain
    ChatOpenAI and the openai npm SDK (cached in .nox/cache/node-openai)."""
    import time

    t0 = time.monotonic()
    session.install("-e", ".[test]", "langchain-openai")
    _timed(session, "pip install", t0)
    node_dir = _e2e_cache("node-openai")
    if _npm_installed(node_dir, "openai"):
        session.log(f"openai npm SDK: cached in {node_dir}")
    else:
        t1 = time.monotonic()
        session.run("npm", "install", "--prefix", node_dir, "--no-audit", "--no-fund",
                    "--loglevel=error", "openai", external=True)
        _timed(session, "npm install openai", t1)
    t2 = time.monotonic()
    session.run("pytest", "-q", "tests/e2e/test_clients.py", *session.posargs,
                env={"E2E_CLIENTS": "1", "E2E_NODE_DIR": node_dir})
    _timed(session, "pytest tests/e2e/test_clients.py", t2)
    _timed(session, "clients session", t0)


@nox.session(python=PYTHON)
def release(session: nox.Session) -> None:
    """sdist + wheel + CycloneDX SBOM + SHA256SUMS in dist/quartproxy-<version>-<sha>/."""
    session.install("build>=1.2", "cyclonedx-bom>=4", "packaging", "pip>=22.3")
    session.run("python", "deploy/release.py", "--out", "dist/", *session.posargs)
