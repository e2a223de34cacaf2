"""The decoded-pixel budget: how many pixels all decode threads may hold at
once. A decode waits for room; past ``wait_s`` it is refused as overload
(RESOURCE_EXHAUSTED, retry later). The peak is kept for the metric."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from prometheus_client import Gauge

from imagesearch.errors import ServiceError

PIXELS_IN_FLIGHT = Gauge(
    "imagesearch_embedder_decode_pixels_in_flight", "Decoded pixels held by decode threads now"
)
PIXELS_PEAK = Gauge(
    "imagesearch_embedder_decode_pixels_peak",
    "Most decoded pixels held at once since start (EMBEDDER_DECODE_PIXEL_BUDGET bounds it)",
)


class PixelBudget:
    def __init__(self, budget: int, wait_s: float = 30.0) -> None:
        self.budget = budget
        self.wait_s = wait_s
        self.in_flight = 0
        self.peak = 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, pixels: int, label: str) -> Iterator[None]:
        """Holds ``pixels`` of the budget while the block runs."""
        if pixels > self.budget:  # settings keep EMBEDDER_MAX_PIXELS below this
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{label}: {pixels / 1e6:.1f} Mpx to decode, more than the whole decode budget "
                f"of {self.budget / 1e6:.1f} Mpx (EMBEDDER_DECODE_PIXEL_BUDGET)",
            )
        deadline = time.monotonic() + self.wait_s
        with self._room:
            while self.in_flight + pixels > self.budget:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServiceError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{label}: the embedder's decode budget is full ({self.in_flight / 1e6:.1f}"
                        f" of {self.budget / 1e6:.1f} Mpx in flight, EMBEDDER_DECODE_PIXEL_BUDGET);"
                        " retry later or add replicas",
                    )
                self._room.wait(left)
            self.in_flight += pixels
            self.peak = max(self.peak, self.in_flight)
            PIXELS_IN_FLIGHT.set(self.in_flight)
            PIXELS_PEAK.set(self.peak)
        try:
            yield
        finally:
            with self._room:
                self.in_flight -= pixels
                PIXELS_IN_FLIGHT.set(self.in_flight)
                self._room.notify_all()
