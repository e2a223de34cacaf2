"""What a model family declares: its name, how its network is built, its
vector size, where its weights come from, which precisions keep it accurate,
and how its input is prepared. The registry (``embedder_service.families``)
lists them; settings, weights, the dtype policy and the runners read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from embedder_service.trunk import IMAGENET_MEAN_255, IMAGENET_STD_255, Trunk, make_pool
from embedder_service.weights import (
    Bundle,
    Weights,
    from_file,
    load_bundle,
    random_weights,
    torchvision_imagenet,
)

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Loaded:
    """A family's network with its weights in, ready for a runner."""

    net: nn.Module
    pooling: str  # as the model id names it: avg, gem, gem4, fc7, flat
    weights: Weights


@dataclass(frozen=True)
class Family:
    """One value of EMBEDDER_MODEL: an image model whose trunk (body, pooling,
    optional head) turns a centre crop into a vector."""

    name: str
    summary: str  # EMBEDDER_MODEL's help, after the name
    dim: int  # the vector's size
    # Builds the body and head (None: the pooled features are the vector) and
    # loads the weights into them (None state dict: random init).
    build: Callable[[Weights], tuple[nn.Module, nn.Module | None]]
    bundle: Bundle | None = None  # ImageNet weights a pinned package ships
    bundled_only: bool = False  # torchvision has none: EMBEDDER_WEIGHTS=imagenet means the bundle
    # The bundle's state dict under the names ``build`` loads (another layout).
    adapt_bundle: Callable[[StateDict, Path], StateDict] | None = None
    # bf16 vectors stay within cosine 0.99 of fp32 on real photos
    # (tests/embedder_service/test_accuracy.py measures the bundled ones);
    # EMBEDDER_DTYPE=auto keeps an unsafe family in float32 on the CPU.
    bf16_safe: bool = True
    # EMBEDDER_DTYPE=int8 quantizes depthwise convolutions too; False keeps
    # them in floating point (MobileNetV2 loses too much otherwise).
    int8_depthwise: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN_255  # per channel, on 0..255 pixels
    std: tuple[float, ...] = IMAGENET_STD_255
    size_multiple: int = 1  # EMBEDDER_IMAGE_SIZE must be a multiple of this
    head_pooling: str = ""  # the head gives the vector (EMBEDDER_POOLING does not apply)
    composes: bool = False  # takes a text with an image (a composed query)
    input_size: int = 0  # > 0: the whole image squashed to this square, not a crop
    # State-dict keys (weight, bias) of the ImageNet classifier the weights
    # hold: search by words (ConSE, embedder_service/text/conse.py) runs it.
    classifier: tuple[str, str] | None = None
    # EMBEDDER_WEIGHTS read the family's own way (a checkpoint folder), but
    # for ``random``.
    open_weights: Callable[[str], Weights] | None = None

    @property
    def ships_weights(self) -> bool:
        """EMBEDDER_WEIGHTS=bundled works for this family."""
        return self.bundle is not None

    def weights(self, spec: str) -> Weights:
        """EMBEDDER_WEIGHTS: imagenet, bundled, random or a state-dict file."""
        if spec == "random":
            return random_weights()
        if self.open_weights is not None:
            return self.open_weights(spec)
        if spec == "bundled" or (spec == "imagenet" and self.bundled_only):
            return self.bundled()
        if spec == "imagenet":
            return torchvision_imagenet(self.name)
        return from_file(spec)

    def bundled(self) -> Weights:
        if self.bundle is None:
            raise ValueError(f"{self.name} ships no weights")  # the registry checks first
        state_dict, digest, path = load_bundle(self.bundle)
        if self.adapt_bundle is not None:
            state_dict = self.adapt_bundle(state_dict, path)
        return Weights(state_dict, "bundled", digest, True, note=self.bundle.note)

    def load(self, weights: Weights, pooling: str, gem_p: float) -> Loaded:
        """The trunk with ``weights`` in; only a classification head may be missing."""
        if weights.state_dict is None:
            torch.manual_seed(0)  # random init is reproducible across replicas
        body, head = self.build(weights)
        if self.head_pooling:
            trunk = Trunk(body, nn.Identity(), head, self.mean, self.std)
            return Loaded(trunk, self.head_pooling, weights)
        pool, name = make_pool(pooling, gem_p)
        return Loaded(Trunk(body, pool, head, self.mean, self.std), name, weights)

    def open(self, spec: str, pooling: str, gem_p: float) -> Loaded:
        return self.load(self.weights(spec), pooling, gem_p)
