"""TIRG on CSS-like scenes (embedder_service/tirg): a composing model, trained
here, that embeds an image alone or an image with a text that changes it. Its
checkpoint carries the network and the vocabulary; it sees whole images at
64 px and runs eager (ComposingRunner)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from embedder_service.families.base import Family, Loaded
from embedder_service.tirg import checkpoint
from embedder_service.tirg.net import DIM, INPUT
from embedder_service.weights import Weights


def _no_build(weights: Weights) -> tuple[nn.Module, nn.Module | None]:
    raise NotImplementedError("a composing family opens its checkpoint whole")


@dataclass(frozen=True)
class ComposingFamily(Family):
    """A family whose checkpoint is the whole network (no trunk to assemble)."""

    @property
    def ships_weights(self) -> bool:
        return True  # the checkpoint trained here, beside embedder_service/tirg/checkpoint.py

    def open(self, spec: str, pooling: str, gem_p: float) -> Loaded:
        """EMBEDDER_WEIGHTS: imagenet or bundled (the shipped checkpoint),
        random, or a checkpoint file; EMBEDDER_POOLING does not apply."""
        net, weights = checkpoint.load(spec)
        return Loaded(net, "flat", weights)


TIRG_CSS = ComposingFamily(
    "tirg_css",
    "composed image+text queries on CSS-like scenes, 256-d; whole images at 64 px",
    DIM,
    _no_build,
    bf16_safe=False,  # small: float32 costs little
    composes=True,
    input_size=INPUT,
)
