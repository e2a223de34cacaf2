"""CLIP (Radford et al., 2021) as plain torch, under the parameter names of a
Hugging Face ``CLIPModel`` checkpoint, so that its ``model.safetensors``
loads as it is: a vision transformer for images, a causal text transformer
for sentences, each projected into one space. The embedder serves it as the
``clip`` family (families/clip.py) from a checkpoint folder a user names;
nothing here downloads anything."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# CLIP's own pixel statistics (per channel, on 0..1 pixels).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Tower:
    hidden: int
    intermediate: int
    heads: int
    layers: int
    act: str = "quick_gelu"
    eps: float = 1e-5

    @classmethod
    def of(cls, c: dict[str, Any]) -> Tower:
        return cls(
            c["hidden_size"],
            c["intermediate_size"],
            c["num_attention_heads"],
            c["num_hidden_layers"],
            c.get("hidden_act", "quick_gelu"),
            c.get("layer_norm_eps", 1e-5),
        )


@dataclass(frozen=True)
class ClipConfig:
    vision: Tower
    text: Tower
    projection: int
    image_size: int
    patch: int
    vocab: int
    positions: int
    eos: int  # the text's end token id (its vector is the sentence's)

    @classmethod
    def read(cls, folder: Path) -> ClipConfig:
        c = json.loads((folder / "config.json").read_text())
        v, t = c["vision_config"], c["text_config"]
        return cls(
            Tower.of(v),
            Tower.of(t),
            c.get("projection_dim", 512),
            v.get("image_size", 224),
            v.get("patch_size", 32),
            t.get("vocab_size", 49408),
            t.get("max_position_embeddings", 77),
            t.get("eos_token_id", 49407),
        )


# ViT-B/32's sizes: what EMBEDDER_WEIGHTS=random builds (shape and speed tests).
VIT_B_32 = ClipConfig(
    Tower(768, 3072, 12, 12), Tower(512, 2048, 8, 12), 512, 224, 32, 49408, 77, 49407
)


class Attention(nn.Module):
    def __init__(self, t: Tower) -> None:
        super().__init__()
        self.heads = t.heads
        self.q_proj = nn.Linear(t.hidden, t.hidden)
        self.k_proj = nn.Linear(t.hidden, t.hidden)
        self.v_proj = nn.Linear(t.hidden, t.hidden)
        self.out_proj = nn.Linear(t.hidden, t.hidden)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            p(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, t: Tower) -> None:
        super().__init__()
        self.fc1 = nn.Linear(t.hidden, t.intermediate)
        self.fc2 = nn.Linear(t.intermediate, t.hidden)
        self.quick = t.act == "quick_gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x) if self.quick else F.gelu(x)
        return self.fc2(x)


class Layer(nn.Module):
    def __init__(self, t: Tower) -> None:
        super().__init__()
        self.self_attn = Attention(t)
        self.layer_norm1 = nn.LayerNorm(t.hidden, eps=t.eps)
        self.mlp = Mlp(t)
        self.layer_norm2 = nn.LayerNorm(t.hidden, eps=t.eps)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, t: Tower) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(t) for _ in range(t.layers))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, causal)
        return x


class VisionEmbeddings(nn.Module):
    def __init__(self, c: ClipConfig) -> None:
        super().__init__()
        h = c.vision.hidden
        self.class_embedding = nn.Parameter(torch.zeros(h))
        self.patch_embedding = nn.Conv2d(3, h, c.patch, c.patch, bias=False)
        self.position_embedding = nn.Embedding((c.image_size // c.patch) ** 2 + 1, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)
        first = self.class_embedding.expand(x.shape[0], 1, -1).to(patches.dtype)
        return torch.cat([first, patches], dim=1) + self.position_embedding.weight


class VisionModel(nn.Module):
    def __init__(self, c: ClipConfig) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(c)
        self.pre_layrnorm = nn.LayerNorm(c.vision.hidden, eps=c.vision.eps)  # (sic: HF's name)
        self.encoder = Encoder(c.vision)
        self.post_layernorm = nn.LayerNorm(c.vision.hidden, eps=c.vision.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.pre_layrnorm(self.embeddings(x)))
        return self.post_layernorm(h[:, 0])


class TextEmbeddings(nn.Module):
    def __init__(self, c: ClipConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab, c.text.hidden)
        self.position_embedding = nn.Embedding(c.positions, c.text.hidden)


class TextModel(nn.Module):
    def __init__(self, c: ClipConfig) -> None:
        super().__init__()
        self.embeddings = TextEmbeddings(c)
        self.encoder = Encoder(c.text)
        self.final_layer_norm = nn.LayerNorm(c.text.hidden, eps=c.text.eps)

    def forward(self, ids: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        x = e.token_embedding(ids) + e.position_embedding.weight[: ids.shape[1]]
        x = self.final_layer_norm(self.encoder(x, causal=True))
        return x[torch.arange(ids.shape[0]), ends]


class ClipModel(nn.Module):
    def __init__(self, c: ClipConfig) -> None:
        super().__init__()
        self.config = c
        self.vision_model = VisionModel(c)
        self.text_model = TextModel(c)
        self.visual_projection = nn.Linear(c.vision.hidden, c.projection, bias=False)
        self.text_projection = nn.Linear(c.text.hidden, c.projection, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """A CLIPModel state dict; buffers HF keeps (position ids) are ignored."""
        state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
        self.load_state_dict(state)


class ClipImage(nn.Module):
    """Normalised pixels -> the image's vector in CLIP's space (unnormalised).
    It keeps the text tower too, for the embedder's text side."""

    def __init__(self, model: ClipModel) -> None:
        super().__init__()
        self.config = model.config
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection
        self.text_model = model.text_model
        self.text_projection = model.text_projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(x))
