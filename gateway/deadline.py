"""The caller's deadline, carried to every downstream call it causes.

A gRPC caller's remaining time (``context.time_remaining()``) becomes a
Deadline; each downstream call then runs for at most the time left, and at
most GATEWAY_CALL_TIMEOUT_S, so a caller without a deadline never holds a
thread for ever. Jobs, which have no caller, give each batch a Deadline of
their own (GATEWAY_JOB_BATCH_TIMEOUT_S).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Deadline:
    at: float | None  # time.monotonic() value; None: the caller set none

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def unbounded(cls) -> Deadline:
        return cls(None)

    @classmethod
    def of(cls, context: grpc.ServicerContext) -> Deadline:
        remaining = context.time_remaining()
        return cls.unbounded() if remaining is None else cls.after(remaining)

    def remaining(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def timeout(self, cap: float) -> float:
        """Seconds one downstream call may take: what is left, at most ``cap``."""
        left = self.remaining()
        return cap if left is None else min(left, cap)
