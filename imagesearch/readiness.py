"""A service that is up but not ready yet (a model warming up, a start-up
Reconcile running): calls that arrive meanwhile wait for it, bounded by
their deadline and by a cap, instead of failing or running too early."""

from __future__ import annotations

import threading

import grpc

from imagesearch import errors


class Readiness:
    def __init__(self, not_ready: str, cap_s: float = 300.0, ready: bool = False) -> None:
        """``not_ready`` says what is still going on, for the UNAVAILABLE message."""
        self.not_ready = not_ready
        self.cap_s = cap_s
        self._event = threading.Event()
        if ready:
            self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, context: grpc.ServicerContext) -> None:
        if self._event.is_set():
            return
        remaining = context.time_remaining()
        wait = self.cap_s if remaining is None else min(remaining, self.cap_s)
        if not self._event.wait(wait):
            raise errors.unavailable(f"{self.not_ready} (waited {wait:.0f}s); retry shortly")
