"""One caller cannot stall a service: idle streams, calls whose body never
comes and silent uploads are held by no thread and ended by their idle limit,
each kind of call has its own cap, and health answers throughout. Real
gateway and index servers; the attacker is a plain gRPC client on loopback,
bounded in streams and time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc, index_pb2
from tests.conftest import (
    CLOTHING,
    Server,
    channel,
    clothing_images,
    gateway_stack,
)

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
ANSWER_S = 5.0  # what "still answering" means here


class Stall:
    """Request iterators that block until released: a client that opened
    its streams and then sends nothing (after ``first`` messages)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def requests(self, *first: object) -> Iterator[object]:
        yield from first
        self.release.wait(120)


def idle_reflection(ch: grpc.Channel, stall: Stall, count: int) -> list[object]:
    open_stream = ch.stream_stream(
        REFLECTION,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return [open_stream(stall.requests(), timeout=120) for _ in range(count)]


def health_and_count(port: int, count: object) -> float:
    """Health.Check and ``count()`` on a fresh channel: seconds both took."""
    started = time.monotonic()
    health = health_pb2_grpc.HealthStub(channel(port)).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=ANSWER_S
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    count()  # type: ignore[operator]
    return time.monotonic() - started


@pytest.fixture
def backends(embedder: Server, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Gateway and index with one photo in collection ``seen``."""
    with gateway_stack(embedder, tmp_path) as running:
        photo = (CLOTHING / clothing_images()[0][0]).read_bytes()
        reply = gateway_pb2_grpc.GatewayServiceStub(channel(running.gateway.port)).IndexImages(
            iter([gateway_pb2.IndexImagesRequest(collection="seen", name="p", data=photo)]),
            timeout=60,
        )
        assert reply.indexed == 1
        yield running.gateway, running.index


@pytest.mark.slow
def test_idle_streams_do_not_stall_the_gateway(backends: tuple[Server, Server]) -> None:
    gateway, _ = backends
    stall = Stall()
    attacker = channel(gateway.port)
    stub = gateway_pb2_grpc.GatewayServiceStub(attacker)
    try:
        held: list[object] = idle_reflection(attacker, stall, 64)
        # 8 upload streams that never send, 8 that send half an image and stop.
        chunk = gateway_pb2.IndexImagesRequest(name="a.jpg", data=b"\xff\xd8", more_chunks=True)
        held += [stub.IndexImages.future(stall.requests(), timeout=120) for _ in range(8)]
        held += [stub.IndexImages.future(stall.requests(chunk), timeout=120) for _ in range(8)]
        time.sleep(1.0)  # every stream is open on the server

        def count() -> None:
            stub_fresh = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
            reply = stub_fresh.Count(gateway_pb2.CountRequest(collection="seen"), timeout=ANSWER_S)
            assert reply.count == 1

        assert health_and_count(gateway.port, count) < ANSWER_S
        # The attacker's own connection answers too (it is under its stream cap).
        assert stub.Count(gateway_pb2.CountRequest(collection="seen"), timeout=ANSWER_S).count == 1
        health_pb2_grpc.HealthStub(attacker).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=ANSWER_S
        )
    finally:
        stall.release.set()
        attacker.close()


@pytest.mark.slow
def test_idle_streams_and_missing_bodies_do_not_stall_the_index(
    backends: tuple[Server, Server],
) -> None:
    _, index = backends
    stall = Stall()
    attacker = channel(index.port)
    # Unary calls whose request never arrives: headers sent, no message.
    no_body = attacker.stream_unary(
        "/imagesearch.v1.IndexService/Count",
        request_serializer=index_pb2.IndexServiceCountRequest.SerializeToString,
        response_deserializer=index_pb2.IndexServiceCountResponse.FromString,
    )
    try:
        idle_reflection(attacker, stall, 64)
        for _ in range(32):
            no_body.future(stall.requests(), timeout=120)
        time.sleep(1.0)

        def count() -> None:
            fresh = channel(index.port).unary_unary(
                "/imagesearch.v1.IndexService/Count",
                request_serializer=index_pb2.IndexServiceCountRequest.SerializeToString,
                response_deserializer=index_pb2.IndexServiceCountResponse.FromString,
            )
            reply = fresh(index_pb2.IndexServiceCountRequest(collection="seen"), timeout=ANSWER_S)
            assert reply.count == 1

        assert health_and_count(index.port, count) < ANSWER_S
    finally:
        stall.release.set()
        attacker.close()


@pytest.mark.slow
def test_idle_calls_are_ended_with_a_sentence(embedder: Server, tmp_path: Path) -> None:
    with gateway_stack(embedder, tmp_path, stream_idle_s=1.0) as running:
        gateway = running.gateway
        stall = Stall()
        ch = channel(gateway.port)
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        try:
            chunk = gateway_pb2.IndexImagesRequest(name="a.jpg", data=b"\xff\xd8", more_chunks=True)
            cases = {
                "a silent upload": lambda: stub.IndexImages(stall.requests(chunk), timeout=30),
                "an upload that never starts": lambda: stub.IndexImages(
                    stall.requests(), timeout=30
                ),
                "a call whose body never comes": lambda: ch.stream_unary(
                    "/imagesearch.v1.GatewayService/Count",
                    request_serializer=gateway_pb2.CountRequest.SerializeToString,
                    response_deserializer=gateway_pb2.CountResponse.FromString,
                )(stall.requests(), timeout=30),
                "a silent reflection session": lambda: list(
                    idle_reflection(ch, stall, 1)[0]  # type: ignore[call-overload]
                ),
            }
            for what, call in cases.items():
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:
                    call()
                took = time.monotonic() - started
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, what
                assert "GATEWAY_STREAM_IDLE_S" in str(err.value.details()), what
                assert 0.9 < took < 10, f"{what}: ended after {took:.1f} s"
            # A stream that keeps sending is not idle, however long it lasts.
            photo = (CLOTHING / clothing_images()[0][0]).read_bytes()

            def slow() -> Iterator[gateway_pb2.IndexImagesRequest]:
                for i in range(3):
                    time.sleep(0.6)
                    half = len(photo) // 2
                    yield gateway_pb2.IndexImagesRequest(
                        collection="slow", name=f"p{i}", data=photo[:half], more_chunks=True
                    )
                    time.sleep(0.6)
                    yield gateway_pb2.IndexImagesRequest(name=f"p{i}", data=photo[half:])

            reply = stub.IndexImages(slow(), timeout=60)
            assert reply.indexed + reply.duplicates == 3 and reply.failed == 0
        finally:
            stall.release.set()
            ch.close()


@pytest.mark.slow
def test_watchers_cannot_lock_out_uploads(embedder: Server, tmp_path: Path) -> None:
    """Watchers and uploads have caps of their own: a reader who opens every
    watcher slot leaves uploads and short calls working."""
    with gateway_stack(
        embedder, tmp_path, max_watchers=4, embed_batch=1, job_concurrency=1
    ) as running:
        gateway = running.gateway
        ch = channel(gateway.port)
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        try:
            job = stub.StartIndexJob(
                gateway_pb2.StartIndexJobRequest(
                    collection="w", folder=str(CLOTHING), recursive=True
                ),
                timeout=30,
            ).job
            watchers = [
                stub.WatchJob(gateway_pb2.WatchJobRequest(job_id=job.job_id), timeout=60)
                for _ in range(16)
            ]
            refused = 0
            for w in watchers:
                try:
                    next(w)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "GATEWAY_MAX_WATCHERS" in str(exc.details())
                    refused += 1
            assert refused == 12
            photo = (CLOTHING / clothing_images()[1][0]).read_bytes()
            reply = stub.IndexImages(
                iter([gateway_pb2.IndexImagesRequest(collection="up", name="p", data=photo)]),
                timeout=60,
            )
            assert reply.indexed == 1
            for w in watchers:
                w.cancel()
        finally:
            ch.close()


def test_bytes_that_are_not_the_message_are_invalid_argument(
    backends: tuple[Server, Server],
) -> None:
    """Found by tools/fuzz.py: a request that does not parse was answered
    INTERNAL (a crash in the log); it is the caller's mistake."""
    for server, method in (
        (backends[0], "/imagesearch.v1.GatewayService/Count"),
        (backends[1], "/imagesearch.v1.IndexService/Count"),
    ):
        call = channel(server.port).unary_unary(method, None, None)  # bytes as they are
        for raw in (b"\x01\n\x04fuz\x00" + bytes(44), b"\x00\x00", b"\xff" * 9):
            with pytest.raises(grpc.RpcError) as err:
                call(raw, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raw
            assert "not a valid message" in str(err.value.details())
