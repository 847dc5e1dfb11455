"""Hypercorn's per-connection server for trio, with three races fixed.

Hypercorn runs each connection as a :class:`hypercorn.trio.tcp_server.TCPServer`: a reader task
(``run`` → ``_read_data``), the request's application task, which writes through
``protocol_send``, and an *idle task* that closes a keep-alive connection after
``keep_alive_timeout`` (or at once when the server terminates). The socket is closed only when
all of them are done. Three races in that arrangement cost us sockets or tracebacks:

1. **A keep-alive connection the client has closed stays open for the whole keep-alive
   timeout.** When the reader sees EOF or a reset it ends, but nothing stops the idle task, which
   holds the connection's task group — and the socket, in ``CLOSE_WAIT`` after a FIN — for up
   to 75 s. Worse, when the close arrives while the application is still finishing its response
   (a client that resets right after reading it), the application's *recycle* of the connection
   starts a fresh idle task after the reader has already gone. Fix: once reading has ended,
   stop the idle task and never start it again (nothing can arrive on the connection any more,
   so there is nothing to keep it alive for).

   With quart-trio's stock connection class this hides behind another bug: the final send of
   every response is cancelled by the very disconnect it announces, before the idle task is
   started — so keep-alive connections get no idle timeout at all, and a draining server waits
   for them until its graceful timeout. :mod:`quartproxy.asgi` shields that send (the
   connection is recycled or closed in full); this module makes the fully recycled connection
   end with its client.

2. **A half-close races the application's last write.** ``_close`` calls ``send_eof`` without
   the send lock that every write holds. When a client gives up on a request body (declares
   more than the cap, gets its 413, closes), the reader closes the connection while the
   application writes the response's end, and trio refuses the concurrent writes with
   ``BusyResourceError``: an "Error in ASGI Framework" traceback for a correctly answered
   request. Fix: half-close only while holding the send lock; if a write holds it (possibly
   stuck on a client that does not read), just close, which ends that write with
   ``ClosedResourceError`` — a case ``protocol_send`` already handles.

3. **A cancelled close leaks the socket.** ``_close`` runs ``send_eof`` (a checkpoint) before
   ``aclose``; cancelled at that checkpoint, the socket is never closed. Fix: ``aclose`` runs
   whatever happened before it.

:func:`install` makes Hypercorn's trio worker use this class; ``server.serve`` calls it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import hypercorn.trio.run as hypercorn_run
import trio
from hypercorn.events import Event, Updated
from hypercorn.trio.tcp_server import TCPServer as HypercornTCPServer


class TCPServer(HypercornTCPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_done = False

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self._reading_done = True
            with trio.CancelScope(shield=True):
                await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated) and event.idle and self._reading_done:
            return  # race 1: the client is gone; there is no keep-alive to wait for
        await super().protocol_send(event)

    async def _close(self) -> None:
        try:
            self.send_lock.acquire_nowait()
        except trio.WouldBlock:
            holding = False  # race 2: a write is in progress; closing is what ends it
        else:
            holding = True
        try:
            if holding:
                with contextlib.suppress(trio.BrokenResourceError, trio.BusyResourceError,
                                         trio.ClosedResourceError, AttributeError):
                    await self.stream.send_eof()  # AttributeError: TLS streams have none
        finally:
            if holding:
                self.send_lock.release()
            await self.stream.aclose()  # race 3: closes the socket even when cancelled


def install() -> None:
    """Make Hypercorn's trio worker serve connections with :class:`TCPServer` (idempotent).

    ``hypercorn.trio.run.worker_serve`` builds each connection's server from its module's
    ``TCPServer`` name; that name is the one seam Hypercorn offers without copying its worker.
    """
    current = hypercorn_run.TCPServer  # type: ignore[attr-defined]
    if current is TCPServer:
        return
    if current is not HypercornTCPServer:
        raise RuntimeError(f"hypercorn.trio.run.TCPServer is {current!r}, not Hypercorn's own: "
                           "refusing to replace an unknown connection class")
    hypercorn_run.TCPServer = TCPServer  # type: ignore[attr-defined]
