"""Running the app under Hypercorn's trio worker, and graceful shutdown.

Shutdown is trio cancellation driven by two events on :class:`~quartproxy.lifecycle.Lifecycle`.
The timeline of a drain (``PROXY_SHUTDOWN_GRACE_MS``, default 10 s):

1. first SIGTERM/SIGINT: ``draining`` is set. The listener stays open, so a load balancer's
   probes still get an answer: ``/readyz`` says 503 ``draining``, a new completion gets 503
   ``shutting_down`` with ``Retry-After``, and every HTTP/1 response carries
   ``Connection: close``, so keep-alive clients reconnect — through the balancer, to another
   replica. In-flight turns run on undisturbed.
2. when the last in-flight turn has ended — on its own, or finalized at step 3 — the listener
   closes and Hypercorn ends idle keep-alive connections and waits for responses still being
   written (``graceful_timeout``, the child kill grace plus a margin); the process exits 0.
   A server with nothing in flight gets here at once.
3. after the grace — or at once on a second signal — ``finalize_now`` is set: every relay stops
   reading, writes its last frames (finish ``length``, usage, ``[DONE]``) and reaps its child
   within the child kill grace, which ends the drain as in step 2. Should a turn not end even
   then, the listener closes anyway once grace, kill grace and a margin have passed.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from .app import ProxyApp, create_app, proto_log_for
from .backends import Backend, create_backend
from .config import Settings
from .connections import install as install_connection_fixes
from .lifecycle import Lifecycle

log = logging.getLogger("quartproxy.server")

FLUSH_MARGIN_S = 1.0


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    host = settings.host
    config.bind = [f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"]
    config.accesslog = None  # we write our own access log with request ids and outcomes
    config.errorlog = logging.getLogger("quartproxy.hypercorn")
    # Counted from the moment the listener closes, which is after every turn has ended (see the
    # module docstring): what is left is writing the last bytes of responses.
    config.graceful_timeout = settings.child_kill_grace_ms / 1000 + FLUSH_MARGIN_S
    config.keep_alive_timeout = 75
    config.h11_max_incomplete_size = 64 * 1024
    config.include_server_header = False
    return config


def describe(settings: Settings, backend: Backend) -> str:
    """How the start-up line names the backend."""
    caps = backend.capabilities
    if settings.demo:
        return f"demo backend ({caps.name})"
    if caps.name == "app-server":
        return (f"codex {caps.version} app-server backend ({settings.workers} workers, "
                f"{settings.codex_bin})")
    if caps.name == "proto":
        version = f" {caps.version}" if caps.version else ""
        return f"codex{version} proto backend ({settings.codex_bin})"
    return f"codex ({settings.codex_bin}): not available, see /readyz"


async def serve(
    settings: Settings,
    *,
    on_ready: Callable[[list[str], str], None] | None = None,
    lifecycle: Lifecycle | None = None,
    handle_signals: bool = True,
    app_ready: Callable[[ProxyApp], None] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    install_connection_fixes()
    lifecycle = lifecycle or Lifecycle()
    proto_log = proto_log_for(settings)
    backend = await create_backend(
        settings, lifecycle, on_line=proto_log.record_line if proto_log is not None else None
    )
    app = create_app(settings, lifecycle, backend=backend, proto_log=proto_log)
    if app_ready is not None:
        app_ready(app)
    config = hypercorn_config(settings)
    grace_s = settings.shutdown_grace_ms / 1000
    drain_limit_s = grace_s + settings.child_kill_grace_ms / 1000 + FLUSH_MARGIN_S

    async def shutdown_trigger() -> None:
        """Hypercorn closes the listener when this returns: once draining and nothing runs."""
        await lifecycle.draining.wait()
        with trio.move_on_after(drain_limit_s):
            await app.state.service.running.wait_value(0)

    async def grace_timer() -> None:
        await lifecycle.draining.wait()
        log.info("draining: grace %.1fs before in-flight requests are finalized", grace_s)
        with trio.move_on_after(grace_s):
            await lifecycle.finalize_now.wait()
        lifecycle.finalize()

    async def signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for signum in received:
                name = signal.Signals(signum).name
                if not lifecycle.is_draining:
                    log.info("%s received: shutting down", name)
                    lifecycle.start_drain()
                else:
                    log.info("%s received again: finalizing now", name)
                    lifecycle.finalize()

    async with trio.open_nursery() as nursery:

        async def run_server(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await hypercorn_serve(
                app, config, shutdown_trigger=shutdown_trigger, task_status=task_status
            )
            nursery.cancel_scope.cancel()  # the signal watcher and grace timer go with it

        if handle_signals:
            nursery.start_soon(signals)
        nursery.start_soon(grace_timer)
        binds = await nursery.start(run_server)
        if on_ready is not None:
            on_ready(binds, describe(settings, backend))
        task_status.started(binds)
