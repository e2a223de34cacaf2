"""Draining and rebalancing an embedder fleet (issue 28, item 5).

- The gateway's embedder channel watches each replica's health and sends no
  Embed call to one that answers NOT_SERVING (draining or warming up).
- SIGTERM drains: health NOT_SERVING at once (liveness stays up), calls still
  answered for EMBEDDER_DRAIN_S, then GOAWAY, the calls in progress finish,
  exit 0.
- Servers close connections older than MAX_CONNECTION_AGE_S (GOAWAY with a
  grace), so long-lived clients reconnect and reach replicas added since;
  no call fails for it.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.clients import EMBEDDER_SERVICE
from imagesearch.channels import make_channel
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc
from tests.conftest import (
    CLOTHING,
    TcpProxy,
    channel,
    clothing_images,
    free_port,
    spawn_embedder,
    start_embedder,
    wait_until,
)


def embed_request(count: int = 1) -> embedder_pb2.EmbedderServiceEmbedRequest:
    photos = [p for p, _ in clothing_images()][:count]
    return embedder_pb2.EmbedderServiceEmbedRequest(
        images=[embedder_pb2.Image(name=p, data=(CLOTHING / p).read_bytes()) for p in photos]
    )


def health(port: int, service: str) -> int:
    reply = health_pb2_grpc.HealthStub(channel(port)).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(reply.status)


@pytest.mark.slow
def test_embed_calls_leave_a_replica_that_reports_not_serving() -> None:
    """Two replicas behind one channel (different weights, so each answer
    names who served it): one set NOT_SERVING, as SIGTERM does first, gets
    no more calls; set SERVING again, it gets its share back."""
    a = start_embedder()
    b = start_embedder(weights="random")
    try:
        ch = make_channel(f"ipv4:{a.addr},{b.addr}", [EMBEDDER_SERVICE], health_checked=True)
        stub = embedder_pb2_grpc.EmbedderServiceStub(ch)

        def served(n: int) -> collections.Counter[str]:
            return collections.Counter(
                stub.Embed(embed_request(), timeout=30).model_id for _ in range(n)
            )

        both = served(20)
        assert len(both) == 2 and min(both.values()) >= 5, both
        a_id = (
            embedder_pb2_grpc.EmbedderServiceStub(channel(a.port))
            .Embed(embed_request(), timeout=30)
            .model_id
        )
        a.running.set_serving(False, live=True)
        wait_until(lambda: a_id not in served(4), 10)
        after = served(20)
        assert a_id not in after and sum(after.values()) == 20, after
        a.running.set_serving(True)
        wait_until(lambda: a_id in served(6), 10)
        ch.close()
    finally:
        a.running.stop(0)
        b.running.stop(0)


@pytest.mark.processes
def test_sigterm_drains_then_finishes_the_calls_in_progress(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "embedder.log"
    # A drain long enough that a loaded machine sees it: the test waits on
    # events (health, answers), never on the clock.
    proc = spawn_embedder(port, log, EMBEDDER_DRAIN_S="5", EMBEDDER_SHUTDOWN_GRACE_S="20")
    try:
        wait_until(lambda: health(port, EMBEDDER_SERVICE) == health_pb2.HealthCheckResponse.SERVING)
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel(port))
        stub.Embed(embed_request(), timeout=60)
        results: list[str] = []
        errors: list[grpc.RpcError] = []
        stop = threading.Event()

        def keep_embedding() -> None:
            while not stop.is_set():
                try:
                    reply = stub.Embed(embed_request(4), timeout=60)
                    results.append(reply.model_id)
                except grpc.RpcError as exc:
                    errors.append(exc)
                    return

        worker = threading.Thread(target=keep_embedding)
        worker.start()
        wait_until(lambda: results)  # calls are flowing
        proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: health(port, EMBEDDER_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        done_before = len(results)
        wait_until(lambda: len(results) > done_before or errors)
        # Still answering while draining: a call answered after NOT_SERVING,
        # and the server still alive (liveness SERVING) after that answer.
        assert not errors, errors
        assert health(port, "") == health_pb2.HealthCheckResponse.SERVING
        assert proc.wait(timeout=30) == 0
        stop.set()
        worker.join(30)
        # Calls after the drain are refused (the server is gone), never cut
        # off half-way: every call that got an answer got a whole one. A call
        # that reached the server as it stopped, before a handler took it, is
        # CANCELLED by gRPC itself rather than UNAVAILABLE (grpc/grpc#41785);
        # either way it got no answer, and it was sent after the drain.
        assert all(results)
        refused = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert all(e.code() in refused for e in errors), errors
        text = log.read_text()
        assert "shutdown.draining" in text and "shutdown.done" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_old_connections_are_closed_without_failing_a_call() -> None:
    """MAX_CONNECTION_AGE_S=1: a client calling for 3.5 s is moved to new
    connections (counted at a TCP proxy in front), and every call succeeds."""
    server = start_embedder(max_connection_age_s=1.0, shutdown_grace_s=5.0)
    proxy = TcpProxy(server.port)
    try:
        ch = make_channel(f"127.0.0.1:{proxy.port}", [EMBEDDER_SERVICE])
        stub = embedder_pb2_grpc.EmbedderServiceStub(ch)
        calls = 0
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            stub.GetModelInfo(embedder_pb2.EmbedderServiceGetModelInfoRequest(), timeout=10)
            calls += 1
            time.sleep(0.05)
        assert calls > 20
        assert len(proxy.conns) // 2 >= 3, len(proxy.conns)
        ch.close()
    finally:
        proxy.close()
        server.running.stop(0)
