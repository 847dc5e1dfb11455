"""The request path without HTTP: admit a validated request, run its turn, account for it.

:class:`CompletionService` is what the completion routes (chat, legacy, Responses) call once a
request is parsed, authorised and validated. It owns the order the spec gives — rate limit,
concurrency slot, turn — and everything that happens when a turn ends: the slot is released
(after the backend has ended the turn), running turns are counted down, the usage record is
written and the metrics are updated. Its dependencies come in through the constructor, so a
test can build one over a :class:`~quartproxy.backends.memory.MemoryBackend` and a plain trio
nursery, without a server.

Rendering is not its business: the route passes a renderer for streams and renders the final
state itself otherwise, so chat, legacy and Responses are three renderings of one turn.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import partial

import trio
import trio_util

from . import accounting, errors
from .admission import Admission, ConcurrencyRejected, Slot
from .asgi import Exchange
from .backends.base import Backend, BackendRejected, BackendUnavailable, TurnRequest
from .completion import Completion
from .config import Settings
from .lifecycle import Lifecycle
from .observability import Metrics, NdjsonLog
from .relay import Relay
from .render import Renderer
from .timers import Timing, TurnClock
from .tool_request import flatten_tool_history
from .toolblocks import ToolPolicy
from .tracing import Span, Tracing
from .validation import CompletionRequest

log = logging.getLogger("quartproxy.service")


def tool_policy(settings: Settings) -> ToolPolicy:
    return ToolPolicy(
        stop_after=settings.stop_after_tools,
        mode=settings.stop_after_tools_mode,
        grace_s=settings.stop_after_tools_grace_ms / 1000,
        max_blocks=settings.tool_block_max,
        suppress_tail=settings.suppress_tail_after_tools,
    )


class CompletionService:
    def __init__(
        self,
        *,
        settings: Settings,
        backend: Backend,
        admission: Admission,
        metrics: Metrics,
        usage_log: NdjsonLog,
        lifecycle: Lifecycle,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.admission = admission
        self.metrics = metrics
        self.usage_log = usage_log
        self.lifecycle = lifecycle
        self.tracing = tracing or Tracing()
        self.tool_policy = tool_policy(settings)
        # The one count of running turns: tests and shutdown wait on it, /metrics reads it.
        self.running: trio_util.AsyncValue[int] = trio_util.AsyncValue(0)
        # Set by run(): where turns go when a disconnect must not end them.
        self._background: trio.Nursery | None = None
        metrics.turns_running.set_function(lambda: self.running.value)
        metrics.live_children.set_function(lambda: self.running.value)
        metrics.active_streams.set_function(lambda: self.admission.occupancy.streams)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background nursery used by ``PROXY_KILL_ON_DISCONNECT=false``."""
        async with trio.open_nursery() as nursery:
            self._background = nursery
            task_status.started()
            await trio.sleep_forever()

    def timing(self, req: CompletionRequest, keepalive_s: float) -> Timing:
        settings = self.settings
        idle_ms = settings.stream_idle_timeout_ms if req.stream else settings.proto_idle_ms
        return Timing(
            total=settings.timeout_ms / 1000,
            idle=idle_ms / 1000,
            early_finalize=settings.nonstream_truncate_after_ms / 1000,
            keepalive=keepalive_s if req.stream else 0.0,
        )

    async def start(
        self,
        req: CompletionRequest,
        exchange: Exchange,
        *,
        key: str,
        renderer: Renderer | None,
        keepalive_s: float = 0.0,
    ) -> Relay:
        """Admit ``req`` and start its turn; the returned relay's outbox (stream) or
        ``decided`` event (non-stream) is what the route answers from.

        Raises :class:`~quartproxy.errors.ApiError` (429, 503, 400) before any byte is sent.
        """
        if self.lifecycle.is_draining:
            exchange.outcome = "shutdown"
            raise errors.shutting_down()
        req = self.fit_tools(req)
        with self.tracing.child(exchange.span, "admission",
                                {"quartproxy.stream": req.stream}) as admission_span:
            await self.admission.check_rate(key)
            try:
                admitted = await self.admission.acquire(req.stream)
            except ConcurrencyRejected as rejected:
                exchange.admission = rejected
                raise
            admission_span.set("quartproxy.admission.before", admitted.before)
        exchange.admission = admitted
        slot = admitted.slot
        if self.lifecycle.is_draining:  # the drain began while this request waited for a slot
            await slot.release()
            exchange.outcome = "shutdown"
            raise errors.shutting_down()
        exchange.cleanups.append(slot.release)  # until the relay owns the slot
        completion = Completion(
            stream=req.stream, prompt_chars=len(req.prompt), max_tokens=req.max_tokens,
            tools=self.tool_policy, parallel_calls=req.parallel_calls,
            prompt_param=req.prompt_param,
        )
        clock = TurnClock(
            self.timing(req, keepalive_s), stream=req.stream, started_at=trio.current_time(),
            tools=self.tool_policy,
        )
        turn_span = self.tracing.child(exchange.span, "codex.turn", {
            "quartproxy.backend": self.backend.capabilities.name,
            "quartproxy.stream": req.stream,
            "gen_ai.request.model": req.model,
            "quartproxy.effective_model": req.effective_model,
        })
        relay = Relay(
            backend=self.backend,
            request=TurnRequest(
                request_id=exchange.request_id,
                conversation=req.conversation,
                model=req.effective_model,
                effort=req.effort,
                tools=req.tools,
                output_schema=req.output_schema,
            ),
            completion=completion,
            clock=clock,
            lifecycle=self.lifecycle,
            renderer=renderer,
            on_open=self._opened,
            on_done=partial(self._done, exchange, req, slot, turn_span),
            on_keepalive=self.metrics.keepalives.inc,
        )
        detach = not self.settings.kill_on_disconnect and self._background is not None
        nursery = self._background if detach else exchange.nursery
        assert nursery is not None
        try:
            await nursery.start(relay.run)
        except BackendUnavailable as exc:
            turn_span.fail(f"backend unavailable: {exc}")
            turn_span.end()
            await self._refused(exchange, slot, "backend_unavailable")
            if exc.code == "concurrency_exceeded":  # every worker is carrying all it may
                raise errors.ApiError(429, str(exc), "rate_limit_error",
                                      "concurrency_exceeded") from None
            raise errors.ApiError(503, str(exc), "server_error", exc.code) from None
        except BackendRejected as exc:
            turn_span.set("quartproxy.error.code", "backend_rejected")
            turn_span.end()
            await self._refused(exchange, slot, "backend_rejected")
            raise errors.invalid(str(exc), exc.param) from None
        except BaseException:
            turn_span.end()
            raise
        exchange.cleanups.remove(slot.release)  # the relay releases it once the turn is over
        if detach:

            async def left() -> None:
                relay.client_left()

            exchange.cleanups.append(left)
        return relay

    def fit_tools(self, req: CompletionRequest) -> CompletionRequest:
        """Decide what becomes of the request's tools on this backend.

        ``PROXY_TOOLS=ignore`` drops them and turns tool history into text (clients that always
        send tools keep working). Otherwise tools that would be used (``tool_choice`` other than
        ``none``) need a backend with native function calling, or the client gets a 400 that
        says what would serve it.
        """
        tools = req.tools
        if self.settings.tools_mode == "ignore":
            if tools is None and not req.conversation.has_tool_history:
                return req
            if tools is not None:
                log.info("PROXY_TOOLS=ignore: %d tool(s) dropped", len(tools.tools))
            return replace(req, tools=None,
                           conversation=flatten_tool_history(req.conversation))
        if tools is None:
            return req
        capabilities = self.backend.capabilities
        if not capabilities.tools:
            if tools.choice == "none":
                return replace(req, tools=None)
            raise errors.ApiError(
                400, capabilities.tools_reason or "Function calling (tools) is not available "
                "on this backend.", "invalid_request_error", "unsupported_parameter", "tools",
            )
        if any(tool.strict for tool in tools.tools):
            log.info("strict function schemas are accepted but not enforced by codex")
        return req

    async def _refused(self, exchange: Exchange, slot: Slot, cause: str) -> None:
        await slot.release()  # before the error goes out, so a retry finds the slot free
        exchange.outcome = "error"
        self.metrics.child_exits_by(cause).inc()

    # ------------------------------------------------------------------ turn end

    def _opened(self, relay: Relay) -> None:
        self.running.value += 1

    async def _done(
        self, exchange: Exchange, req: CompletionRequest, slot: Slot, span: Span, relay: Relay
    ) -> None:
        self.running.value -= 1
        await slot.release()
        turn = relay.turn
        assert turn is not None
        diagnostics = turn.diagnostics
        now = trio.current_time()
        record = accounting.TurnRecord(
            request_id=exchange.request_id,
            route=exchange.route,
            user_agent=exchange.user_agent,
            request=req,
            completion=relay.completion,
            client_gone=relay.client_gone,
            duration_s=now - relay.started_at,
            ttft_s=(relay.first_text_at - relay.started_at)
            if relay.first_text_at is not None else None,
            diagnostics=diagnostics,
        )
        fields = accounting.usage_record(record)
        exchange.outcome = fields["outcome"]
        if diagnostics.exit_cause is not None:
            self.metrics.child_exits_by(diagnostics.exit_cause).inc()
        if record.ttft_s is not None:
            self.metrics.ttft.observe(record.ttft_s)
        error = relay.completion.error
        self.metrics.turn_finished(fields, (error.code or "unknown") if error else None)
        if span.recording:
            self._trace_turn(span, record, fields)
        extra = {"req_id": exchange.request_id}
        if fields["counts_source"] == "estimate":
            log.info("usage estimated (no token counts from codex)", extra=extra)
        completion = relay.completion
        if completion.backend_error_text:
            log.warning("codex error: %s", completion.backend_error_text.splitlines()[0][:300],
                        extra=extra)
        tools = req.tools
        if (tools is not None and tools.choice in ("required", "function")
                and not completion.calls and completion.finish_reason is not None):
            # codex cannot force a call; the nudge in the instructions was not followed.
            log.info("tool_choice_not_honoured: tool_choice %r, the model answered without a "
                     "call", tools.choice, extra=extra)
        if completion.calls_dropped:
            log.info("parallel_tool_calls is false: %d further call(s) dropped",
                     completion.calls_dropped, extra=extra)
        if diagnostics.died_early:
            # The process died on its own: its stderr is the only account of why (never sent
            # to the client, which gets a clean envelope).
            log.warning("codex exited early (code %s); stderr tail: %s",
                        diagnostics.returncode, diagnostics.stderr_tail, extra=extra)
        self.usage_log.record(fields)

    @staticmethod
    def _trace_turn(span: Span, record: accounting.TurnRecord, fields: dict[str, object]
                    ) -> None:
        diagnostics = record.diagnostics
        span.update({
            "quartproxy.worker": diagnostics.worker,
            "quartproxy.thread_id": diagnostics.thread_id,
            "quartproxy.exit_cause": diagnostics.exit_cause,
            "quartproxy.ttft_ms": fields["ttft_ms"],
            "quartproxy.finish_reason": fields["finish_reason"],
            "quartproxy.outcome": fields["outcome"],
            "quartproxy.counts_source": fields["counts_source"],
            "gen_ai.usage.input_tokens": fields["prompt_tokens"],
            "gen_ai.usage.output_tokens": fields["completion_tokens"],
        })
        if record.ttft_s is not None:
            # Durations are trio's clock (monotonic); spans are stamped in wall-clock time.
            ago_s = record.duration_s - record.ttft_s
            span.event("first_token", timestamp_ns=time.time_ns() - int(ago_s * 1e9))
        error = record.completion.error
        if error is not None:
            span.set("quartproxy.error.code", error.code)
            if error.status >= 500:
                span.fail(error.message)
        span.end()
