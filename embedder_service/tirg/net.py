"""TIRG (Vo et al., CVPR 2019) and the baselines it is measured against.

A small CNN encodes the image and an LSTM over the generator's vocabulary
encodes the text, both to ``DIM``; a composer makes the query vector:

- ``tirg``: gated residual, ``w_g * sigmoid(G([x, t])) * x + w_r * R([x, t])``;
- ``concat``: an MLP over ``[x, t]``;
- ``image``: an MLP over ``x`` alone; ``text``: an MLP over ``t`` alone.

Stored images are encoded by the image encoder alone. Everything is trained
from scratch by ``training.tirg.train``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from embedder_service.tirg.words import tokens, vocabulary

INPUT = 64  # pixels: the whole image, squashed to INPUT x INPUT, nothing cropped
DIM = 256
MAX_TOKENS = 24
COMPOSERS = ("tirg", "concat", "image", "text")
# Softmax scale (inverse temperature) at the start, learned from there. Small
# scenes differ in one object, so their vectors lie close: at 4 (TIRG's code)
# the model learns to stay by the query's source, at 32 it leaves it (R@1 0.82
# against 0.95 on held-out scenes after 500 steps; bench/RESULTS.md).
SCALE_INIT = 32.0
PAD, UNK = 0, 1


class Vocabulary:
    def __init__(self, words: list[str] | None = None) -> None:
        self.words = words or vocabulary()
        self.ids = {w: i + 2 for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words) + 2

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L) ids padded with PAD, and the lengths (at least 1)."""
        rows = [[self.ids.get(w, UNK) for w in tokens(t)][:MAX_TOKENS] or [UNK] for t in texts]
        ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, torch.tensor([len(r) for r in rows])

    def unknown(self, text: str) -> list[str]:
        return [w for w in tokens(text) if w not in self.ids]


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class ImageEncoder(nn.Module):
    """(N, 3, 64, 64) uint8 -> (N, DIM); the feature map is flattened, not
    pooled, so where an object is stays in the vector."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_block(3, 32, 2),  # 32x32
            *_block(32, 64, 2),  # 16x16
            *_block(64, 64, 1),
            *_block(64, 128, 2),  # 8x8
            *_block(128, 128, 1),
            *_block(128, 128, 2),  # 4x4
        )
        self.fc = nn.Linear(128 * 16, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 127.5 - 1.0
        return self.fc(torch.flatten(self.body(x), 1))


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 64, padding_idx=PAD)
        self.lstm = nn.LSTM(64, DIM, batch_first=True)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(ids), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.lstm(packed)
        return h[-1]


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm1d(cin), nn.ReLU(), nn.Linear(cin, hidden), nn.ReLU(), nn.Linear(hidden, cout)
    )


class Composer(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in COMPOSERS:
            raise ValueError(f"composer {kind!r}: use one of {', '.join(COMPOSERS)}")
        self.kind = kind
        width = {"tirg": 2 * DIM, "concat": 2 * DIM, "image": DIM, "text": DIM}[kind]
        self.residual = _mlp(width, width, DIM)
        if kind == "tirg":
            self.gate = _mlp(width, DIM, DIM)
            self.weights = nn.Parameter(torch.tensor([1.0, 10.0]))  # w_g, w_r as in the paper

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "image":
            return self.residual(x)
        if self.kind == "text":
            return self.residual(t)
        both = torch.cat([x, t], dim=1)
        if self.kind == "concat":
            return self.residual(both)
        gated = torch.sigmoid(self.gate(both)) * x
        return self.weights[0] * gated + self.weights[1] * self.residual(both)


class ComposedRetrieval(nn.Module):
    """Query vectors from (image, text), stored vectors from images; both
    unit length."""

    def __init__(self, kind: str, words: list[str] | None = None) -> None:
        super().__init__()
        self.vocab = Vocabulary(words)
        self.image = ImageEncoder()
        self.text = TextEncoder(len(self.vocab))
        self.compose = Composer(kind)
        self.scale = nn.Parameter(torch.tensor(SCALE_INIT))  # softmax scale, learned

    @property
    def kind(self) -> str:
        return self.compose.kind

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Stored vectors, not normalised (the embedder normalises)."""
        return self.image(images)

    def embed(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """One vector a row, not normalised: composed with the row's text
        where it has one, the image's own (a stored vector) where not."""
        x = self.image(images)
        rows = [i for i, t in enumerate(texts) if t]
        if not rows:
            return x
        ids, lengths = self.vocab.encode([texts[i] for i in rows])
        composed = self.compose(x[rows], self.text(ids.to(x.device), lengths))
        out = x.clone()
        out[rows] = composed.to(out.dtype)
        return out

    def stored(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image(images), dim=1)

    def query(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        ids, lengths = self.vocab.encode(texts)
        ids = ids.to(images.device)
        composed = self.compose(self.image(images), self.text(ids, lengths))
        return nn.functional.normalize(composed, dim=1)

    def checkpoint(self) -> dict[str, object]:
        """What the served file holds: the composer kind, the vocabulary and
        the weights in float16 (half the bytes, the same retrieval)."""
        state = {
            k: (v.half() if v.is_floating_point() else v) for k, v in self.state_dict().items()
        }
        return {"kind": self.kind, "words": self.vocab.words, "state": state}

    @classmethod
    def load(cls, checkpoint: dict[str, object]) -> ComposedRetrieval:
        kind, words, state = checkpoint["kind"], checkpoint["words"], checkpoint["state"]
        assert isinstance(kind, str) and isinstance(words, list) and isinstance(state, dict)
        net = cls(kind, [str(w) for w in words])
        net.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        )
        return net.eval()
