"""Every development task is a nox session. `python -m nox` runs the default set (the CI gate)."""

from __future__ import annotations

import nox

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
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "quartproxy", "tests", "fixtures", "deploy", "benchmarks",
                "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy>=1.10")
    session.run("mypy", "--strict", "quartproxy")


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """Run the server; `nox -s serve -- --demo` for the bundled demo backend."""
    session.install("-e", ".")
    session.run("python", "-m", "quartproxy", "serve", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Throughput, first-chunk latency, SSE chunk rate and memory per stream, in one run."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/bench.py", *session.posargs)
