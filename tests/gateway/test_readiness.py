"""Calls that arrive while the stack is still starting wait for it; the
gateway's readiness follows its backends. Real servers and processes."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagesearch.client import Client, ImageSearchError, IndexReport
from tests.conftest import (
    CLOTHING,
    channel,
    clothing_images,
    free_port,
    spawn_embedder,
    start_gateway,
    start_index,
    wait_until,
)

SERVICE = "imagesearch.v1.GatewayService"


def health(port: int, service: str) -> int:
    reply = health_pb2_grpc.HealthStub(channel(port)).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10
    )
    return reply.status


@pytest.mark.processes
def test_a_call_during_start_up_waits_for_the_embedder(tmp_path: Path) -> None:
    port = free_port()  # the embedder will listen here, later
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, f"127.0.0.1:{port}", index.addr)
    embedder = None
    try:
        # Alive (liveness) but not ready (readiness) while the embedder is away.
        assert health(gateway.port, "") == health_pb2.HealthCheckResponse.SERVING
        assert health(gateway.port, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING

        photos = [(str(CLOTHING / p), (CLOTHING / p).read_bytes()) for p, _ in clothing_images()]
        results: list[IndexReport | ImageSearchError] = []

        def index_now() -> None:
            with Client(gateway.addr, timeout=120) as client:
                try:
                    results.append(client.index_images(photos[:8], collection="early"))
                except ImageSearchError as exc:
                    results.append(exc)

        caller = threading.Thread(target=index_now)
        caller.start()
        caller.join(timeout=1.5)
        assert caller.is_alive() and not results  # waiting, not failed

        embedder = spawn_embedder(port, tmp_path / "embedder.log")
        caller.join(timeout=180)
        (report,) = results
        assert isinstance(report, IndexReport), report
        assert (report.indexed, report.failed) == (8, 0)
        wait_until(
            lambda: health(gateway.port, SERVICE) == health_pb2.HealthCheckResponse.SERVING, 30
        )
        with Client(gateway.addr) as client:
            assert client.ready()
            assert client.count(collection="early").count == 8
    finally:
        if embedder is not None:
            embedder.kill()
        gateway.running.stop(1)
        index.running.stop(1)


@pytest.mark.slow
def test_a_backend_that_never_comes_fails_unavailable_naming_it(tmp_path: Path) -> None:
    nowhere = free_port()
    index = start_index(tmp_path / "index")
    gateway = start_gateway(tmp_path, f"127.0.0.1:{nowhere}", index.addr, backend_wait_s=0.5)
    try:
        with Client(gateway.addr, retries=1) as client:
            with pytest.raises(ImageSearchError) as err:
                client.search(image=(CLOTHING / clothing_images()[0][0]).read_bytes())
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
            assert "the embedder is not reachable" in err.value.message
            assert str(nowhere) not in err.value.message  # addresses go to the log only
            assert "GATEWAY_BACKEND_WAIT_S" in err.value.message
            # A deadline shorter than the wait is the caller's to keep.
            with pytest.raises(ImageSearchError) as err:
                client.search(image=b"x", timeout=0.2)
            assert err.value.code in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNAVAILABLE,
            )
            # Calls that need only the index still work.
            assert client.list_collections() == []
    finally:
        gateway.running.stop(1)
        index.running.stop(1)
