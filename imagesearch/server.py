"""gRPC server boilerplate shared by the three services: an asyncio server
(``imagesearch.bridge`` runs the threaded servicers behind it, within the caps
of ``imagesearch.limits``), health, reflection, metrics and graceful stop.

Every server of a process runs on one event loop, in a thread of its own;
callers use ``RunningServer`` from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection as grpc_reflection
from prometheus_client import start_http_server

from imagesearch import logs
from imagesearch.bridge import REQUEST_ID_HEADER, Authorize, Bridge, valid_request_id
from imagesearch.limits import CallLimits
from imagesearch.tls import ServerTls

__all__ = [
    "REQUEST_ID_HEADER",
    "Authorize",
    "RunningServer",
    "serve_until_signal",
    "start_metrics",
    "start_server",
    "valid_request_id",
]

log = logging.getLogger("imagesearch.server")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a dependency on Linux and macOS: less
    CPU per call than asyncio's own loop, bench/RESULTS.md), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover -- Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def server_loop() -> asyncio.AbstractEventLoop:
    """The event loop every server of this process runs on (started once)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = _new_loop()
            threading.Thread(target=loop.run_forever, name="grpc-loop", daemon=True).start()
            _loop = loop
        return _loop


def on_loop(coro: Coroutine[Any, Any, Any], timeout: float | None = 30.0) -> Any:
    """Runs ``coro`` on the servers' loop and waits for its result."""
    return asyncio.run_coroutine_threadsafe(coro, server_loop()).result(timeout)


@dataclass
class RunningServer:
    """A started server: its bound port, health servicer and how to stop it."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    service_names: list[str]
    bridge: Bridge
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # Run on SIGHUP (serve_until_signal): re-read files such as tokens.
    on_reload: list[Callable[[], None]] = field(default_factory=list)
    health_server: grpc.aio.Server | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def set_serving(self, serving: bool = True, *, live: bool | None = None) -> None:
        """Health of the named services (readiness) and of the empty name
        (liveness, the same unless ``live`` says otherwise)."""

        def status(up: bool) -> Any:
            return (
                health_pb2.HealthCheckResponse.SERVING
                if up
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )

        async def apply() -> None:
            for name in self.service_names:
                await self.health.set(name, status(serving))
            await self.health.set("", status(serving if live is None else live))

        on_loop(apply())

    def stop(self, grace: float = 5.0) -> None:
        """Refuses new calls, lets running ones finish for `grace` seconds."""
        if self._stopped.is_set():
            return
        self.set_serving(False)

        async def stop_servers() -> None:
            await self.server.stop(grace)
            if self.health_server is not None:
                await self.health_server.stop(0)

        on_loop(stop_servers(), timeout=grace + 30)
        self.bridge.close()
        for hook in self.on_stop:
            hook()
        self._stopped.set()

    def wait(self) -> None:
        """Blocks until ``stop`` has run."""
        self._stopped.wait()


def start_server(
    register: Iterable[Callable[[grpc.aio.Server], None]],
    service_names: list[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: CallLimits | None = None,
    max_message_bytes: int = 64 * 1024 * 1024,
    max_send_bytes: int | None = None,
    serving: bool = True,
    live: bool | None = None,
    tls: ServerTls | None = None,
    health_port: int = 0,
    reflection: bool = True,
    authorize: Authorize | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    """Builds, binds and starts a server; port 0 picks a free one.

    ``register`` holds callables that add servicers, e.g.
    ``lambda s: embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(servicer, s)``.
    ``limits``: caps on calls in flight and idle limits (defaults: CallLimits()).
    ``tls``: serve TLS (mTLS when it names a client CA) instead of plaintext.
    ``health_port``: also serve health alone, in plaintext, on that port.
    ``max_send_bytes``: the largest answer, when it differs from the largest request.
    ``reuse_port``: bind with SO_REUSEPORT, beside sibling processes on the same port.
    """
    limits = limits or CallLimits()
    bridge = Bridge(
        limits, authorize, tls.check_peer if tls is not None and tls.client_names else None
    )

    async def build() -> RunningServer:
        server = grpc.aio.server(
            interceptors=[bridge],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_send_bytes or max_message_bytes),
                ("grpc.so_reuseport", int(reuse_port)),
                *limits.server_options(),
            ],
            maximum_concurrent_rpcs=limits.open_rpcs,
        )
        for add in register:
            add(server)
        health_servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if reflection:
            grpc_reflection.enable_server_reflection(
                [*service_names, health.SERVICE_NAME, grpc_reflection.SERVICE_NAME], server
            )
        address = f"{host}:{port}"
        try:
            if tls is not None:
                bound = server.add_secure_port(address, tls.credentials())
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(f"could not bind {host}:{port}; is the port in use?")
        health_server = None
        if health_port:
            health_server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
            try:
                health_bound = health_server.add_insecure_port(f"{host}:{health_port}")
            except RuntimeError:
                health_bound = 0
            if health_bound == 0:
                raise OSError(f"could not bind the health port {host}:{health_port}")
        await server.start()
        if health_server is not None:
            await health_server.start()
        return RunningServer(
            server, bound, health_servicer, service_names, bridge, health_server=health_server
        )

    try:
        running: RunningServer = on_loop(build())
    except BaseException:
        bridge.close()
        raise
    running.set_serving(serving, live=live)
    return running


def start_metrics(port: int, host: str) -> None:
    """Serves Prometheus metrics over HTTP on ``port`` (0: disabled), on the
    same address as the service's gRPC port (``[::]`` is every address)."""
    if port > 0:
        start_http_server(port, addr=host.strip("[]"))


def note_reloads() -> list[int]:
    """Before a service starts: a SIGHUP that comes while it starts (its port
    may already answer) is noted, not fatal (SIGHUP's default ends the
    process); ``serve_until_signal`` runs the reload once it takes over."""
    noted: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, _frame: noted.append(signum))
    return noted


def serve_until_signal(
    running: RunningServer,
    name: str,
    *,
    drain: float = 0.0,
    grace: float = 10.0,
    noted: list[int] | None = None,
) -> None:
    """Blocks until SIGTERM/SIGINT, then drains and stops: health says
    NOT_SERVING at once (liveness stays up) while calls are still taken for
    ``drain`` seconds, so that load balancers and clients' health checks move
    away; then new calls are refused (GOAWAY) and those in progress get
    ``grace`` seconds to finish. A second signal cuts the drain short."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        logs.event(log, "shutdown.requested", service=name, signal=signal.Signals(signum).name)
        stop.set()

    def reload(_signum: int, _frame: object) -> None:
        for hook in running.on_reload:
            hook()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGHUP, reload)
    if noted:  # a SIGHUP came while the service started
        reload(signal.SIGHUP, None)
    stop.wait()
    if drain > 0:
        running.set_serving(False, live=True)
        logs.event(log, "shutdown.draining", service=name, seconds=drain)
        stop.clear()
        stop.wait(drain)
    running.stop(grace)
    logs.event(log, "shutdown.done", service=name)
