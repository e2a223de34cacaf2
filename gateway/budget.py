"""A byte budget: how many bytes of images one stream or one job may hold at
once (GATEWAY_MAX_INFLIGHT_MB). Whoever would pass it waits until earlier
batches are done. One item larger than the whole budget takes all of it, alone."""

from __future__ import annotations

import threading


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
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
        return take

    def release(self, taken: int) -> None:
        with self._room:
            self.held -= taken
            self._room.notify_all()
