"""gRPC server boilerplate shared by the three services: health, reflection,
request ids, one log line per call, status mapping, metrics and graceful stop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection
from prometheus_client import Counter, Histogram, start_http_server

from imagesearch import logs
from imagesearch.errors import ServiceError
from imagesearch.tls import ServerTls

log = logging.getLogger("imagesearch.server")

REQUEST_ID_HEADER = "x-request-id"
# A client's request id is used (logs, trailers) only if it looks like one.
REQUEST_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
REQUEST_ID_MAX = 64

# Called before every RPC of the service (not health or reflection) with the
# method's full name; raises ServiceError to refuse the call.
Authorize = Callable[[str, grpc.ServicerContext], None]

RPC_HANDLED = Counter(
    "imagesearch_rpc_handled_total", "RPCs completed, by method and status code", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "imagesearch_rpc_seconds",
    "RPC handling time in seconds, by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class _Call:
    """Bookkeeping for one RPC: request id, timing, final code, the log line."""

    def __init__(self, method: str, context: grpc.ServicerContext) -> None:
        self.method = method
        self.context = context
        metadata = dict(context.invocation_metadata() or ())
        rid = metadata.get(REQUEST_ID_HEADER)
        self.request_id = rid if valid_request_id(rid) else uuid.uuid4().hex[:16]
        self.started = time.perf_counter()
        self.token = logs.request_id.set(self.request_id)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, self.request_id),))

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, ServiceError):
            self.finish(exc.code, exc.message)
            self.context.abort(exc.code, exc.message)
        log.error(
            "rpc.crash",
            exc_info=exc,
            extra={"fields": {"method": self.method}},
        )
        # The exception's text stays in the log: it may name files, hosts or URIs.
        message = (
            f"internal error in {self.method} ({type(exc).__name__}); the service log has "
            f"the details under request id {self.request_id}"
        )
        self.finish(grpc.StatusCode.INTERNAL, message)
        self.context.abort(grpc.StatusCode.INTERNAL, message)

    def finish(self, code: grpc.StatusCode, detail: str = "") -> None:
        seconds = time.perf_counter() - self.started
        RPC_HANDLED.labels(self.method, code.name).inc()
        RPC_SECONDS.labels(self.method).observe(seconds)
        level = logging.INFO if code == grpc.StatusCode.OK else logging.WARNING
        fields: dict[str, Any] = {
            "method": self.method,
            "code": code.name,
            "ms": round(seconds * 1000, 2),
        }
        if detail:
            fields["detail"] = detail
        log.log(level, "rpc", extra={"fields": fields, "request_id": self.request_id})
        logs.request_id.reset(self.token)


def valid_request_id(rid: object) -> TypeGuard[str]:
    """A client's id is kept only if short and plain (no newlines, quotes or
    escapes that could forge log lines); otherwise the call gets a new one."""
    return isinstance(rid, str) and 0 < len(rid) <= REQUEST_ID_MAX and set(rid) <= REQUEST_ID_CHARS


def _is_quiet(method: str) -> bool:
    return method.startswith(("/grpc.health.", "/grpc.reflection."))


class ServiceInterceptor(grpc.ServerInterceptor):
    """Maps ServiceError to its status code, logs and counts every call, and
    asks ``authorize`` (if given) before each one."""

    def __init__(self, authorize: Authorize | None = None) -> None:
        self.authorize = authorize

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or _is_quiet(method):
            return handler
        authorize = self.authorize

        def unary_response(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                call = _Call(method, context)
                try:
                    if authorize is not None:
                        authorize(method, context)
                    response = behavior(request, context)
                except Exception as exc:
                    call.fail(exc)
                    raise
                call.finish(grpc.StatusCode.OK)
                return response

            return wrapped

        def stream_response(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call = _Call(method, context)
                try:
                    if authorize is not None:
                        authorize(method, context)
                    yield from behavior(request, context)
                except Exception as exc:
                    call.fail(exc)
                    raise
                call.finish(
                    grpc.StatusCode.CANCELLED if not context.is_active() else grpc.StatusCode.OK
                )

            return wrapped

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary_response(handler.unary_unary), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                unary_response(handler.stream_unary), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                stream_response(handler.unary_stream), **kwargs
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                stream_response(handler.stream_stream), **kwargs
            )
        return handler


@dataclass
class RunningServer:
    """A started server: its bound port, health servicer and how to stop it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: list[str]
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # Run on SIGHUP (serve_until_signal): re-read files such as tokens.
    on_reload: list[Callable[[], None]] = field(default_factory=list)
    health_server: grpc.Server | None = None

    def set_serving(self, serving: bool = True, *, live: bool | None = None) -> None:
        """Health of the named services (readiness) and of the empty name
        (liveness, the same unless ``live`` says otherwise)."""

        def status(up: bool) -> Any:
            return (
                health_pb2.HealthCheckResponse.SERVING
                if up
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )

        for name in self.service_names:
            self.health.set(name, status(serving))
        self.health.set("", status(serving if live is None else live))

    def stop(self, grace: float = 5.0) -> None:
        """Refuses new calls, lets running ones finish for `grace` seconds."""
        self.set_serving(False)
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        for hook in self.on_stop:
            hook()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start_server(
    register: Iterable[Callable[[grpc.Server], None]],
    service_names: list[str],
    *,
    host: str = "[::]",
    port: int = 0,
    max_workers: int = 16,
    max_message_bytes: int = 64 * 1024 * 1024,
    max_send_bytes: int | None = None,
    serving: bool = True,
    live: bool | None = None,
    tls: ServerTls | None = None,
    health_port: int = 0,
    reflection: bool = True,
    authorize: Authorize | None = None,
) -> RunningServer:
    """Builds, binds and starts a server; port 0 picks a free one.

    ``register`` holds callables that add servicers, e.g.
    ``lambda s: embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(servicer, s)``.
    ``tls``: serve TLS (mTLS when it names a client CA) instead of plaintext.
    ``health_port``: also serve health alone, in plaintext, on that port.
    ``max_send_bytes``: the largest answer, when it differs from the largest request.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=[ServiceInterceptor(authorize)],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_send_bytes or max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    for add in register:
        add(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection:
        grpc_reflection.enable_server_reflection(
            [*service_names, health.SERVICE_NAME, grpc_reflection.SERVICE_NAME], server
        )
    address = f"{host}:{port}"
    if tls is not None:
        bound = server.add_secure_port(address, tls.credentials())
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}; is the port in use?")
    health_server = None
    if health_port:
        health_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health")
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        if health_server.add_insecure_port(f"{host}:{health_port}") == 0:
            raise OSError(f"could not bind the health port {host}:{health_port}")
    server.start()
    if health_server is not None:
        health_server.start()
    running = RunningServer(server, bound, health_servicer, service_names)
    running.health_server = health_server
    running.set_serving(serving, live=live)
    return running


def start_metrics(port: int, host: str) -> None:
    """Serves Prometheus metrics over HTTP on ``port`` (0: disabled), on the
    same address as the service's gRPC port (``[::]`` is every address)."""
    if port > 0:
        start_http_server(port, addr=host.strip("[]"))


def serve_until_signal(running: RunningServer, name: str, grace: float = 10.0) -> None:
    """Blocks until SIGTERM/SIGINT, then stops gracefully."""
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
    stop.wait()
    running.stop(grace)
    logs.event(log, "shutdown.done", service=name)
