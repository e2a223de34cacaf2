"""Recall@K of composed queries on held-out examples, as the TIRG paper
measures CSS: the gallery is every distinct held-out scene, the query's own
source image is left out of its ranking, and a hit is the target scene."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedder_service.decode import squash
from embedder_service.tirg.net import INPUT, ComposedRetrieval
from training.tirg.scenes import Example, Scene, layout, render

KS = (1, 5, 10)


@dataclass
class Gallery:
    scenes: list[Scene]  # distinct layouts, in first-seen order
    source: np.ndarray  # per query: index of its source scene
    target: np.ndarray  # per query: index of its target scene

    @classmethod
    def of(cls, examples: Sequence[Example]) -> Gallery:
        index: dict[str, int] = {}
        scenes: list[Scene] = []

        def at(scene: Scene) -> int:
            key = layout(scene)
            if key not in index:
                index[key] = len(scenes)
                scenes.append(scene)
            return index[key]

        source = np.array([at(ex.source) for ex in examples])
        target = np.array([at(ex.target) for ex in examples])
        return cls(scenes, source, target)

    def write(self, folder: Path) -> list[Path]:
        """Every scene as ``folder/scene-NNNN.png`` (the folder made if
        missing), in gallery order: to index through the stack."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"scene-{i:04d}.png" for i in range(len(self.scenes))]
        for scene, path in zip(self.scenes, paths, strict=True):
            render(scene).save(path)
        return paths


def pixels(scenes: Sequence[Scene]) -> torch.Tensor:
    """(N, 3, 64, 64) uint8, exactly what the embedder feeds the model."""
    return torch.from_numpy(np.stack([squash(render(s), INPUT) for s in scenes])).permute(
        0, 3, 1, 2
    )


def ranks(query: np.ndarray, stored: np.ndarray, gallery: Gallery) -> np.ndarray:
    """0-based rank of each query's target, its own source left out."""
    sims = query @ stored.T
    sims[np.arange(len(sims)), gallery.source] = -np.inf
    own = sims[np.arange(len(sims)), gallery.target]
    return (sims > own[:, None]).sum(axis=1)


def recalls(rank: np.ndarray) -> dict[str, float]:
    return {f"R@{k}": float((rank < k).mean()) for k in KS}


@torch.no_grad()
def evaluate(
    net: ComposedRetrieval, examples: Sequence[Example], batch: int = 256
) -> tuple[dict[str, float], np.ndarray]:
    """Recall@1/5/10 and each query's rank."""
    net.eval()
    gallery = Gallery.of(examples)
    stored = torch.cat(
        [
            net.stored(pixels(gallery.scenes[i : i + batch]))
            for i in range(0, len(gallery.scenes), batch)
        ]
    ).numpy()
    queries = []
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        queries.append(net.query(pixels([ex.source for ex in chunk]), [ex.text for ex in chunk]))
    rank = ranks(torch.cat(queries).numpy(), stored, gallery)
    return recalls(rank), rank
