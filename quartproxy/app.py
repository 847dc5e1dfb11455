"""HTTP routes: the OpenAI surface, probes, CORS, auth and error envelopes.

Routes stay thin: parse, authorise, validate, admit, then hand the request to a
:class:`~quartproxy.relay.Relay` and render its :class:`~quartproxy.completion.Completion`. The
admission order is the spec's: parse -> auth -> validate -> rate limit -> slot -> spawn.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio
import trio_util
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from . import accounting, child, errors
from .admission import Admission, ConcurrencyRejected, Slot
from .asgi import Exchange, ExchangeConnection, current_exchange
from .completion import Completion, End
from .config import Settings
from .errors import ApiError
from .lifecycle import Lifecycle
from .models import ModelCatalog
from .observability import Metrics, NdjsonLog, read_usage, utc_now_iso, write_access
from .relay import Relay, Timing
from .render import StreamRenderer, json_body
from .toolblocks import ToolPolicy
from .validation import CompletionRequest, parse_chat, parse_legacy

log = logging.getLogger("quartproxy.app")

JSON_TYPE = "application/json"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
DEFAULT_ALLOW_HEADERS = (
    "Authorization, Content-Type, Accept, OpenAI-Organization, OpenAI-Project, OpenAI-Beta, "
    "X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, "
    "X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Retry-Count, "
    "X-Stainless-Timeout, X-Stainless-Async, X-Stainless-Helper-Method, X-Request-Id, "
    "X-No-Keepalive"
)
EXPOSE_HEADERS = "X-Request-Id, Retry-After, X-Conc-Before, X-Conc-After, X-Conc-Limit"
KEEPALIVE_OPT_OUT_AGENTS = ("obsidian", "electron")


class ProxyApp(QuartTrio):
    asgi_http_class = ExchangeConnection
    state: AppState

    def exchange_finished(self, exchange: Exchange) -> None:
        self.state.exchange_finished(exchange)


@dataclass
class AppState:
    settings: Settings
    lifecycle: Lifecycle
    catalog: ModelCatalog
    admission: Admission
    metrics: Metrics
    usage_log: NdjsonLog
    proto_log: NdjsonLog | None
    api_keys: list[bytes]
    child_env: dict[str, str]
    background: trio.Nursery | None = None
    # Children alive right now; an AsyncValue so tests and shutdown can wait for "0" exactly.
    live: trio_util.AsyncValue[int] = field(default_factory=lambda: trio_util.AsyncValue(0))

    def exchange_finished(self, exchange: Exchange) -> None:
        fields = exchange.access_fields()
        write_access(fields)
        route = exchange.route or "unmatched"
        self.metrics.requests.labels(route, str(fields["status"])).inc()
        self.metrics.latency.labels(route).observe(fields["dur_ms"] / 1000)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status=status, headers=headers, content_type=JSON_TYPE)


def error_response(error: ApiError) -> Response:
    return Response(
        error.body(), status=error.status, headers=error.headers, content_type=JSON_TYPE
    )


def create_app(settings: Settings, lifecycle: Lifecycle | None = None) -> ProxyApp:
    app = ProxyApp(__name__)
    app.config["RESPONSE_TIMEOUT"] = None  # our own timers end streams, with [DONE]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = max(60, settings.timeout_ms / 1000)
    keys = settings.api_keys
    metrics = Metrics()
    state = AppState(
        settings=settings,
        lifecycle=lifecycle or Lifecycle(),
        catalog=ModelCatalog(settings),
        admission=Admission(settings, metrics),
        metrics=metrics,
        usage_log=NdjsonLog(settings.token_log_path),
        proto_log=NdjsonLog(settings.proto_log_path) if settings.log_proto or settings.dev
        else None,
        api_keys=[key.encode() for key in keys],
        child_env=child.child_env(settings),
    )
    app.state = state
    lc = state.lifecycle
    tool_policy = ToolPolicy(
        stop_after=settings.stop_after_tools,
        mode=settings.stop_after_tools_mode,
        grace_s=settings.stop_after_tools_grace_ms / 1000,
        max_blocks=settings.tool_block_max,
        suppress_tail=settings.suppress_tail_after_tools,
    )

    @app.before_serving
    async def _start() -> None:
        child.prepare_dirs(settings)
        await app.nursery.start(state.usage_log.run)
        if state.proto_log is not None:
            await app.nursery.start(state.proto_log.run)
        state.background = app.nursery if not settings.kill_on_disconnect else None
        state.admission.background = app.nursery
        if state.admission.redis is not None:
            try:
                await state.admission.redis.ping()
                log.info("concurrency and rate limits shared through Redis")
            except Exception as exc:
                state.admission._degrade(exc)

    @app.after_serving
    async def _stop() -> None:
        state.usage_log.close()
        if state.proto_log is not None:
            state.proto_log.close()
        state.admission.close()

    # ------------------------------------------------------------------ cross-cutting

    def cors_headers() -> dict[str, str]:
        if not settings.enable_cors:
            return {}
        origins = settings.cors_origins
        origin = request.headers.get("Origin")
        headers = {
            "Access-Control-Allow-Methods": "GET, POST, HEAD, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get(
                "Access-Control-Request-Headers", DEFAULT_ALLOW_HEADERS
            ),
            "Access-Control-Max-Age": "600",
            "Access-Control-Expose-Headers": EXPOSE_HEADERS,
        }
        if origin:
            if "*" in origins or origin in origins:
                headers["Access-Control-Allow-Origin"] = origin
                headers["Vary"] = "Origin"
        elif "*" in origins:
            headers["Access-Control-Allow-Origin"] = "*"
        return headers

    @app.before_request
    async def _before() -> Response | None:
        exchange = current_exchange()
        rule = request.url_rule
        exchange.route = rule.rule if rule is not None else None
        if request.method == "OPTIONS":
            return Response(b"", status=204)
        return None

    @app.after_request
    async def _after(response: Response) -> Response:
        exchange = current_exchange()
        for key, value in cors_headers().items():
            response.headers[key] = value
        response.headers["X-Request-Id"] = exchange.request_id
        conc = exchange.extra.get("conc")
        if conc is not None and settings.test_endpoints:
            for key, value in conc.items():
                response.headers[key] = str(value)
        return response

    @app.errorhandler(ApiError)
    async def _api_error(error: ApiError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if isinstance(error, MethodNotAllowed):
            return error_response(errors.method_not_allowed(sorted(error.valid_methods or [])))
        if isinstance(error, RequestEntityTooLarge) or status == 413:
            return error_response(errors.too_large(settings.max_body_bytes))
        if status == 404:
            return error_response(
                errors.not_found(f"Unknown path {request.path}.", "not_found")
            )
        if status == 400:
            return error_response(errors.invalid(error.description or "Bad request."))
        return error_response(
            ApiError(status, error.description or "HTTP error", "invalid_request_error",
                     (error.name or "error").lower().replace(" ", "_"))
        )

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", extra={"req_id": current_exchange().request_id})
        return error_response(errors.internal())

    def authorise() -> str:
        """The caller's key if it matches a configured key (constant time), else 401."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        exchange = current_exchange()
        exchange.auth = "present" if header else "none"
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.unauthorized()
        supplied = token.strip().encode()
        matched = False
        for key in state.api_keys:
            matched |= hmac.compare_digest(supplied, key)
        if not matched:
            raise errors.unauthorized()
        return token.strip()

    async def read_json() -> Any:
        data = await request.get_data(cache=False, as_text=False)
        if not data:
            raise errors.invalid_json("The request body is empty; send a JSON object.")
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise errors.invalid_json(f"The request body is not valid JSON: {exc}.") from None

    # ------------------------------------------------------------------ probes

    @app.route("/healthz", methods=["GET"])
    async def healthz() -> Response:
        return _json({"ok": True, "sandbox_mode": settings.sandbox_mode})

    @app.route("/readyz", methods=["GET"])
    async def readyz() -> Response:
        reasons: list[str] = []
        if lc.is_draining:
            reasons.append("draining")
        try:
            child.resolve_executable(settings)
        except child.SpawnError as exc:
            reasons.append(str(exc))
        for name, path in (("CODEX_HOME", settings.codex_home),
                           ("PROXY_CODEX_WORKDIR", settings.codex_workdir)):
            if not (path.is_dir() and os.access(path, os.W_OK)):
                reasons.append(f"{name} ({path}) is not a writable directory")
        if reasons:
            return _json({"ok": False, "reasons": reasons}, 503)
        return _json({"ok": True})

    # ------------------------------------------------------------------ models

    def models_auth() -> None:
        if settings.protect_models:
            authorise()

    @app.route("/v1/models", methods=["GET"], strict_slashes=False)
    async def list_models() -> Response:
        models_auth()
        data = [state.catalog.model_object(model) for model in state.catalog.listed()]
        return _json({"object": "list", "data": data})

    @app.route("/v1/models/<path:model_id>", methods=["GET"])
    async def get_model(model_id: str) -> Response:
        models_auth()
        return _json(state.catalog.lookup(model_id))

    # ------------------------------------------------------------------ usage

    @app.route("/v1/usage", methods=["GET"])
    async def usage_summary() -> Response:
        authorise()
        return _json(await _usage_aggregate())

    @app.route("/v1/usage/raw", methods=["GET"])
    async def usage_raw() -> Response:
        authorise()
        try:
            limit = int(request.args.get("limit", "100"))
        except ValueError:
            raise errors.invalid("'limit' must be an integer.", "limit") from None
        limit = max(1, min(limit, 10_000))
        records = await trio.to_thread.run_sync(read_usage, settings.token_log_path)
        return _json({"object": "list", "data": records[-limit:]})

    async def _usage_aggregate() -> dict[str, Any]:
        group = request.args.get("group", "day")
        if group not in ("hour", "day"):
            raise errors.invalid("'group' must be 'hour' or 'day'.", "group")
        records = await trio.to_thread.run_sync(read_usage, settings.token_log_path)
        data = accounting.aggregate(records, group=group, start=request.args.get("start"),
                                    end=request.args.get("end"))
        return {"object": "list", "group": group, "data": data}

    # ------------------------------------------------------------------ metrics, test hooks

    @app.route("/metrics", methods=["GET"])
    async def metrics_text() -> Response:
        state.metrics.active_streams.set(state.admission.counts.streams)
        return Response(
            state.metrics.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    if settings.test_endpoints:

        @app.route("/__test/conc", methods=["GET"])
        async def test_conc() -> Response:
            shared = await state.admission.shared_counts()
            local = state.admission.counts
            return _json({
                "streams": shared.streams, "children": shared.children,
                "local_streams": local.streams, "local_children": local.children,
                "stream_limit": state.admission.stream_limit,
                "child_limit": state.admission.child_limit,
                "redis": state.admission.redis is not None,
                "redis_degraded": state.admission.degraded,
            })

    # ------------------------------------------------------------------ completions

    @app.route("/v1/chat/completions", methods=["HEAD"])
    @app.route("/v1/completions", methods=["HEAD"])
    async def completion_probe() -> Response:
        return Response(b"", status=200, content_type=JSON_TYPE)

    @app.route("/v1/chat/completions", methods=["POST"])
    async def chat_completions() -> Response:
        return await complete(legacy=False)

    @app.route("/v1/completions", methods=["POST"])
    async def legacy_completions() -> Response:
        return await complete(legacy=True)

    def keepalive_seconds() -> float:
        if settings.sse_keepalive_ms <= 0:
            return 0.0
        agent = request.headers.get("User-Agent", "").lower()
        if any(marker in agent for marker in KEEPALIVE_OPT_OUT_AGENTS):
            return 0.0
        if request.headers.get("X-No-Keepalive", "").strip() in ("1", "true"):
            return 0.0
        if request.args.get("no_keepalive", "") in ("1", "true"):
            return 0.0
        return settings.sse_keepalive_ms / 1000

    async def complete(*, legacy: bool) -> Response:
        exchange = current_exchange()
        if lc.is_draining:
            exchange.outcome = "shutdown"
            raise errors.shutting_down()
        body = await read_json()
        key = authorise()
        parse = parse_legacy if legacy else parse_chat
        req = parse(body, state.catalog, max_prompt_tokens=settings.max_prompt_tokens)
        exchange.stream = req.stream
        exchange.model = req.model
        await state.admission.check_rate(key)
        try:
            admitted = await state.admission.acquire(req.stream)
        except ConcurrencyRejected as rejected:
            exchange.extra["conc"] = {
                "X-Conc-Before": rejected.before, "X-Conc-After": rejected.before,
                "X-Conc-Limit": rejected.limit,
            }
            raise
        slot = admitted.slot
        exchange.slots.append(slot)
        exchange.extra["conc"] = {
            "X-Conc-Before": admitted.before, "X-Conc-After": admitted.before + 1,
            "X-Conc-Limit": admitted.limit,
        }
        return await start_relay(exchange, req, slot)

    async def start_relay(exchange: Exchange, req: CompletionRequest, slot: Slot) -> Response:
        completion_id = ("cmpl-" if req.legacy else "chatcmpl-") + secrets.token_hex(12)
        created = int(time.time())
        try:
            program = child.resolve_executable(settings)
        except child.SpawnError as exc:
            await record_spawn_failure(exchange)
            raise errors.backend_unavailable(str(exc)) from None
        launch = child.Launch(
            argv=child.build_argv(settings, program, req.effective_model, req.effort),
            env=state.child_env,
            cwd=settings.codex_workdir,
        )
        renderer = (
            StreamRenderer(
                legacy=req.legacy, completion_id=completion_id, created=created,
                model=req.model, include_usage=req.include_usage,
            )
            if req.stream else None
        )
        completion = Completion(
            stream=req.stream, prompt_chars=len(req.prompt), max_tokens=req.max_tokens,
            tools=tool_policy,
        )
        timing = Timing(
            total=settings.timeout_ms / 1000,
            idle=(settings.stream_idle_timeout_ms if req.stream else settings.proto_idle_ms) / 1000,
            early_finalize=settings.nonstream_truncate_after_ms / 1000,
            keepalive=keepalive_seconds() if req.stream else 0.0,
            kill_grace=settings.child_kill_grace_ms / 1000,
        )

        async def on_done(relay: Relay) -> None:
            await slot.release()
            state.metrics.live_children.dec()
            state.live.value -= 1
            record_usage(exchange, req, relay)

        proto_log = state.proto_log

        def log_line(line: bytes) -> None:
            if proto_log is not None:
                proto_log.record({"ts": utc_now_iso(), "req_id": exchange.request_id,
                                  "line": line.decode("utf-8", "replace")})

        relay = Relay(
            request_id=exchange.request_id,
            on_line=log_line if proto_log is not None else None,
            prompt=req.prompt,
            completion=completion,
            launch=launch,
            timing=timing,
            lifecycle=lc,
            renderer=renderer,
            on_done=on_done,
            background=state.background,
        )
        assert exchange.nursery is not None
        try:
            await exchange.nursery.start(relay.run)
        except child.SpawnError as exc:
            await record_spawn_failure(exchange)
            raise errors.backend_unavailable(str(exc)) from None
        state.metrics.live_children.inc()
        state.live.value += 1
        exchange.slots.remove(slot)  # the relay releases it once the child is reaped
        if renderer is not None and relay.outbox is not None:
            response = Response(relay.outbox, status=200, headers=SSE_HEADERS)
            response.timeout = None
            return response
        await relay.decided.wait()
        error = completion.error
        if error is not None:
            return error_response(error)
        return _json(json_body(
            completion, legacy=req.legacy, completion_id=completion_id, created=created,
            model=req.model,
        ))

    async def record_spawn_failure(exchange: Exchange) -> None:
        for slot in exchange.slots:
            await slot.release()  # before the 503 goes out, so a retry finds the slot free
        exchange.outcome = "error"
        state.metrics.child_exits.labels("spawn_failed").inc()

    def record_usage(exchange: Exchange, req: CompletionRequest, relay: Relay) -> None:
        completion = relay.completion
        record = accounting.usage_record(exchange, req, relay)
        exchange.outcome = record["outcome"]
        if relay.exit is not None:
            state.metrics.child_exits.labels(relay.exit.cause).inc()
        if relay.first_text_at is not None:
            state.metrics.ttft.observe(relay.first_text_at - relay.started_at)
        if record["counts_source"] == "estimate":
            log.info("usage estimated (no token_count from codex)",
                     extra={"req_id": exchange.request_id})
        if completion.codex_error:
            log.warning("codex error: %s", completion.codex_error.splitlines()[0][:300],
                        extra={"req_id": exchange.request_id})
        if completion.end_cause is End.EOF or (relay.exit is not None and relay.exit.cause
                                               == "exited" and relay.exit.returncode):
            # The child died on its own: its stderr is the only account of why (never sent to
            # the client, which gets a clean envelope).
            log.warning("codex child exited early (code %s); stderr tail: %s",
                        relay.exit.returncode if relay.exit else None, relay.stderr.text(),
                        extra={"req_id": exchange.request_id})
        state.usage_log.record(record)

    return app
