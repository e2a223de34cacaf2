"""The caller's deadline, carried to every downstream call it causes.

A gRPC caller's remaining time (``context.time_remaining()``) becomes a
Deadline; each downstream call then runs for at most the time left, and at
most GATEWAY_CALL_TIMEOUT_S, so a caller without a deadline never holds a
thread for ever. Jobs, which have no caller, give each batch a Deadline of
their own (GATEWAY_JOB_CHUNK_TIMEOUT_S).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

import grpc


class Cancellation:
    """The downstream calls a caller's call is waiting on: when the caller
    cancels (or goes away), they are canceled too, so the embedder drops the
    images still queued for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[grpc.Future] = []
        self.cancelled = False

    def track(self, call: grpc.Future) -> None:
        with self._lock:
            self._calls = [c for c in self._calls if not c.done()]
            self._calls.append(call)
            cancelled = self.cancelled
        if cancelled:
            call.cancel()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            calls, self._calls = self._calls, []
        for call in calls:
            call.cancel()


@dataclass(frozen=True)
class Deadline:
    at: float | None  # time.monotonic() value; None: the caller set none
    cancellation: Cancellation | None = field(default=None, compare=False)

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def unbounded(cls) -> Deadline:
        return cls(None)

    @classmethod
    def of(cls, context: grpc.ServicerContext) -> Deadline:
        """The caller's deadline, and its cancellation: downstream calls end
        when the caller's call does (its callbacks run when it ends, however)."""
        remaining = context.time_remaining()
        cancellation = Cancellation()
        context.add_callback(cancellation.cancel)  # a no-op for calls already done
        at = None if remaining is None else time.monotonic() + remaining
        return cls(at, cancellation)

    def within(self, seconds: float) -> Deadline:
        """This deadline, or ``seconds`` from now if that comes first."""
        soon = time.monotonic() + seconds
        return replace(self, at=soon if self.at is None else min(self.at, soon))

    def track(self, call: grpc.Future) -> None:
        if self.cancellation is not None:
            self.cancellation.track(call)

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def timeout(self, cap: float) -> float:
        """Seconds one downstream call may take: what is left, at most ``cap``."""
        left = self.remaining()
        return cap if left is None else min(left, cap)
