"""Settings: env vars (names kept from the product this replaces), `.env`, and CLI flags.

pydantic-settings does the parsing because it already gets the hard parts right (type coercion,
`.env` files, precedence of explicit values over the environment); what it does not do — refusing
empty strings for numbers and naming the offending *variable* in a one-line message — is done
here, because a silent default is how a misconfigured proxy ends up serving the wrong thing.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Whole-string patterns, always applied with ``fullmatch``: ``match`` with ``$`` would accept a
# trailing newline (``CODEX_MODEL=$'gpt-5\n'``), and codex would be given that id.
MODEL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
PROVIDER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class SettingsError(Exception):
    """A setting that must stop start-up; ``str()`` is the one-line message."""


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _env(*names: str, **kwargs: Any) -> Any:
    alias: str | AliasChoices = names[0] if len(names) == 1 else AliasChoices(*names)
    return Field(validation_alias=alias, **kwargs)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    host: str = _env("PROXY_HOST", default="127.0.0.1", description="bind address")
    port: int = _env("PORT", default=11435, ge=0, le=65535, description="bind port")
    api_key: str = _env(
        "PROXY_API_KEY",
        default="",
        description="API key(s), comma-separated; unset: one is generated and printed at start",
    )
    env: str = _env(
        "PROXY_ENV", default="", description="'dev': list codev-5* models, verbose logs"
    )
    protect_models: bool = _env(
        "PROXY_PROTECT_MODELS", default=False, description="require auth for /v1/models"
    )
    codex_bin: str = _env("CODEX_BIN", default="codex", description="the codex executable")
    codex_home: Path = _env(
        "CODEX_HOME", default=Path(".codex-api"), description="CODEX_HOME given to the child"
    )
    codex_workdir: Path = _env(
        "PROXY_CODEX_WORKDIR",
        default=Path(tempfile.gettempdir()) / "codex-work",
        description="working directory of the child",
    )
    codex_model: str = _env(
        "CODEX_MODEL", default="gpt-5", description="model behind the public codex-5 aliases"
    )
    extra_models: str = _env(
        "PROXY_EXTRA_MODELS", default="", description="more accepted model ids, comma-separated"
    )
    force_provider: str = _env(
        "CODEX_FORCE_PROVIDER", default="", description="codex model_provider override"
    )
    sandbox_mode: Literal["read-only", "workspace-write", "danger-full-access"] = _env(
        "PROXY_SANDBOX_MODE", default="read-only", description="codex sandbox mode"
    )
    demo: bool = _env(
        "PROXY_DEMO", default=False, description="serve the bundled demo backend instead of codex"
    )
    timeout_ms: int = _env(
        "PROXY_TIMEOUT_MS", default=300_000, ge=0, description="whole-request deadline (0 = none)"
    )
    stream_idle_timeout_ms: int = _env(
        "PROXY_STREAM_IDLE_TIMEOUT_MS", default=300_000, ge=0, description="stream idle deadline"
    )
    proto_idle_ms: int = _env(
        "PROXY_PROTO_IDLE_MS", default=120_000, ge=0, description="non-stream idle deadline"
    )
    nonstream_truncate_after_ms: int = _env(
        "PROXY_NONSTREAM_TRUNCATE_AFTER_MS",
        "PROXY_DEV_TRUNCATE_AFTER_MS",
        default=0,
        ge=0,
        description="answer a non-stream request with what it has after this long (0 = off)",
    )
    sse_keepalive_ms: int = _env(
        "PROXY_SSE_KEEPALIVE_MS", default=15_000, description="keepalive comment interval (<=0 off)"
    )
    kill_on_disconnect: bool = _env(
        "PROXY_KILL_ON_DISCONNECT", default=True, description="end the child when the client leaves"
    )
    child_kill_grace_ms: int = _env(
        "PROXY_CHILD_KILL_GRACE_MS", default=2000, ge=0, description="SIGTERM -> SIGKILL grace"
    )
    shutdown_grace_ms: int = _env(
        "PROXY_SHUTDOWN_GRACE_MS", default=10_000, ge=0, description="drain time on SIGTERM"
    )
    sse_max_concurrency: int = _env(
        "PROXY_SSE_MAX_CONCURRENCY", default=4, ge=0, description="concurrent streams (0 = no cap)"
    )
    max_concurrency: int = _env(
        "PROXY_MAX_CONCURRENCY", default=16, ge=0, description="concurrent children (0 = no cap)"
    )
    queue_timeout_ms: int = _env(
        "PROXY_QUEUE_TIMEOUT_MS", default=0, ge=0, description="wait this long for a slot"
    )
    rate_limit_enabled: bool = _env(
        "PROXY_RATE_LIMIT_ENABLED", default=False, description="per-key rate limit"
    )
    rate_limit_window_ms: int = _env(
        "PROXY_RATE_LIMIT_WINDOW_MS", default=60_000, gt=0, description="rate-limit window"
    )
    rate_limit_max: int = _env(
        "PROXY_RATE_LIMIT_MAX", default=60, gt=0, description="requests per window"
    )
    redis_url: str = _env(
        "PROXY_REDIS_URL", default="", description="share limits across replicas through Redis"
    )
    redis_lease_ttl_ms: int = _env(
        "PROXY_REDIS_LEASE_TTL_MS", default=10_000, gt=0,
        description="TTL of a Redis concurrency lease (refreshed while the child runs)",
    )
    max_prompt_tokens: int = _env(
        "PROXY_MAX_PROMPT_TOKENS", default=0, ge=0, description="prompt-size guard (0 = off)"
    )
    max_body_bytes: int = _env(
        "PROXY_MAX_BODY_BYTES", default=16 * 1024 * 1024, gt=0, description="request body cap"
    )
    enable_cors: bool = _env("PROXY_ENABLE_CORS", default=True, description="CORS headers")
    cors_allow_origins: str = _env(
        "PROXY_CORS_ALLOW_ORIGINS", default="*", description="allowed origins, comma-separated"
    )
    test_endpoints: bool = _env(
        "PROXY_TEST_ENDPOINTS", default=False, description="/__test/* and X-Conc-* headers"
    )
    backend: Literal["auto", "app-server", "proto"] = _env(
        "PROXY_BACKEND", default="auto",
        description="codex backend: auto (from `codex --version`), app-server or proto",
    )
    workers: int = _env(
        "PROXY_WORKERS", default=2, ge=1, le=64,
        description="app-server: long-lived `codex app-server` worker processes",
    )
    worker_max_turns: int = _env(
        "PROXY_WORKER_MAX_TURNS", default=8, ge=1, le=1024,
        description="app-server: turns one worker carries at once",
    )
    worker_max_requests: int = _env(
        "PROXY_WORKER_MAX_REQUESTS", default=1000, ge=0,
        description="app-server: recycle a worker after this many requests (0 = never)",
    )
    worker_handshake_timeout_ms: int = _env(
        "WORKER_HANDSHAKE_TIMEOUT_MS", default=15_000, gt=0,
        description="app-server: initialize must answer within this",
    )
    worker_rpc_timeout_ms: int = _env(
        "WORKER_RPC_TIMEOUT_MS", default=10_000, gt=0,
        description="app-server: timeout of every other JSON-RPC call",
    )
    worker_backoff_initial_ms: int = _env(
        "WORKER_BACKOFF_INITIAL_MS", default=500, gt=0,
        description="app-server: first restart delay after a worker died (doubles)",
    )
    worker_backoff_max_ms: int = _env(
        "WORKER_BACKOFF_MAX_MS", default=5000, gt=0, description="app-server: restart delay cap"
    )
    worker_health_interval_ms: int = _env(
        "WORKER_HEALTH_INTERVAL_MS", default=10_000, ge=0,
        description="app-server: health probe period (0 = off)",
    )
    worker_shutdown_grace_ms: int = _env(
        "WORKER_SHUTDOWN_GRACE_MS", default=2000, ge=0,
        description="app-server: stdin close -> SIGKILL grace when a worker is ended",
    )
    turn_buffer_bytes: int = _env(
        "PROXY_TURN_BUFFER_BYTES", default=8 * 1024 * 1024, gt=0,
        description="app-server: events buffered for one slow client before its turn is cut",
    )
    tools_mode: Literal["auto", "ignore"] = _env(
        "PROXY_TOOLS", default="auto",
        description="OpenAI tools: auto (native on app-server 0.169+, else 400) or ignore",
    )
    tools_base_instructions: str = _env(
        "PROXY_TOOLS_BASE_INSTRUCTIONS",
        default=(
            "You are a helpful assistant. Use the provided functions when they help answer the "
            "user; otherwise answer directly."
        ),
        description="app-server: instructions for tool requests without a system message",
    )
    enable_responses: bool = _env(
        "PROXY_ENABLE_RESPONSES", default=True, description="serve POST /v1/responses"
    )
    stop_after_tools: bool = _env("PROXY_STOP_AFTER_TOOLS", default=False, description="tools")
    stop_after_tools_mode: Literal["burst", "first"] = _env(
        "PROXY_STOP_AFTER_TOOLS_MODE", default="burst", description="tool-block cut mode"
    )
    stop_after_tools_grace_ms: int = _env(
        "PROXY_STOP_AFTER_TOOLS_GRACE_MS", default=300, ge=0, description="burst grace"
    )
    tool_block_max: int = _env(
        "PROXY_TOOL_BLOCK_MAX", default=0, ge=0, description="max tool blocks (0 = no cap)"
    )
    suppress_tail_after_tools: bool = _env(
        "PROXY_SUPPRESS_TAIL_AFTER_TOOLS", default=False, description="hold text after tools"
    )
    token_log_path: Path = _env(
        "TOKEN_LOG_PATH",
        default=Path(".codex-api") / "usage.ndjson",
        description="usage records (NDJSON)",
    )
    usage_log_max_bytes: int = _env(
        "PROXY_USAGE_LOG_MAX_BYTES", default=64 * 1024 * 1024, ge=0,
        description="rotate the usage records when the file would pass this size (0 = never)",
    )
    usage_log_keep: int = _env(
        "PROXY_USAGE_LOG_KEEP", default=5, ge=0, le=1000,
        description="rotated usage files kept (TOKEN_LOG_PATH.1 newest .. .N oldest)",
    )
    proto_log_path: Path = _env(
        "PROTO_LOG_PATH",
        default=Path(".codex-api") / "proto-events.ndjson",
        description="proto event log",
    )
    log_proto: bool = _env("PROXY_LOG_PROTO", default=False, description="write the proto log")
    log_format: Literal["json", "text"] = _env(
        "PROXY_LOG_FORMAT", default="json", description="access log format"
    )
    metrics_require_key: bool = _env(
        "PROXY_METRICS_REQUIRE_KEY", default=False,
        description="put /metrics behind the API key (default: open, the Prometheus convention)",
    )
    otel_enabled: bool = _env(
        "PROXY_OTEL_ENABLED", default=False,
        description="OpenTelemetry traces (pip install 'quartproxy[otel]'; OTEL_* env vars "
        "configure the exporter)",
    )

    @field_validator("extra_models")
    @classmethod
    def _check_extra_models(cls, value: str) -> str:
        for model in _split(value):
            if not MODEL_ID_RE.fullmatch(model):
                raise ValueError(f"model id {model!r} must match {MODEL_ID_RE.pattern}")
        return value

    @field_validator("codex_model")
    @classmethod
    def _check_codex_model(cls, value: str) -> str:
        if not MODEL_ID_RE.fullmatch(value):
            raise ValueError(f"must match {MODEL_ID_RE.pattern}")
        return value

    @field_validator("force_provider")
    @classmethod
    def _check_provider(cls, value: str) -> str:
        if value and not PROVIDER_RE.fullmatch(value):
            raise ValueError(f"must match {PROVIDER_RE.pattern}")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    # Derived views: computed once so hot paths never re-split strings.
    @property
    def api_keys(self) -> list[str]:
        return _split(self.api_key)

    @property
    def extra_model_ids(self) -> list[str]:
        return _split(self.extra_models)

    @property
    def cors_origins(self) -> list[str]:
        return _split(self.cors_allow_origins) or ["*"]

    @property
    def dev(self) -> bool:
        return self.env.strip().lower() == "dev"


def env_names(field_name: str) -> list[str]:
    """The env var name(s) that feed a field, for messages and `--help`."""
    alias = Settings.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [str(alias)]


def load_settings(**overrides: Any) -> Settings:
    """Build settings; CLI overrides (field names) win over env and `.env`.

    Raises :class:`SettingsError` with one line naming the variable at fault.
    """
    explicit = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**explicit)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first.get("loc") or ("?",)
        name = str(loc[0])
        field = name if name in Settings.model_fields else next(
            (f for f in Settings.model_fields if name in env_names(f)), None
        )
        if field is not None:
            names = env_names(field)
            # Name the variable the user actually set (an alias, say), not the canonical one.
            name = next((env for env in names if env in os.environ), names[0])
        raw = first.get("input")
        shown = f" (got {raw!r})" if isinstance(raw, str | int | float) else ""
        raise SettingsError(f"invalid setting {name}{shown}: {first['msg']}") from None
