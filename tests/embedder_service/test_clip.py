"""The clip family's plumbing on a tiny CLIP made here with random weights,
saved as a Hugging Face checkpoint folder (no real CLIP weights are within
reach offline): it loads, gives unit image vectors of its projection's size,
puts sentences in the same space, and the gateway searches by words with it
as with ConSE. What it finds is meaningless; the shapes, the normalisation
and the routing are what is tested."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from embedder_service.clip import ClipConfig, ClipModel
from embedder_service.text.bpe import END, START, ClipBpe, byte_chars
from imagesearch.client import Client
from tests.conftest import CLOTHING, Server, gateway_stack, start_embedder

MERGES = [("s", "h"), ("sh", "o"), ("e", "s</w>"), ("sho", "es</w>"), ("h", "a"), ("ha", "t</w>")]


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, t in tensors.items():
        data = t.detach().float().contiguous().numpy().tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def tiny_clip(folder: Path) -> Path:
    """A checkpoint folder as Hugging Face writes one, of a 2-layer CLIP."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(byte_chars().values())
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in MERGES), START, END]
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES))
    tower = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
    }
    config = {
        "projection_dim": 16,
        "vision_config": {**tower, "image_size": 224, "patch_size": 32},
        "text_config": {
            **tower,
            "vocab_size": len(vocab),
            "max_position_embeddings": 16,
            "eos_token_id": vocab[END],
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(3)
    model = ClipModel(ClipConfig.read(folder))
    state = dict(model.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(16)[None].float()  # HF keeps it
    write_safetensors(folder / "model.safetensors", state)
    return folder


def test_clips_bpe_merges_by_rank_and_marks_word_ends(tmp_path: Path) -> None:
    bpe = ClipBpe(tiny_clip(tmp_path / "clip"), context=16)
    names = {i: t for t, i in bpe.ids.items()}
    assert [names[i] for i in bpe.encode("Shoes  HAT!")] == [
        START,
        "shoes</w>",
        "hat</w>",
        "!</w>",
        END,
    ]
    assert len(bpe.encode("x " * 50)) == 16


@pytest.fixture(scope="module")
def clip_embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    server = start_embedder(model="clip", weights=str(folder), dtype="float32")
    yield server
    server.running.stop(1)


def test_a_clip_checkpoint_serves_images_and_words_in_one_space(
    clip_embedder: Server, tmp_path: Path
) -> None:
    from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc
    from tests.conftest import channel

    stub = embedder_pb2_grpc.EmbedderServiceStub(channel(clip_embedder.port))
    info = stub.GetModelInfo(embedder_pb2.EmbedderServiceGetModelInfoRequest(), timeout=30)
    assert (info.model, info.dim, info.text_dim) == ("clip", 16, 16)
    assert info.text_model_id == info.model_id  # one space for both
    photo = next(CLOTHING.glob("Hat/*.jpg")).read_bytes()
    reply = stub.Embed(
        embedder_pb2.EmbedderServiceEmbedRequest(
            images=[embedder_pb2.Image(name="hat", data=photo)], text_vectors=True
        ),
        timeout=60,
    )
    (e,) = reply.embeddings
    image, text = np.frombuffer(e.vector, "<f4"), np.frombuffer(e.text_vector, "<f4")
    assert image.shape == (16,) and np.allclose(image, text, atol=1e-5)  # the same vector
    words = stub.EmbedText(embedder_pb2.EmbedderServiceEmbedTextRequest(texts=["shoes", "hat"]))
    vectors = [np.frombuffer(v, "<f4") for v in words.vectors]
    assert all(abs(float(np.linalg.norm(v)) - 1) < 1e-4 for v in vectors)
    assert not np.allclose(vectors[0], vectors[1])
    # The gateway searches by words with it as with ConSE (the routing).
    with gateway_stack(clip_embedder, tmp_path) as running, Client(running.gateway.addr) as c:
        hats = sorted(CLOTHING.glob("Hat/*.jpg"))[:3]
        c.index_images([(str(p), p.read_bytes()) for p in hats])
        hits = c.search(text="a hat", top_k=3)
        assert sorted(h.path for h in hits) == sorted(map(str, hats))
