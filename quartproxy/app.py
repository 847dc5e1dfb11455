"""The Quart-Trio application: wiring only.

Routes live in blueprints (:mod:`quartproxy.routes`), cross-cutting HTTP concerns (CORS,
request ids, error envelopes) in :mod:`quartproxy.middleware`, and the request path in
:class:`~quartproxy.service.CompletionService`. This module builds those from settings, keeps
them on :class:`AppState`, and starts the long-lived parts (usage writer, admission, backend) in
the app's nursery before the first request is served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from quart_trio import QuartTrio

from . import middleware
from .admission import Admission
from .asgi import Exchange, ExchangeConnection
from .backends.appserver.backend import AppServerBackend
from .backends.base import Backend
from .backends.proto.backend import ProtoBackend
from .config import Settings
from .direct import DirectRoutes
from .httpio import Handler
from .lifecycle import Lifecycle
from .models import ModelCatalog
from .observability import Metrics, NdjsonLog, write_access
from .routes import completions, models, probes, responses, test_hooks, usage
from .service import CompletionService
from .tracing import Tracing, build_tracing
from .usage_store import UsageStore

TRACE_FLUSH_S = 5.0


@dataclass
class AppState:
    settings: Settings
    lifecycle: Lifecycle
    catalog: ModelCatalog
    admission: Admission
    metrics: Metrics
    usage_log: NdjsonLog
    usage_store: UsageStore
    proto_log: NdjsonLog | None
    api_keys: list[bytes]
    backend: Backend
    service: CompletionService
    tracing: Tracing
    direct: DirectRoutes | None = None

    def exchange_started(self, exchange: Exchange, scope: Any) -> None:
        exchange.span = self.tracing.server(
            method=exchange.method, path=exchange.path, request_id=exchange.request_id,
            user_agent=exchange.user_agent, headers=scope.get("headers", ()),
        )

    def exchange_finished(self, exchange: Exchange) -> None:
        fields = exchange.access_fields()
        write_access(fields)
        route = exchange.route or "unmatched"
        self.metrics.requests_by(route, str(fields["status"])).inc()
        self.metrics.latency_by(route).observe(fields["dur_ms"] / 1000)
        span = exchange.span
        if span.recording:
            status = int(fields["status"])
            if exchange.route is not None:
                span.rename(f"{exchange.method} {exchange.route}")
            span.update({"http.route": exchange.route, "http.response.status_code": status,
                         "quartproxy.outcome": fields["outcome"]})
            if status >= 500:
                span.fail(f"HTTP {status}")
            span.end()


class ProxyApp(QuartTrio):
    asgi_http_class = ExchangeConnection
    state: AppState

    def exchange_started(self, exchange: Exchange, scope: Any) -> None:
        self.state.exchange_started(exchange, scope)

    def exchange_finished(self, exchange: Exchange) -> None:
        self.state.exchange_finished(exchange)

    def direct_route(self, scope: Any) -> Callable[..., Awaitable[None]] | None:
        direct = self.state.direct
        return direct.match(scope) if direct is not None else None


def proto_log_for(settings: Settings) -> NdjsonLog | None:
    return NdjsonLog(settings.proto_log_path) if settings.log_proto or settings.dev else None


def create_app(
    settings: Settings,
    lifecycle: Lifecycle | None = None,
    *,
    backend: Backend | None = None,
    proto_log: NdjsonLog | None = None,
    tracing: Tracing | None = None,
) -> ProxyApp:
    """The app; raises :class:`~quartproxy.tracing.TracingUnavailable` when tracing is on and
    its packages are missing."""
    app = ProxyApp(__name__)
    # "/v1//chat/completions" is an unknown path (404 envelope), not a redirect to an HTML page.
    app.url_map.merge_slashes = False
    app.config["RESPONSE_TIMEOUT"] = None  # our own timers end streams, with [DONE]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = max(60, settings.timeout_ms / 1000)
    lifecycle = lifecycle or Lifecycle()
    tracing = tracing or build_tracing(settings)
    catalog = ModelCatalog(settings)
    metrics = Metrics(models=catalog.known_ids())
    admission = Admission(settings, metrics)
    usage_log = NdjsonLog(settings.token_log_path, max_bytes=settings.usage_log_max_bytes,
                          keep=settings.usage_log_keep)
    if backend is None:
        proto_log = proto_log or proto_log_for(settings)
        backend = ProtoBackend(
            settings, lifecycle, on_line=proto_log.record_line if proto_log else None
        )
    service = CompletionService(
        settings=settings, backend=backend, admission=admission, metrics=metrics,
        usage_log=usage_log, lifecycle=lifecycle, tracing=tracing,
    )
    metrics.watch_workers(backend if isinstance(backend, AppServerBackend) else None)
    app.state = AppState(
        settings=settings,
        lifecycle=lifecycle,
        catalog=catalog,
        admission=admission,
        metrics=metrics,
        usage_log=usage_log,
        usage_store=UsageStore(settings.token_log_path),
        proto_log=proto_log,
        api_keys=[key.encode() for key in settings.api_keys],
        backend=backend,
        service=service,
        tracing=tracing,
    )
    middleware.install(app, settings)
    for blueprint in (probes.blueprint, models.blueprint, usage.blueprint,
                      completions.blueprint):
        app.register_blueprint(blueprint)
    if settings.enable_responses:
        app.register_blueprint(responses.blueprint)
    if settings.test_endpoints:
        app.register_blueprint(test_hooks.blueprint)
    direct_routes: dict[str, Handler] = {
        "/v1/chat/completions": completions.chat, "/v1/completions": completions.legacy,
    }
    if settings.enable_responses:
        direct_routes["/v1/responses"] = responses.respond
    app.state.direct = DirectRoutes(app.state, direct_routes)

    @app.before_serving
    async def _start() -> None:
        state = app.state
        await app.nursery.start(state.usage_log.run)
        await app.nursery.start(state.usage_store.run)
        if state.proto_log is not None:
            await app.nursery.start(state.proto_log.run)
        await app.nursery.start(state.admission.run)
        await app.nursery.start(state.backend.run)
        await app.nursery.start(state.service.run)

    @app.after_serving
    async def _stop() -> None:
        await app.state.backend.aclose()
        app.state.usage_log.close()
        if app.state.proto_log is not None:
            app.state.proto_log.close()
        if app.state.tracing.enabled:
            # Send what is buffered, but never hold the exit for an unreachable collector.
            with trio.CancelScope(shield=True, deadline=trio.current_time() + TRACE_FLUSH_S):
                await trio.to_thread.run_sync(app.state.tracing.shutdown,
                                              abandon_on_cancel=True)

    return app
