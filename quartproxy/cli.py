"""`quartproxy` command line: `serve` (the proxy) and `backup` (CODEX_HOME archives)."""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence
from typing import Any

import trio

from .config import Settings, SettingsError, env_names, load_settings

# flag -> (settings field, argparse kwargs)
SERVE_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--host": ("host", {}),
    "--port": ("port", {"type": int}),
    "--demo": ("demo", {"action": "store_const", "const": True}),
    "--codex-bin": ("codex_bin", {}),
    "--codex-home": ("codex_home", {}),
    "--workdir": ("codex_workdir", {}),
    "--model": ("codex_model", {}),
    "--provider": ("force_provider", {}),
    "--sandbox-mode": ("sandbox_mode", {}),
    "--api-key": ("api_key", {}),
    "--env": ("env", {}),
    "--log-format": ("log_format", {}),
    "--timeout-ms": ("timeout_ms", {"type": int}),
    "--keepalive-ms": ("sse_keepalive_ms", {"type": int}),
    "--nonstream-truncate-after-ms": ("nonstream_truncate_after_ms", {"type": int}),
    "--shutdown-grace-ms": ("shutdown_grace_ms", {"type": int}),
    "--sse-max-concurrency": ("sse_max_concurrency", {"type": int}),
    "--max-concurrency": ("max_concurrency", {"type": int}),
    "--redis-url": ("redis_url", {}),
}


def settings_table() -> str:
    lines = ["settings (env var, default: meaning; flags above win over env and .env):"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "(generated)" if name == "api_key" else repr(str(default))
        env = " / ".join(env_names(name))
        lines.append(f"  {env} = {shown}: {field.description}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quartproxy",
        description="OpenAI Chat Completions-compatible HTTP proxy in front of `codex proto`.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the HTTP server",
        description="Serve /v1/chat/completions and friends, one codex child per request.",
        epilog=settings_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag, (field, kwargs) in SERVE_FLAGS.items():
        env = env_names(field)[0]
        description = Settings.model_fields[field].description
        serve.add_argument(flag, dest=field, default=None, help=f"{description} [{env}]", **kwargs)
    backup = sub.add_parser(
        "backup", help="back up, prune, verify and restore CODEX_HOME (see `backup --help`)",
        add_help=False,
    )
    backup.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .observability import configure_logging
    from .server import serve

    overrides = {field: getattr(args, field) for _, (field, _) in SERVE_FLAGS.items()}
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"quartproxy: {exc}", file=sys.stderr)
        return 2
    if not settings.api_keys:
        generated = secrets.token_urlsafe(24)
        settings = settings.model_copy(update={"api_key": generated})
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        print(
            f"quartproxy: PROXY_API_KEY is not set; this run's API key is: {generated}\n"
            f"quartproxy: try: curl -s http://{host}:{settings.port}/v1/chat/completions "
            f"-H 'Authorization: Bearer {generated}' -H 'Content-Type: application/json' "
            """-d '{"model":"codex-5","messages":[{"role":"user","content":"Say hello"}]}'""",
            file=sys.stderr, flush=True,
        )
    configure_logging(fmt=settings.log_format, verbose=settings.dev)
    def ready(binds: list[str], backend: str) -> None:
        print(f"quartproxy: serving on {', '.join(binds)} with the {backend}",
              file=sys.stderr, flush=True)

    from .backends import StartupError
    from .tracing import TracingUnavailable

    try:
        trio.run(lambda: serve(settings, on_ready=ready))
    except KeyboardInterrupt:
        return 130
    except (StartupError, TracingUnavailable) as exc:
        print(f"quartproxy: {exc}", file=sys.stderr)
        return 2
    except (OSError, BaseExceptionGroup) as exc:
        error = _first_os_error(exc)
        if error is None:
            raise
        print(f"quartproxy: cannot serve on {settings.host}:{settings.port}: "
              f"{error.strerror or error}", file=sys.stderr)
        return 1
    return 0


def _first_os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a start-up failure, however deeply trio's nurseries grouped it."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_os_error(inner)
            if found is not None:
                return found
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["backup"]:
        # Hand everything after `backup` over untouched (argparse would eat `--help`).
        from . import backup

        return backup.main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "serve":
        return _serve(args)
    from . import backup

    return backup.main(list(args.args))


if __name__ == "__main__":
    raise SystemExit(main())
