"""OpenTelemetry traces, off unless ``PROXY_OTEL_ENABLED=true``.

Three spans per completion request, all carrying the request id (``quartproxy.request_id``):

* the HTTP request (kind SERVER, ``{method} {route}``), from the first byte in to the last byte
  out of a stream; a W3C ``traceparent`` from the client makes it a child of the caller's span;
* ``admission``: the rate limit and the wait for a concurrency slot;
* ``codex.turn``: the backend turn, from opening it (spawning a proto child, or starting a thread
  on an app-server worker) until it has ended, with the worker and thread ids, the time to
  first token (an attribute, and a ``first_token`` event), the finish reason and token counts.

The SDK is an optional extra (``pip install 'quartproxy[otel]'``) and is imported only when
tracing is on; with it off every span is :data:`NO_SPAN`, whose methods do nothing, so the
request path carries no ``if tracing`` branches. The exporter is configured the standard way:
``OTEL_TRACES_EXPORTER`` (default ``otlp``; ``console``, ``none`` or any installed exporter),
``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (``http/protobuf`` default, ``grpc`` with its package),
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``/``HEADERS``/``TIMEOUT``, ``OTEL_SERVICE_NAME``
(default ``quartproxy``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER[_ARG]``,
``OTEL_BSP_*`` and ``OTEL_PROPAGATORS`` are read by the SDK itself.

Each app has its own tracer provider (never the process-global one), so several apps in one
process — the tests — do not share spans.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from . import __version__
from .config import Settings
from .errors import ApiError

REQUEST_ID = "quartproxy.request_id"
INSTALL_HINT = "pip install 'quartproxy[otel]'"


class TracingUnavailable(Exception):
    """Tracing is on but cannot work; ``str()`` is the one-line start-up message."""


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in attributes.items() if value is not None}


class Span:
    """A started span, or nothing (tracing off): then every method is a no-op."""

    __slots__ = ("_ended", "_span", "request_id")

    def __init__(self, span: Any = None, request_id: str | None = None) -> None:
        self._span = span
        self._ended = False
        self.request_id = request_id

    @property
    def recording(self) -> bool:
        return self._span is not None

    def set(self, key: str, value: Any) -> None:
        if self._span is not None and value is not None:
            self._span.set_attribute(key, value)

    def update(self, attributes: Mapping[str, Any]) -> None:
        if self._span is not None:
            self._span.set_attributes(_clean(attributes))

    def event(self, name: str, attributes: Mapping[str, Any] | None = None,
              timestamp_ns: int | None = None) -> None:
        if self._span is not None:
            self._span.add_event(name, _clean(attributes or {}), timestamp=timestamp_ns)

    def rename(self, name: str) -> None:
        if self._span is not None:
            self._span.update_name(name)

    def fail(self, description: str) -> None:
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, description))

    def end(self) -> None:
        if self._span is not None and not self._ended:
            self._ended = True
            self._span.end()

    def __enter__(self) -> Span:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, ApiError):
            self.set("quartproxy.error.code", exc.code)
            self.set("quartproxy.error.status", exc.status)
        elif isinstance(exc, Exception):
            self.fail(f"{type(exc).__name__}: {exc}")
        self.end()


NO_SPAN = Span()


class Tracing:
    """Starts spans on this app's tracer; a disabled instance hands out :data:`NO_SPAN`."""

    def __init__(self, provider: Any = None) -> None:
        self.provider = provider
        self._tracer = (
            provider.get_tracer("quartproxy", __version__) if provider is not None else None
        )

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def server(
        self, *, method: str, path: str, request_id: str, user_agent: str,
        headers: Iterable[tuple[bytes, bytes]],
    ) -> Span:
        """The HTTP request's span, a child of the caller's ``traceparent`` if it sent one."""
        if self._tracer is None:
            return NO_SPAN
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        carrier = {bytes(key).decode("latin-1").lower(): bytes(value).decode("latin-1")
                   for key, value in headers}
        span = self._tracer.start_span(
            method, context=propagate.extract(carrier), kind=SpanKind.SERVER,
            attributes=_clean({
                "http.request.method": method,
                "url.path": path,
                "user_agent.original": user_agent or None,
                REQUEST_ID: request_id,
            }),
        )
        return Span(span, request_id)

    def child(self, parent: Span, name: str, attributes: Mapping[str, Any] | None = None
              ) -> Span:
        """An internal span under ``parent``, with the parent's request id."""
        if self._tracer is None or not parent.recording:
            return NO_SPAN
        from opentelemetry import trace

        span = self._tracer.start_span(
            name, context=trace.set_span_in_context(parent._span),
            attributes=_clean({**(attributes or {}), REQUEST_ID: parent.request_id}),
        )
        return Span(span, parent.request_id)

    def shutdown(self) -> None:
        """Flush and stop the exporters (blocking: run it in a thread, with a deadline)."""
        if self.provider is not None:
            self.provider.shutdown()


def _exporter_names() -> list[str]:
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    return [name.strip().lower() for name in raw.split(",") if name.strip()]


def _otlp_entry_point() -> str:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if protocol == "http/protobuf":
        return "otlp_proto_http"
    if protocol == "grpc":
        return "otlp_proto_grpc"
    raise TracingUnavailable(
        f"OTLP protocol {protocol!r} is not supported for traces: use http/protobuf or grpc"
    )


def _load_exporter(name: str) -> Any:
    from importlib.metadata import entry_points

    entry = _otlp_entry_point() if name == "otlp" else name
    found = list(entry_points(group="opentelemetry_traces_exporter", name=entry))
    if not found:
        package = {
            "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
            "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
        }.get(entry, f"the package that provides the {entry!r} exporter")
        raise TracingUnavailable(
            f"OTEL_TRACES_EXPORTER={name}: no such trace exporter is installed "
            f"(install {package})"
        )
    try:
        return found[0].load()()
    except ImportError as exc:
        raise TracingUnavailable(
            f"OTEL_TRACES_EXPORTER={name}: the exporter cannot be loaded ({exc})"
        ) from None


def build_tracing(settings: Settings) -> Tracing:
    """Tracing as configured; raises :class:`TracingUnavailable` when it is on and cannot
    work (the SDK missing, an unknown exporter), so the server does not start without it."""
    if not settings.otel_enabled:
        return Tracing()
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            f"PROXY_OTEL_ENABLED=true needs the OpenTelemetry SDK ({exc.name or exc} is "
            f"missing): {INSTALL_HINT}"
        ) from None
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "quartproxy"}))
    exporters = [_load_exporter(name) for name in _exporter_names() if name != "none"]
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)
