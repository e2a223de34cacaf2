"""Byte budgets: how many bytes of images one stream or one job may hold at
once (GATEWAY_MAX_INFLIGHT_MB), inside the gateway's total
(GATEWAY_MAX_TOTAL_INFLIGHT_MB). Whoever would pass one waits until earlier
batches are done. One item larger than a whole budget takes all of it, alone.

No deadlock: bytes are held only by batches already on their way (which
release them when done, needing nothing more), and taken in one order: the
stream's or job's own budget, then the gateway's."""

from __future__ import annotations

import threading


class ByteBudget:
    def __init__(self, limit: int, parent: ByteBudget | None = None) -> None:
        self.limit = max(1, limit)
        self.parent = parent
        self.held = 0
        self.peak = 0
        self._room = threading.Condition()

    def acquire(self, size: int) -> int:
        """Blocks until ``size`` bytes (at most the whole budget) fit; returns
        what was taken, to hand back to ``release``."""
        take = min(max(0, size), self.limit)
        with self._room:
            while self.held + take > self.limit:
                self._room.wait()
            self.held += take
            self.peak = max(self.peak, self.held)
        if self.parent is not None:
            self.parent.acquire(take)
        return take

    def release(self, taken: int) -> None:
        if self.parent is not None:
            self.parent.release(taken)
        with self._room:
            self.held -= taken
            self._room.notify_all()
