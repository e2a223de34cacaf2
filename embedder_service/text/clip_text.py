"""Search by words with CLIP (families/clip.py): an image's text vector is
its image vector, a sentence's is CLIP's text tower's, in the same space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from embedder_service.clip import ClipImage
from embedder_service.text.bpe import ClipBpe


class ClipText:
    def __init__(self, image: ClipImage, folder: Path, model_id: str) -> None:
        config = image.config
        self.text_model = image.text_model
        self.projection = image.text_projection
        self.tokenizer = ClipBpe(folder, config.positions)
        self.eos = config.eos
        self.dim = config.projection
        self.model_id = model_id  # the image space is the text space

    def to(self, device: torch.device) -> ClipText:
        self.text_model = self.text_model.to(device)
        self.projection = self.projection.to(device)
        return self

    def image_vectors(self, features: torch.Tensor) -> np.ndarray:
        return F.normalize(features.float(), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def text_vectors(self, texts: list[str]) -> np.ndarray:
        rows = [self.tokenizer.encode(t) for t in texts]
        width = max(len(r) for r in rows)
        device = self.projection.weight.device
        ids = torch.tensor([r + [self.eos] * (width - len(r)) for r in rows], device=device)
        ends = torch.tensor([len(r) - 1 for r in rows], device=device)
        out = self.projection(self.text_model(ids, ends).float())
        return F.normalize(out, dim=-1).cpu().numpy()
