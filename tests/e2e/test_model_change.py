"""The offline fallback changed from MobileNetV2 to EfficientNet-Lite0: a
collection indexed with the old one keeps its data and answers every call of
the new embedder with FAILED_PRECONDITION saying exactly how to go on."""

from __future__ import annotations

import grpc
import pytest

from imagesearch.client import Client, ImageSearchError
from tests.conftest import CLOTHING, Stack, clothing_images, start_embedder, start_gateway


@pytest.mark.slow
def test_a_collection_of_the_old_fallback_says_how_to_go_on(stack: Stack) -> None:
    photos = [(p, (CLOTHING / p).read_bytes()) for p, _ in clothing_images()[:6]]
    with Client(stack.gateway.addr) as old:  # the shared embedder: mobilenet_v2, bundled
        old.index_images(photos[:4], collection="before")
    lite = start_embedder(model="efficientnet_lite0")
    gateway = start_gateway(stack.tmp / "lite", lite.addr, stack.index.addr)
    try:
        with Client(gateway.addr) as new:
            with pytest.raises(ImageSearchError) as err:
                new.search(image=photos[0][1], collection="before")
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
            message = err.value.message
            for words in (
                "mobilenet_v2/avg/",
                "efficientnet_lite0/avg/",
                "EMBEDDER_MODEL=mobilenet_v2 EMBEDDER_POOLING=avg",
                "EMBEDDER_WEIGHTS=bundled",
                "imgsearch drop -c before --yes",
            ):
                assert words in message, (words, message)
            with pytest.raises(ImageSearchError) as err:
                new.index_images(photos[4:], collection="before")
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "EMBEDDER_MODEL=mobilenet_v2" in err.value.message
            assert new.count(collection="before").count == 4  # nothing lost
            # A new collection works with the new model; the old one with the old.
            new.index_images(photos, collection="after")
            assert (
                new.search(image=photos[5][1], collection="after", top_k=1)[0].path == photos[5][0]
            )
        with Client(stack.gateway.addr) as old:
            assert (
                old.search(image=photos[2][1], collection="before", top_k=1)[0].path == photos[2][0]
            )
    finally:
        gateway.running.stop(1)
        lite.running.stop(1)
