"""The services' gRPC server (asyncio, imagesearch.bridge) against a plain
threaded gRPC server (``grpc.server`` with a thread pool, how every service
served before issue 24), with the same handler, in one run.

    python bench/server.py [--calls 2000] [--clients 1,8] [--payload 65536]

Figures, per server: unary latency p50 / p99 (ms) and calls per second at each
client count, for a small message and a ``--payload``-byte one (a thumbnail);
then the attack of issue 24: 40 idle reflection streams opened by one client,
and how long a health check from another client takes then (a timeout of 5 s
counts as 5 s). The ratio column is bridge / threaded (latency: lower is
better). Client, servers and Python share the machine's cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection
from grpc_reflection.v1alpha import reflection_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine
from imagesearch.limits import CallLimits
from imagesearch.server import start_server

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Unary"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def echo(request: bytes, _context: grpc.ServicerContext) -> bytes:
    return request


def register(server: Any) -> None:  # grpc.Server or grpc.aio.Server
    handler = grpc.unary_unary_rpc_method_handler(echo)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Unary": handler}),)
    )


class Threaded:
    """The server as it was: a thread per call, health and reflection sharing the pool."""

    def __init__(self, workers: int) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        register(self.server)
        servicer = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        grpc_reflection.enable_server_reflection(
            [SERVICE, health.SERVICE_NAME, grpc_reflection.SERVICE_NAME], self.server
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait()


class Bridged:
    """The services' server now."""

    def __init__(self, workers: int) -> None:
        self.running = start_server(
            [register], [SERVICE], host="127.0.0.1", limits=CallLimits(threads=workers)
        )
        self.port = self.running.port

    def stop(self) -> None:
        self.running.stop(0)


def latency(port: int, payload: bytes, calls: int, clients: int) -> tuple[float, float, float]:
    """p50 ms, p99 ms, calls/s of ``calls`` echo calls from ``clients`` threads."""
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(clients)]
    stubs = [ch.unary_unary(METHOD, None, None) for ch in channels]
    for stub in stubs:
        stub(payload, timeout=10)  # connected and warm
    times: list[float] = []
    lock = threading.Lock()
    per = calls // clients

    def run(stub: Callable[..., bytes]) -> None:
        mine = []
        for _ in range(per):
            started = time.perf_counter()
            stub(payload, timeout=10)
            mine.append(time.perf_counter() - started)
        with lock:
            times.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(s,)) for s in stubs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    for ch in channels:
        ch.close()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return statistics.median(times) * 1000, p99 * 1000, len(times) / wall


def health_under_attack(port: int, streams: int) -> float:
    """Seconds a health check takes while one client holds ``streams`` idle
    reflection streams (capped at 5 s: the check's deadline)."""
    release = threading.Event()

    def silent() -> Iterator[reflection_pb2.ServerReflectionRequest]:
        release.wait(30)
        yield from ()

    attacker = grpc.insecure_channel(f"127.0.0.1:{port}")
    open_stream = attacker.stream_stream(
        REFLECTION,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    held = [open_stream(silent(), timeout=30) for _ in range(streams)]
    time.sleep(1.0)
    probe = grpc.insecure_channel(f"127.0.0.1:{port}")
    started = time.perf_counter()
    try:
        health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=5)
        took = time.perf_counter() - started
    except grpc.RpcError:
        took = 5.0
    release.set()
    for call in held:
        call.cancel()
    probe.close()
    attacker.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--payload", type=int, default=65536)
    parser.add_argument("--workers", type=int, default=32, help="handler threads of both")
    parser.add_argument("--idle-streams", type=int, default=40)
    args = parser.parse_args()
    print(machine())
    payloads = {"64 B": b"x" * 64, f"{args.payload // 1024} KiB": b"x" * args.payload}
    rows: dict[tuple[str, int], dict[str, tuple[float, float, float]]] = {}
    attack: dict[str, float] = {}
    for name, kind in (("threaded", Threaded), ("bridge", Bridged)):
        server = kind(args.workers)
        try:
            for label, payload in payloads.items():
                for clients in map(int, args.clients.split(",")):
                    figures = latency(server.port, payload, args.calls, clients)
                    rows.setdefault((label, clients), {})[name] = figures
            attack[name] = health_under_attack(server.port, args.idle_streams)
        finally:
            server.stop()
    print("| message | clients | threaded p50 / p99 ms, calls/s | bridge p50 / p99 ms, calls/s "
          "| p50 ratio | calls/s ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for (label, clients), by in rows.items():
        t, b = by["threaded"], by["bridge"]
        print(
            f"| {label} | {clients} | {t[0]:.2f} / {t[1]:.2f}, {t[2]:.0f} "
            f"| {b[0]:.2f} / {b[1]:.2f}, {b[2]:.0f} | {b[0] / t[0]:.2f} | {b[2] / t[2]:.2f} |"
        )
    print(
        f"health check with {args.idle_streams} idle reflection streams open: threaded "
        f"{attack['threaded']:.3f} s, bridge {attack['bridge']:.3f} s (5 s = timed out)"
    )


if __name__ == "__main__":
    main()
