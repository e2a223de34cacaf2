"""CLIP from a Hugging Face checkpoint folder the user names
(``EMBEDDER_MODEL=clip EMBEDDER_WEIGHTS=/models/clip-vit-base-patch32``:
``config.json``, ``model.safetensors``, ``vocab.json``, ``merges.txt``). Its
image vectors are the images' vectors, and sentences go into the same space,
so collections of it are searched by words with no ConSE in between. No
CLIP weights ship with the project; ``random`` builds ViT-B/32's shape."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from embedder_service.clip import MEAN, STD, VIT_B_32, ClipConfig, ClipImage, ClipModel
from embedder_service.families.base import Family
from embedder_service.weights import Weights, WeightsUnavailable, file_sha256, read_safetensors

FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")


def open_folder(spec: str) -> Weights:
    """EMBEDDER_WEIGHTS for clip: a checkpoint folder."""
    folder = Path(spec).expanduser()
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise WeightsUnavailable(
            f"EMBEDDER_MODEL=clip needs EMBEDDER_WEIGHTS to name a Hugging Face CLIP checkpoint "
            f"folder ({', '.join(FILES)}); {spec!r} lacks {', '.join(missing)}"
        )
    weights = folder / "model.safetensors"
    return Weights(read_safetensors(weights), str(folder.resolve()), file_sha256(weights), True)


def _build(weights: Weights) -> tuple[nn.Module, nn.Module | None]:
    config = VIT_B_32 if weights.state_dict is None else ClipConfig.read(Path(weights.source))
    model = ClipModel(config)
    if weights.state_dict is not None:
        model.load(weights.state_dict)
    return ClipImage(model), None


CLIP = Family(
    "clip",
    "CLIP from a Hugging Face checkpoint folder (EMBEDDER_WEIGHTS=FOLDER); searches by words",
    512,
    _build,
    mean=tuple(m * 255 for m in MEAN),
    std=tuple(s * 255 for s in STD),
    head_pooling="proj",
    open_weights=open_folder,
)
