"""What callers of one server may hold at once, so that no caller can starve
the others: calls in flight by kind, idle limits, HTTP/2 and keepalive rules.

Every call takes a slot of its kind before it runs and gives it back when its
handler ends; with no slot free it is refused at once (RESOURCE_EXHAUSTED,
naming the setting) instead of waiting in a queue. Health checks take no slot:
they run on the server's event loop and answer however busy the service is.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from imagesearch import errors

# Kinds of call, each with its own cap.
CALLS = "calls"  # unary
UPLOADS = "uploads"  # client streams (IndexImages)
WATCHERS = "watchers"  # server streams (WatchJob)
REFLECTION = "reflection"  # grpc.reflection streams

# Each cap of CallLimits and the setting that sets it (after the service's prefix).
SETTINGS = {
    "threads": "RPC_WORKERS",
    CALLS: "MAX_CALLS",
    UPLOADS: "MAX_STREAMS",
    WATCHERS: "MAX_WATCHERS",
    REFLECTION: "MAX_REFLECTION_STREAMS",
    "per_connection": "MAX_STREAMS_PER_CONNECTION",
    "open_rpcs": "MAX_OPEN_RPCS",
}


@dataclass(frozen=True)
class CallLimits:
    """One server's caps; ``prefix`` (``GATEWAY_``) names its settings in messages."""

    prefix: str = ""
    threads: int = 16  # handler threads for unary calls
    calls: int = 128  # unary calls running or waiting for a thread
    uploads: int = 16  # client streams open at once
    watchers: int = 16  # server streams open at once
    reflection: int = 8  # reflection streams open at once
    idle_s: float = 60.0  # a client stream's silence, a unary call's missing body
    per_connection: int = 100  # HTTP/2 streams on one connection (more wait client-side)
    open_rpcs: int = 1000  # every call of every kind, health included (gRPC's own cap)
    connection_age_s: float = 0.0  # a connection is sent GOAWAY after this long (0: never)
    connection_grace_s: float = 20.0  # ... and its calls get this long to finish

    def __post_init__(self) -> None:
        """Refuses a cap below 1 or an idle limit of 0, naming the setting
        (``ServerSettings`` reports it as a bad setting)."""
        for name in SETTINGS:
            if getattr(self, name) < 1:
                raise ValueError(f"{self.setting(name)} must be >= 1")
        if self.idle_s <= 0:
            raise ValueError(f"{self.prefix}STREAM_IDLE_S must be > 0")
        if self.connection_age_s < 0 or self.connection_grace_s < 0:
            raise ValueError(
                f"{self.prefix}MAX_CONNECTION_AGE_S and {self.prefix}SHUTDOWN_GRACE_S must be >= 0"
            )

    def setting(self, name: str) -> str:
        """The setting behind the cap ``name`` (a field), as a user sets it."""
        return f"{self.prefix}{SETTINGS[name]}"

    def server_options(self) -> list[tuple[str, Any]]:
        """Channel arguments of the server: a stream cap per connection, and
        keepalive both ways (dead peers are found; ping floods are refused)."""
        return [
            ("grpc.max_concurrent_streams", self.per_connection),
            # The server pings a silent client every 2 minutes and drops it
            # after 20 s without an answer (a peer gone without a FIN).
            ("grpc.keepalive_time_ms", 120_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            # Clients may ping every 20 s (ours ping every 30 s during a call);
            # more often is a strike, and two strikes close the connection.
            ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_permit_without_calls", 1),
            # A connection with no call for 10 minutes is closed.
            ("grpc.max_connection_idle_ms", 600_000),
        ] + (
            [
                # Long-lived clients (a gateway's channel to its embedders)
                # reconnect now and then, so replicas added since get calls.
                ("grpc.max_connection_age_ms", int(self.connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(self.connection_grace_s * 1000)),
            ]
            if self.connection_age_s > 0
            else []
        )


class Slots:
    """A non-blocking counter of calls of one kind."""

    def __init__(self, kind: str, limit: int, setting: str) -> None:
        self.kind = kind
        self.limit = limit
        self.setting = setting
        self._lock = threading.Lock()
        self.taken = 0

    def take(self, method: str) -> Slot:
        with self._lock:
            if self.taken >= self.limit:
                raise errors.resource_exhausted(
                    f"{method.rsplit('/', 1)[-1]}: {self.limit} {self.kind} are in flight on "
                    f"this server already ({self.setting}); retry later"
                )
            self.taken += 1
        return Slot(self)

    def _give_back(self) -> None:
        with self._lock:
            self.taken -= 1


class Slot:
    """One taken slot; ``release`` is idempotent and safe from any thread."""

    def __init__(self, slots: Slots) -> None:
        self._slots: Slots | None = slots
        self._lock = threading.Lock()

    def release(self, *_: object) -> None:
        with self._lock:
            slots, self._slots = self._slots, None
        if slots is not None:
            slots._give_back()
