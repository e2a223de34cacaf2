"""The network every image family serves: uint8 NCHW images, normalised per
channel, through a body and a pooling (and an optional head) to one vector."""

from __future__ import annotations

import torch
from torch import nn

from embedder_service.weights import Weights

IMAGENET_MEAN_255 = tuple(255.0 * v for v in (0.485, 0.456, 0.406))  # on 0..255 pixels
IMAGENET_STD_255 = tuple(255.0 * v for v in (0.229, 0.224, 0.225))

# Keys that belong to the classification head we discard; a weights file may
# lack them.
HEAD_PREFIXES = ("fc.", "classifier.", "_fc.")


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.), p=1 is average pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / self.p)


def make_pool(pooling: str, gem_p: float) -> tuple[nn.Module, str]:
    """EMBEDDER_POOLING as a module, and its name in the model id (a GeM
    exponent other than 3 is another vector space)."""
    if pooling != "gem":
        return nn.AdaptiveAvgPool2d(1), pooling
    return GeM(gem_p), "gem" if gem_p == 3.0 else f"gem{gem_p:g}"


class Trunk(nn.Module):
    """uint8 NCHW images -> normalised float -> features -> pooled vector."""

    def __init__(
        self,
        body: nn.Module,
        pool: nn.Module,
        head: nn.Module | None,
        mean: tuple[float, ...] = IMAGENET_MEAN_255,
        std: tuple[float, ...] = IMAGENET_STD_255,
    ) -> None:
        """``mean``, ``std``: per channel, on 0..255 pixels."""
        super().__init__()
        self.body = body
        self.pool = pool
        self.head = head
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        x = self.pool(self.body(x))
        x = torch.flatten(x, 1)
        if self.head is not None:
            x = self.head(x)
        return x


def load_into(net: nn.Module, weights: Weights, model: str) -> None:
    """Loads the weights (if any); only the classification head may be missing."""
    if weights.state_dict is None:
        return
    result = net.load_state_dict(weights.state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(HEAD_PREFIXES)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights '{weights.source}' do not fit {model}: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )
