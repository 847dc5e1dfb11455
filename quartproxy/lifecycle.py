"""Server-wide lifecycle state shared by the routes and every request's relay.

Shutdown is two trio events rather than flags so that waiting on them is a checkpoint: a relay
blocks on ``finalize_now`` inside its own nursery and is woken exactly when the drain deadline
passes; nothing polls.
"""

from __future__ import annotations

import trio


class Lifecycle:
    def __init__(self) -> None:
        self.draining = trio.Event()  # stop taking work; /readyz says 503
        self.finalize_now = trio.Event()  # grace over: finalize what is still running

    @property
    def is_draining(self) -> bool:
        return self.draining.is_set()

    def start_drain(self) -> None:
        self.draining.set()

    def finalize(self) -> None:
        self.draining.set()
        self.finalize_now.set()
