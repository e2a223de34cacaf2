"""The batcher cuts a batch that a compiled model would mostly pad: real
model (bundled MobileNetV2), real decoder, the clothing photos."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from embedder_service.batcher import Batcher, Pixels
from embedder_service.decode import Decoder
from embedder_service.model import ModelRunner, make_runner
from embedder_service.settings import EmbedderSettings
from tests.conftest import CLOTHING, clothing_images

SIZES = (1, 8, 32)  # what a compiled runner pads to at EMBEDDER_MAX_BATCH=32


SETTINGS = EmbedderSettings(model="mobilenet_v2", weights="bundled", compile="false")


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return make_runner(SETTINGS)


def decoder() -> Decoder:
    return Decoder(SETTINGS.max_pixels, SETTINGS.resize, SETTINGS.image_size)


def batches(runner: ModelRunner, sizes: Sequence[int], counts: Sequence[int]) -> list[int]:
    """The batch sizes the model is given for calls of ``counts`` images,
    each submitted once the one before has been embedded. Every call's
    images are all decoded within the wait, so only the cut splits them."""
    seen: list[int] = []

    def model(pixels: Pixels, texts: Sequence[str]) -> np.ndarray:
        seen.append(len(pixels))
        return runner.embed(pixels, texts)

    batcher = Batcher(
        model,
        decoder(),
        max_batch=32,
        max_wait_s=1.5,
        queue_size=1024,
        decode_workers=2,
        sizes=lambda: sizes,
    )
    photos = [(p, (CLOTHING / p).read_bytes()) for p, _ in clothing_images()]
    try:
        for count in counts:
            futures = batcher.submit(photos[:count])
            results = [f.result(timeout=60) for f in futures]
            assert all(r.vector is not None for r in results)
            vectors = np.stack([r.vector for r in results if r.vector is not None])
            pixels = [decoder().decode(data, name).pixels for name, data in photos[:count]]
            alone = runner.embed(np.stack(pixels))
            assert np.allclose(vectors, alone, atol=1e-4)  # each image keeps its own vector
    finally:
        batcher.close()
    return seen


@pytest.mark.slow
def test_a_batch_mostly_padding_is_cut_to_the_size_below(runner: ModelRunner) -> None:
    # 12 would run padded to 32: 8 run, then the other 4 (padded to 8).
    # 28 fill 32 well enough to run padded; 5 run padded to 8 (below is 1).
    assert batches(runner, SIZES, [12, 28, 5]) == [8, 4, 28, 5]


@pytest.mark.slow
def test_an_eager_model_runs_each_batch_whole(runner: ModelRunner) -> None:
    assert batches(runner, (), [12, 5]) == [12, 5]
