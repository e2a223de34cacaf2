"""Text in the embedder: a sentence encoder (all-MiniLM-L6-v2, our own BERT
and WordPiece over the weights a pinned package ships), the text heads of
the image families that can search by words (ConSE), and CLIP's text side."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class TextSide(Protocol):
    """What search by words needs of an embedder: its text space's size and
    id, a sentence's vector, and an image's from its pooled features."""

    dim: int
    model_id: str

    def to(self, device: torch.device) -> TextSide: ...

    def image_vectors(self, features: torch.Tensor) -> np.ndarray: ...

    def text_vectors(self, texts: list[str]) -> np.ndarray: ...
