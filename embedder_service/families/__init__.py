"""The model registry: every value EMBEDDER_MODEL takes, one family each.

A new family is one module beside these (a ``Family``: name, builder, size,
weights, precision and input rules) and one line in ``FAMILIES``. The policy
that spans families lives here too: which bundled weights exist, what a user
can do when ImageNet weights cannot be had, and EMBEDDER_WEIGHTS_FALLBACK."""

from __future__ import annotations

import logging

from embedder_service.families.base import Family, Loaded
from embedder_service.families.clip import CLIP
from embedder_service.families.efficientnet_lite import EFFICIENTNET_LITE0
from embedder_service.families.tirg import TIRG_CSS
from embedder_service.families.torchvision_cnn import MOBILENET_V2, RESNET18, RESNET50, VGG16
from embedder_service.weights import Weights, WeightsUnavailable
from imagesearch import logs

log = logging.getLogger(__name__)

FAMILIES: dict[str, Family] = {
    f.name: f for f in (RESNET50, RESNET18, VGG16, MOBILENET_V2, EFFICIENTNET_LITE0, TIRG_CSS, CLIP)
}
# What EMBEDDER_WEIGHTS_FALLBACK=bundled serves when the chosen model's ImageNet
# weights cannot be had: the better bundled model on bench/quality.py (class
# P@5 0.575 against MobileNetV2's 0.512, the same copy R@1; bench/RESULTS.md).
FALLBACK = EFFICIENTNET_LITE0

__all__ = ["FALLBACK", "FAMILIES", "Family", "Loaded", "bundled_image_models", "open_model"]


def bundled_image_models() -> list[str]:
    """Image families whose ImageNet weights a pinned package ships."""
    return [f.name for f in FAMILIES.values() if f.bundle is not None and not f.composes]


def ways_out(model: str) -> str:
    return (
        f"Either point EMBEDDER_WEIGHTS at a {model} state-dict file you have, or use "
        f"bundled ImageNet weights: EMBEDDER_MODEL={' or '.join(bundled_image_models())} "
        "with EMBEDDER_WEIGHTS=bundled (see docs/models.md, 'Model weights')."
    )


def open_model(
    model: str, spec: str, fallback: str, pooling: str = "avg", gem_p: float = 3.0
) -> tuple[Family, Loaded]:
    """The family EMBEDDER_MODEL names with EMBEDDER_WEIGHTS in it; another
    family only when ImageNet weights are missing and EMBEDDER_WEIGHTS_FALLBACK
    is bundled (logged loudly, and said in the weights' note)."""
    family = FAMILIES[model]
    if spec == "bundled" and not family.ships_weights:
        raise WeightsUnavailable(
            f"EMBEDDER_WEIGHTS=bundled has weights for {' and '.join(bundled_image_models())} "
            f"only; set EMBEDDER_MODEL to one of them (not {model})"
        )
    try:
        return family, family.open(spec, pooling, gem_p)
    except WeightsUnavailable as exc:
        if spec != "imagenet" or family.composes or family.open_weights is not None:
            raise
        if fallback != "bundled":
            raise WeightsUnavailable(f"{exc} {ways_out(model)}") from None
        reason = str(exc)
    weights = FALLBACK.bundled()
    note = (
        f"FALLBACK: {model} ImageNet weights unavailable, serving {FALLBACK.name} with "
        f"the bundled ImageNet weights instead ({reason})"
    )
    logs.event(
        log,
        "weights.fallback",
        logging.WARNING,
        wanted=model,
        using=f"{FALLBACK.name}/bundled",
        reason=reason,
    )
    marked = Weights(weights.state_dict, "bundled", weights.digest, True, note=note)
    return FALLBACK, FALLBACK.load(marked, pooling, gem_p)
