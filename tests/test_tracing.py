"""OpenTelemetry traces, recorded with the SDK's in-memory exporter: the server span (a child of
the client's traceparent), admission and the backend turn, each with the request id."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_util
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from quartproxy import cli
from quartproxy.admission import Admission
from quartproxy.asgi import Exchange
from quartproxy.backends.base import Capabilities, TurnRequest
from quartproxy.backends.memory import MemoryBackend, MemoryTurn
from quartproxy.events import Counts, Delta, Message, TaskComplete, TokenCount
from quartproxy.lifecycle import Lifecycle
from quartproxy.models import ModelCatalog
from quartproxy.observability import Metrics, NdjsonLog
from quartproxy.service import CompletionService
from quartproxy.tracing import REQUEST_ID, Tracing, TracingUnavailable, build_tracing
from quartproxy.validation import parse_chat

from .conftest import API_KEY, AUTH, StartProxy, chat_body, make_settings, read_stream

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Recorder(SimpleSpanProcessor):
    """The in-memory exporter behind a processor that also counts ended spans, so a test can
    wait for them."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        super().__init__(self.exporter)
        self.ended = trio_util.AsyncValue(0)

    def on_end(self, span: ReadableSpan) -> None:
        super().on_end(span)
        self.ended.value += 1


def recorder(tracing: Tracing) -> Recorder:
    processor = Recorder()
    tracing.provider.add_span_processor(processor)
    return processor


async def finished_spans(recorded: Recorder, count: int) -> list[ReadableSpan]:
    """The spans once ``count`` have ended (the server span ends after the last byte is sent,
    so it can end just after the client has its answer)."""
    with trio.fail_after(15):  # a hang guard
        await recorded.ended.wait_value(lambda n: n >= count)
    return list(recorded.exporter.get_finished_spans())


def by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_request_admission_and_turn_spans(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    proxy = await start_proxy(otel_enabled=True)
    exporter = recorder(proxy.state.tracing)
    async with proxy.client() as client:
        resp, raw = await read_stream(
            client, "/v1/chat/completions", chat_body(stream=True),
            headers={"traceparent": TRACEPARENT, "X-Request-Id": "trace-me-1"})
    assert resp.status_code == 200 and raw.endswith(b"data: [DONE]\n\n")
    spans = by_name(await finished_spans(exporter, 3))
    server = spans["POST /v1/chat/completions"]
    admission = spans["admission"]
    turn = spans["codex.turn"]

    assert server.kind is SpanKind.SERVER
    assert server.context is not None and server.parent is not None
    assert format(server.context.trace_id, "032x") == TRACE_ID  # the client's trace
    assert format(server.parent.span_id, "016x") == PARENT_ID  # the client's span is the parent
    server_attrs = attributes(server)
    assert server_attrs["http.request.method"] == "POST"
    assert server_attrs["http.route"] == "/v1/chat/completions"
    assert server_attrs["http.response.status_code"] == 200
    for span in (admission, turn):
        assert span.parent is not None and span.parent.span_id == server.context.span_id
        assert span.context is not None and span.context.trace_id == server.context.trace_id
    for span in (server, admission, turn):
        assert attributes(span)[REQUEST_ID] == "trace-me-1"

    turn_attrs = attributes(turn)
    assert turn_attrs["quartproxy.backend"] == "proto"
    assert turn_attrs["quartproxy.finish_reason"] == "stop"
    assert turn_attrs["gen_ai.usage.input_tokens"] == 1200
    assert turn_attrs["gen_ai.request.model"] == "codex-5"
    assert turn_attrs["quartproxy.ttft_ms"] >= 0
    (first_token,) = [event for event in turn.events if event.name == "first_token"]
    assert turn.start_time is not None and turn.end_time is not None
    assert turn.start_time <= first_token.timestamp <= turn.end_time
    assert admission.start_time is not None and server.start_time is not None
    assert server.start_time <= admission.start_time
    await proxy.wait_idle()


async def test_no_traceparent_starts_a_trace_and_errors_are_marked(
    start_proxy: StartProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    proxy = await start_proxy(otel_enabled=True, max_concurrency=1)
    exporter = recorder(proxy.state.tracing)
    async with proxy.client() as client:
        resp = await client.post("/v1/chat/completions",
                                 json=chat_body("SCENARIO=crash_immediately"), headers=AUTH)
    assert resp.status_code == 502
    spans = by_name(await finished_spans(exporter, 3))
    server = spans["POST /v1/chat/completions"]
    assert server.parent is None
    assert server.status.status_code is StatusCode.ERROR
    turn = spans["codex.turn"]
    assert attributes(turn)["quartproxy.error.code"] == "backend_error"
    assert turn.status.status_code is StatusCode.ERROR
    await proxy.wait_idle()


async def test_tracing_off_records_nothing(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()
    assert not proxy.state.tracing.enabled
    async with proxy.client() as client:
        assert (await client.post("/v1/chat/completions", json=chat_body(),
                                  headers=AUTH)).status_code == 200
    await proxy.wait_idle()


# ----------------------------------------------------------------- worker and thread ids


class WorkerBackend(MemoryBackend):
    """A scripted backend whose turns report an app-server worker and thread, as
    ``ThreadRoute`` does."""

    @asynccontextmanager
    async def open_turn(self, request: TurnRequest) -> AsyncIterator[MemoryTurn]:
        async with super().open_turn(request) as turn:
            turn.diagnostics.worker = "w1.4"
            turn.diagnostics.thread_id = "thread-abc"
            yield turn


async def test_turn_span_carries_worker_and_thread(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    provider = TracerProvider()
    tracing = Tracing(provider)
    exporter = recorder(tracing)
    metrics = Metrics()
    script = [[Delta("Hi"), Delta(" there")], Message("Hi there"),
              TokenCount(Counts(input_tokens=30, output_tokens=2)), TaskComplete("Hi there")]
    backend = WorkerBackend(script, capabilities=Capabilities(name="app-server"))
    service = CompletionService(
        settings=settings, backend=backend, admission=Admission(settings, metrics),
        metrics=metrics, usage_log=NdjsonLog(tmp_path / "usage.ndjson"),
        lifecycle=Lifecycle(), tracing=tracing,
    )
    req = parse_chat(chat_body(), ModelCatalog(settings), max_prompt_tokens=0)
    async with trio.open_nursery() as nursery:
        exchange = Exchange(request_id="req-42", method="POST", path="/v1/chat/completions",
                            user_agent="test", nursery=nursery)
        exchange.span = tracing.server(method="POST", path=exchange.path,
                                       request_id=exchange.request_id, user_agent="test",
                                       headers=[(b"traceparent", TRACEPARENT.encode())])
        relay = await service.start(req, exchange, key=API_KEY, renderer=None)
        await relay.finished.wait()
        exchange.span.end()
    spans = by_name(list(exporter.exporter.get_finished_spans()))
    turn = attributes(spans["codex.turn"])
    assert turn["quartproxy.worker"] == "w1.4"
    assert turn["quartproxy.thread_id"] == "thread-abc"
    assert turn["quartproxy.backend"] == "app-server"
    assert turn["gen_ai.usage.input_tokens"] == 30 and turn[REQUEST_ID] == "req-42"
    assert relay.completion.text() == "Hi there"


# ----------------------------------------------------------------- configuration


def test_missing_sdk_is_a_clear_start_up_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in ("opentelemetry.sdk", "opentelemetry.sdk.trace", "opentelemetry.sdk.resources",
                   "opentelemetry.sdk.trace.export"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(TracingUnavailable, match=r"pip install 'quartproxy\[otel\]'"):
        build_tracing(make_settings(tmp_path, otel_enabled=True))
    assert not build_tracing(make_settings(tmp_path)).enabled  # off: nothing is imported

    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("PROXY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PROXY_OTEL_ENABLED", "true")
    monkeypatch.setenv("PROXY_API_KEY", "k")
    code = cli.main(["serve", "--demo", "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("quartproxy: PROXY_OTEL_ENABLED=true needs the OpenTelemetry SDK")
    assert "Traceback" not in "\n".join(err)


def test_exporters_from_the_standard_variables(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path, otel_enabled=True)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "no_such_exporter")
    with pytest.raises(TracingUnavailable, match="no_such_exporter"):
        build_tracing(settings)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(TracingUnavailable, match="http/json"):
        build_tracing(settings)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")  # default: OTLP over HTTP
    monkeypatch.setenv("OTEL_SERVICE_NAME", "proxy-eu-1")
    tracing = build_tracing(settings)
    assert tracing.enabled
    assert tracing.provider.resource.attributes["service.name"] == "proxy-eu-1"
    tracing.shutdown()  # nothing recorded: nothing to send
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,none")
    tracing = build_tracing(settings)
    assert tracing.provider.resource.attributes["service.name"] == "quartproxy"
    tracing.shutdown()
