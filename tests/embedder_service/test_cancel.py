"""A caller that cancels or runs out of time takes its queued images along:
they are not decoded or run through the model. Real model (bundled
MobileNetV2), real gRPC server; the model is slowed down so that images queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import grpc
import numpy as np
import pytest

from embedder_service.batcher import Batcher, Pixels
from embedder_service.decode import Decoder
from embedder_service.model import make_runner
from embedder_service.servicer import EmbedderServicer
from embedder_service.settings import EmbedderSettings
from imagesearch.server import start_server
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc
from tests.conftest import CLOTHING, channel, clothing_images, wait_until

MAX_BATCH = 4
BATCH_PAUSE_S = 0.25  # per model batch, on top of the model's own time


@pytest.fixture
def slow_embedder():
    settings = EmbedderSettings(
        host="127.0.0.1", port=0, model="mobilenet_v2", weights="bundled", compile="false"
    )
    runner = make_runner(settings)
    seen: list[int] = []

    def slow_model(pixels: Pixels, texts: Sequence[str]) -> np.ndarray:
        seen.append(len(pixels))
        time.sleep(BATCH_PAUSE_S)
        return runner.embed(pixels, texts)

    batcher = Batcher(
        slow_model,
        Decoder(settings.max_pixels, settings.resize, settings.image_size),
        max_batch=MAX_BATCH,
        max_wait_s=0.002,
        queue_size=1024,
        decode_workers=1,
    )
    servicer = EmbedderServicer(batcher, runner.info, settings)
    running = start_server(
        [lambda s: embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(servicer, s)],
        ["imagesearch.v1.EmbedderService"],
        **settings.server_options(),
    )
    yield running, batcher, seen
    running.stop(1)
    batcher.close()


def request(count: int) -> embedder_pb2.EmbedderServiceEmbedRequest:
    photos = [p for p, _ in clothing_images()][:count]
    return embedder_pb2.EmbedderServiceEmbedRequest(
        images=[embedder_pb2.Image(name=p, data=(CLOTHING / p).read_bytes()) for p in photos]
    )


@pytest.mark.slow
def test_deadline_drops_queued_images(slow_embedder) -> None:
    running, batcher, seen = slow_embedder
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel(running.port))
    # 64 images take 16 batches (> 4 s); the caller gives up after 1 s.
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(request(64), timeout=1.0)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Everything accepted is either embedded or dropped, and then nothing runs.
    wait_until(lambda: batcher.embedded + batcher.canceled == 64, timeout=60)
    embedded = sum(seen)
    assert embedded == batcher.embedded
    assert embedded <= 4 * MAX_BATCH, f"{embedded} images ran after a 1 s deadline"
    assert batcher.canceled >= 64 - 4 * MAX_BATCH
    time.sleep(2 * BATCH_PAUSE_S)
    assert sum(seen) == embedded

    # The embedder still serves whole calls afterwards.
    reply = stub.Embed(request(8), timeout=60)
    assert [e.error for e in reply.embeddings] == [""] * 8
    assert sum(seen) == embedded + 8


def test_cancel_drops_queued_images(slow_embedder) -> None:
    running, batcher, seen = slow_embedder
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel(running.port))
    call = stub.Embed.future(request(64), timeout=60)
    wait_until(lambda: sum(seen) >= MAX_BATCH, timeout=30)  # the model has started on it
    threading.Thread(target=call.cancel).start()
    wait_until(lambda: batcher.embedded + batcher.canceled == 64, timeout=60)
    assert call.cancelled()
    assert batcher.canceled > 0
    assert sum(seen) == batcher.embedded < 64


def test_a_canceled_gateway_call_cancels_its_embed(slow_embedder, tmp_path) -> None:
    """The cancellation flows through the gateway: a client that cancels its
    IndexImages stream takes the images queued in the embedder along."""
    from imagesearch.client import image_requests
    from imagesearch.v1 import gateway_pb2_grpc
    from tests.conftest import start_gateway, start_index

    running, batcher, seen = slow_embedder
    index = start_index(tmp_path / "index")
    gateway = start_gateway(
        tmp_path, f"127.0.0.1:{running.port}", index.addr, embed_batch=64, job_concurrency=1
    )
    try:
        photos = [(p, (CLOTHING / p).read_bytes()) for p, _ in clothing_images()]
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
        call = stub.IndexImages.future(image_requests("cancel", photos), timeout=120)
        wait_until(lambda: sum(seen) >= MAX_BATCH, timeout=60)  # the model is on it
        call.cancel()
        wait_until(lambda: batcher.embedded + batcher.canceled == 64, timeout=60)
        assert batcher.canceled > 0
        assert sum(seen) == batcher.embedded < 64
    finally:
        gateway.running.stop(1)
        index.running.stop(1)
