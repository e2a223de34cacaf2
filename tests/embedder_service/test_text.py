"""Search by words in the embedder: our WordPiece and MiniLM give what the
reference implementation (Hugging Face transformers) gives for
all-MiniLM-L6-v2, and an embedder with an ImageNet classifier puts images
and sentences in one space (ConSE); one without says so."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from embedder_service.text.minilm import VOCAB, SentenceEncoder
from embedder_service.text.wordpiece import WordPiece
from embedder_service.weights import checked_file
from imagesearch.texts import MAX_TEXT_CHARS
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc
from tests.conftest import CLOTHING, Server, channel, clothing_images


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder.bundled()


def test_wordpiece_splits_as_bert_does() -> None:
    tokenizer = WordPiece(checked_file(VOCAB))
    names = {i: t for t, i in tokenizer.ids.items()}

    def tokens(text: str) -> list[str]:
        return [names[i] for i in tokenizer.encode(text, 128)]

    # transformers' BertTokenizer (uncased) on the same strings.
    assert tokens("Red T-shirts, café-style!") == [
        "[CLS]", "red", "t", "-", "shirts", ",", "cafe", "-", "style", "!", "[SEP]"
    ]  # fmt: skip
    assert tokens("naïve ÜBER jacket") == ["[CLS]", "naive", "uber", "jacket", "[SEP]"]
    assert len(tokenizer.encode("word " * 500, 128)) == 128


def test_minilm_gives_the_reference_vectors(encoder: SentenceEncoder) -> None:
    (vec,) = encoder.encode(["a photo of a sneaker"]).numpy()
    # The first values of transformers' AutoModel, mean-pooled and normalised.
    reference = [-0.1324, 0.0577, -0.0158, 0.0059, 0.0708, -0.0195]
    assert np.allclose(vec[:6], reference, atol=2e-4)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
    shoes, cake, sneakers = encoder.encode(["running shoes", "a birthday cake", "red sneakers"])
    assert float(sneakers @ shoes) > float(sneakers @ cake) + 0.2


def _stub(server: Server) -> embedder_pb2_grpc.EmbedderServiceStub:
    return embedder_pb2_grpc.EmbedderServiceStub(channel(server.port))


def test_images_and_words_share_a_space(text_embedder: Server) -> None:
    stub = _stub(text_embedder)
    info = stub.GetModelInfo(embedder_pb2.EmbedderServiceGetModelInfoRequest(), timeout=30)
    assert info.text_dim == 384 and info.text_model_id.startswith("conse/all-minilm-l6-v2/")
    assert info.text_model_id.endswith(info.model_id)
    photos: dict[str, list[bytes]] = {label: [] for label in ("Shoes", "Hat")}
    for path, label in clothing_images():
        if label in photos and len(photos[label]) < 3:
            photos[label].append((CLOTHING / path).read_bytes())
    images = [
        embedder_pb2.Image(name=f"{k}{i}", data=d)
        for k, v in photos.items()
        for i, d in enumerate(v)
    ]
    reply = stub.Embed(
        embedder_pb2.EmbedderServiceEmbedRequest(images=images, text_vectors=True), timeout=60
    )
    vectors = np.stack([np.frombuffer(e.text_vector, "<f4") for e in reply.embeddings])
    assert vectors.shape == (6, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    words = stub.EmbedText(
        embedder_pb2.EmbedderServiceEmbedTextRequest(texts=["shoes", "a hat"]), timeout=30
    )
    assert words.text_model_id == info.text_model_id
    queries = np.stack([np.frombuffer(v, "<f4") for v in words.vectors])
    scores = queries @ vectors.T  # rows: shoes, a hat; columns: 3 shoes, 3 hats
    assert scores[0, :3].mean() > scores[0, 3:].mean()
    assert scores[1, 3:].mean() > scores[1, :3].mean()
    plain = stub.Embed(embedder_pb2.EmbedderServiceEmbedRequest(images=images[:1]), timeout=60)
    assert plain.embeddings[0].text_vector == b""  # only when asked


@pytest.mark.parametrize(
    "text, says",
    [(" ", "empty"), ("x" * (MAX_TEXT_CHARS + 1), "limit"), ("red\x00shoes", "control")],
)
def test_bad_texts_are_refused(text_embedder: Server, text: str, says: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _stub(text_embedder).EmbedText(
            embedder_pb2.EmbedderServiceEmbedTextRequest(texts=[text]), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in str(err.value.details())


def test_a_model_without_a_classifier_has_no_text_side(embedder: Server) -> None:
    """The bundled MobileNetV2 weights hold no ImageNet classifier."""
    stub = _stub(embedder)
    info = stub.GetModelInfo(embedder_pb2.EmbedderServiceGetModelInfoRequest(), timeout=30)
    assert (info.text_dim, info.text_model_id) == (0, "")
    with pytest.raises(grpc.RpcError) as err:
        stub.EmbedText(embedder_pb2.EmbedderServiceEmbedTextRequest(texts=["shoes"]), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "efficientnet_lite0" in str(err.value.details())
    # Asked for text vectors anyway (a gateway that learnt otherwise): none come.
    photo = next(CLOTHING.glob("Hat/*.jpg")).read_bytes()
    reply = stub.Embed(
        embedder_pb2.EmbedderServiceEmbedRequest(
            images=[embedder_pb2.Image(name="hat", data=photo)], text_vectors=True
        ),
        timeout=60,
    )
    assert reply.embeddings[0].vector and reply.embeddings[0].text_vector == b""


def test_the_class_vectors_are_kept_between_starts(
    encoder: SentenceEncoder, tmp_path: Path
) -> None:
    """Made once (a few seconds), then read from the cache folder; a cache
    that does not fit (another shape) is made again."""
    from embedder_service.text.conse import cached_class_vectors, class_vectors
    from embedder_service.text.imagenet import ImagenetClasses

    every = ImagenetClasses.bundled()
    classes = ImagenetClasses(every.lemmas[:4], every.glosses[:4])  # 4 classes: quick
    made = cached_class_vectors(encoder, classes, "k" * 20, tmp_path)
    (kept,) = tmp_path.glob("conse-class-vectors-*.pt")
    assert torch.equal(made, class_vectors(encoder, classes))
    marked = made.clone()
    marked[0, 0] = 42.0  # what the file holds is what a later start uses
    torch.save(marked, kept)
    assert cached_class_vectors(encoder, classes, "k" * 20, tmp_path)[0, 0] == 42.0
    torch.save(torch.zeros(3, 384), kept)
    assert torch.equal(cached_class_vectors(encoder, classes, "k" * 20, tmp_path), made)
    unwritable = tmp_path / "file"
    unwritable.write_text("not a folder")
    assert torch.equal(cached_class_vectors(encoder, classes, "k" * 20, unwritable), made)
