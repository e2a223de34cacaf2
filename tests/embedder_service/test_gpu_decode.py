"""EMBEDDER_GPU_DECODE's decoder (torchvision decode_jpeg + resize on a device).
Without a GPU it runs the same code on the CPU: vectors must agree with the PIL
path on real photos, and every odd image must load or fail exactly as with PIL,
with PIL's message. With a GPU, the service itself is checked on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedder_service.decode import Decoded, DecodeError, Decoder
from embedder_service.gpu_decode import TorchJpegDecoder
from embedder_service.model import make_runner
from embedder_service.settings import EmbedderSettings
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc
from tests.conftest import CLOTHING, ODD, channel, clothing_images, odd_manifest, start_embedder
from tests.embedder_service.test_accuracy import agreement

MAX_PIXELS = EmbedderSettings().max_pixels


def outcome(decoder: Decoder, name: str, data: bytes) -> Decoded | str:
    try:
        return decoder.decode(data, name)
    except DecodeError as exc:
        return exc.message


def test_vectors_agree_with_the_pil_path() -> None:
    runner = make_runner(EmbedderSettings(model="mobilenet_v2", weights="bundled", compile="false"))
    pil, tv = Decoder(MAX_PIXELS), TorchJpegDecoder(torch.device("cpu"), MAX_PIXELS)
    files = [(p, (CLOTHING / p).read_bytes()) for p, _ in clothing_images()]
    a = [pil.decode(d, p) for p, d in files]
    b = [tv.decode(d, p) for p, d in files]
    assert [(x.width, x.height) for x in a] == [(y.width, y.height) for y in b]
    # The same size and crop to the pixel: libjpeg-turbo both ways, only the
    # resize filters differ (a half-pixel shift, as the longer side was once
    # truncated instead of rounded, gave 3 on 0..255 for a 333x400 photo).
    for (p, _), x, y in zip(files, a, b, strict=True):
        assert np.abs(x.pixels.astype(int) - y.pixels.astype(int)).mean() < 0.5, p
    va = runner.embed(np.stack([x.pixels for x in a]))
    vb = runner.embed(np.stack([y.pixels for y in b]))
    cosine, overlap = agreement(va, vb)
    assert cosine >= 0.99 and overlap >= 0.9, (cosine, overlap)


def test_odd_images_load_or_fail_as_with_pil() -> None:
    pil, tv = Decoder(MAX_PIXELS), TorchJpegDecoder(torch.device("cpu"), MAX_PIXELS)
    for name, expect in odd_manifest():
        data = (ODD / name).read_bytes()
        want, got = outcome(pil, name, data), outcome(tv, name, data)
        if expect == "ok":
            assert isinstance(got, Decoded), f"{name}: {got}"
            assert isinstance(want, Decoded)
            assert (got.width, got.height) == (want.width, want.height), name
            assert got.pixels.shape == (224, 224, 3) and got.pixels.dtype == np.uint8
            assert np.abs(got.pixels.astype(int) - want.pixels.astype(int)).mean() < 8, name
        else:
            assert got == want and isinstance(got, str) and name in got, name


def test_setting_on_a_cpu_model_decodes_with_pil() -> None:
    server = start_embedder(gpu_decode=True, device="cpu")
    try:
        name = clothing_images()[0][0]
        request = embedder_pb2.EmbedderServiceEmbedRequest(
            images=[embedder_pb2.Image(name=name, data=(CLOTHING / name).read_bytes())]
        )
        reply = embedder_pb2_grpc.EmbedderServiceStub(channel(server.port)).Embed(
            request, timeout=120
        )
        assert not reply.embeddings[0].error and len(reply.embeddings[0].vector) == 1280 * 4
    finally:
        server.running.stop(1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_decode_agrees_with_pil() -> None:
    gpu = TorchJpegDecoder(torch.device("cuda"), MAX_PIXELS)
    pil = Decoder(MAX_PIXELS)
    for p, _ in clothing_images()[:16]:
        data = (CLOTHING / p).read_bytes()
        a, b = pil.decode(data, p), gpu.decode(data, p)
        assert (a.width, a.height) == (b.width, b.height)
        assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).mean() < 3, p
