"""Server-wide lifecycle state shared by the routes and every request's relay.

Shutdown is two trio events rather than flags so that waiting on them is a checkpoint: the
server's drain logic blocks on them and is woken exactly when they are set; nothing polls.

Every running turn must also stop reading when the drain deadline passes. A task per turn
waiting on ``finalize_now`` would cost a spawn, a nursery and a cancellation on every request
for an event that fires once in a server's life, so turns register a callback instead
(:meth:`Lifecycle.on_finalize`), which :meth:`Lifecycle.finalize` runs synchronously.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

log = logging.getLogger("quartproxy.lifecycle")


class Lifecycle:
    def __init__(self) -> None:
        self.draining = trio.Event()  # stop taking work; /readyz says 503
        # Grace over: finalize what is still running. Set only through finalize(), which also
        # runs the on_finalize callbacks.
        self.finalize_now = trio.Event()
        self._finalizers: dict[int, Callable[[], None]] = {}
        self._next = 0

    @property
    def is_draining(self) -> bool:
        return self.draining.is_set()

    def start_drain(self) -> None:
        self.draining.set()

    def on_finalize(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` once when :meth:`finalize` is called (at once if it was already);
        returns the function that unregisters it. The callback must not block or raise."""
        if self.finalize_now.is_set():
            callback()
            return _nothing
        key = self._next
        self._next += 1
        finalizers = self._finalizers
        finalizers[key] = callback

        def unregister() -> None:
            finalizers.pop(key, None)

        return unregister

    def finalize(self) -> None:
        self.draining.set()
        if self.finalize_now.is_set():
            return
        self.finalize_now.set()
        callbacks = list(self._finalizers.values())
        self._finalizers.clear()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("finalize callback failed")


def _nothing() -> None:
    return None
