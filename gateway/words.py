"""Search by words through the gateway: the collection's embedder turns the
texts into vectors of its text space (EmbedText), the index searches the
collection's text vectors with them, expanding each query by its first
hits' images (GATEWAY_TEXT_EXPAND). A collection whose embedder has no text
side, or that holds no text vectors yet, is FAILED_PRECONDITION saying what
to do."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.clients import Backends
from gateway.deadline import Deadline
from imagesearch import errors
from imagesearch.texts import text_problem
from imagesearch.v1 import index_pb2


def check_texts(texts: Sequence[str]) -> None:
    for text in texts:
        problem = text_problem(text)
        if problem:
            raise errors.invalid_argument(problem)


def search_by_words(
    backends: Backends,
    collection: str,
    texts: Sequence[str],
    top_k: int,
    path_prefix: str,
    min_score: float,
    expand: int,
    deadline: Deadline,
) -> list[index_pb2.IndexHits]:
    """One list of hits per text, in order."""
    check_texts(texts)
    embedder = backends.embedder_for(collection, deadline)
    model = backends.model_of(embedder, deadline)
    if model.text_dim <= 0:
        raise errors.failed_precondition(
            f"collection {collection!r} is embedded with {model.model}, which has no text "
            "side, so it cannot be searched by words: index the images into a collection of "
            "a model with an ImageNet classifier (efficientnet_lite0, resnet18, resnet50, "
            "vgg16; EMBEDDER_TEXT=auto)"
        )
    text_model, vectors = backends.embed_text(texts, deadline, embedder)
    response = backends.index_read_or_writer(
        "Search",
        index_pb2.IndexServiceSearchRequest(
            collection=collection,
            text_vectors=vectors,
            text_model=text_model,
            top_k=top_k,
            path_prefix=path_prefix,
            min_score=min_score,
            expand=expand,
        ),
        deadline,
    )
    return list(response.results)
