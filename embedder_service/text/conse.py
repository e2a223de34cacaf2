"""ConSE (Norouzi et al., ICLR 2014): an image's place in a sentence space
is the probability-weighted mean of the sentence vectors of its most likely
ImageNet classes. The classifier head the bundled (or torchvision) weights
already hold runs on the pooled features the image vector comes from, so a
text vector costs one small matrix product per image, no second pass.

Each class is described twice, by its WordNet lemmas ("a photo of a jersey,
T-shirt, tee shirt.") and by its first lemma with its gloss ("jersey: a
close-fitting pullover shirt"); the two sentence vectors are averaged. On
the clothing fixtures that lifts precision@10 by words from 0.36 (first
names only) to 0.56 (bench/RESULTS.md, "Search by words")."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from embedder_service.text.imagenet import GLOSSES, LEMMAS, SYNSETS, ImagenetClasses
from embedder_service.text.minilm import VOCAB, WEIGHTS, SentenceEncoder
from imagesearch import logs

log = logging.getLogger(__name__)

TOP_CLASSES = 20  # classes whose names make an image's text vector
TEMPERATURE = 2.0  # softens the classifier's probabilities before weighting


@dataclass(frozen=True)
class ClassifierWeights:
    """An ImageNet classifier's last layer, from a family's state dict."""

    weight: torch.Tensor  # (1000, features)
    bias: torch.Tensor  # (1000,)


def class_vectors(encoder: SentenceEncoder, classes: ImagenetClasses) -> torch.Tensor:
    """(1000, 384) unit vectors, one per ImageNet class, in class order."""
    lemmas = encoder.encode([f"a photo of a {names}." for names in classes.lemmas], batch=64)
    first = [names.split(", ")[0] for names in classes.lemmas]
    glossed = [f"{name}: {gloss}" for name, gloss in zip(first, classes.glosses, strict=True)]
    return F.normalize(lemmas + encoder.encode(glossed, batch=64), dim=-1)


# Bumped whenever class_vectors would give other vectors for the same files.
RECIPE = "lemmas+gloss/1"


def cache_dir() -> Path:
    """Where the class vectors are kept between starts (XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imagesearch"


def cached_class_vectors(
    encoder: SentenceEncoder, classes: ImagenetClasses, key: str, folder: Path
) -> torch.Tensor:
    """``class_vectors``, kept in ``folder`` under ``key`` (the digests of
    every file they are made of, and the recipe): a few seconds saved at
    every later start. A cache that cannot be written or read is skipped."""
    path = folder / f"conse-class-vectors-{key[:20]}.pt"
    try:
        kept = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(kept, torch.Tensor) and kept.shape == (len(classes.lemmas), encoder.dim):
            return kept
    except (OSError, RuntimeError, ValueError, EOFError):
        pass
    vectors = class_vectors(encoder, classes)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        torch.save(vectors, partial)
        os.replace(partial, path)
    except OSError as exc:
        logs.event(log, "text.cache_unwritable", logging.INFO, path=str(path), error=str(exc))
    return vectors


@functools.cache
def bundled_text() -> tuple[SentenceEncoder, torch.Tensor]:
    """The bundled sentence encoder and the class vectors made with it, once
    per process, and kept on disk between starts."""
    encoder = SentenceEncoder.bundled()
    parts = [WEIGHTS.sha256, VOCAB.sha256, SYNSETS.sha256, LEMMAS.sha256, GLOSSES.sha256, RECIPE]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()
    return encoder, cached_class_vectors(encoder, ImagenetClasses.bundled(), key, cache_dir())


class ConseHead(nn.Module):
    """Pooled image features -> unit vectors in the sentence encoder's space."""

    def __init__(self, classifier: ClassifierWeights, vectors: torch.Tensor) -> None:
        super().__init__()
        classes, features = classifier.weight.shape
        if vectors.shape[0] != classes:
            raise ValueError(f"{vectors.shape[0]} class vectors for a {classes}-class head")
        self.fc = nn.Linear(features, classes)
        with torch.no_grad():
            self.fc.weight.copy_(classifier.weight.float())
            self.fc.bias.copy_(classifier.bias.float())
        self.vectors: torch.Tensor
        self.register_buffer("vectors", vectors.float())

    @torch.inference_mode()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        probs = (self.fc(features.float()) / TEMPERATURE).softmax(-1)
        top = probs.topk(TOP_CLASSES, dim=-1)
        mixed = (top.values.unsqueeze(-1) * self.vectors[top.indices]).sum(1)
        return F.normalize(mixed, dim=-1)


class ConseText:
    """What search by words needs of an embedder with a ConSE head: a query's
    vector (the sentence encoder) and an image's (the head on its features),
    in one space, under one model id."""

    def __init__(self, classifier: ClassifierWeights, image_model_id: str) -> None:
        self.encoder, vectors = bundled_text()
        self.head = ConseHead(classifier, vectors)
        self.dim = self.encoder.dim
        self.model_id = f"conse/{self.encoder.model_id}/{image_model_id}"

    def to(self, device: torch.device) -> ConseText:
        self.head = self.head.to(device)
        return self

    def image_vectors(self, features: torch.Tensor) -> np.ndarray:
        """(N, features) pooled, before normalising -> (N, 384) float32."""
        return self.head(features).float().cpu().numpy()

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts).float().numpy()
