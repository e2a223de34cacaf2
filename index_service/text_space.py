"""Search by words on the index's side: each collection of a text-capable
model keeps its images' text vectors in a vector set of its own, named
``_text_<collection>`` (a collection's own name starts with a letter, so the
two never meet), beside the image vectors and under the same ids. SQL holds
which text space it is (collections.text_model, text_dim); the rows, paths
and their rules are the collection's own, so a text hit is a ready image
like any other.

A search by words may expand its query (``expand``): the first text hits'
image vectors, averaged, say what the words look like in this collection,
and the first ``depth`` text hits are ranked again by 0.7 x their text score
+ 0.3 x their image's likeness to that average. On the clothing fixtures it
lifts precision@10 from 0.55 to 0.61 (bench/RESULTS.md, "Search by words")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imagesearch import errors
from index_service.metadata import MetadataStore
from index_service.plan import unpack_vector
from index_service.ranking import Hit
from index_service.rows import READY, CollectionRow, ImageRow
from index_service.vectors import VectorStore

PREFIX = "_text_"
TEXT_WEIGHT = 0.7  # of a hit's score after expansion; the rest is its image's likeness
EXPAND_DEPTH = 100  # text hits ranked again, at least
MAX_EXPAND = 20


def space(name: str) -> str:
    """The vector set of a collection's text vectors."""
    return PREFIX + name


def adds_text(name: str) -> str:
    """The command that gives a collection's images text vectors."""
    return f"imgsearch reconcile --text -c {name}"


class TextSpace:
    def __init__(self, vectors: VectorStore, meta: MetadataStore) -> None:
        self.vectors = vectors
        self.meta = meta

    def ensure(self, row: CollectionRow, text_model: str, text_dim: int) -> None:
        """The collection's text space is ``text_model``'s: taken on first
        use, checked after (FAILED_PRECONDITION for another)."""
        if not text_model or not 0 < text_dim <= 4096:
            raise errors.invalid_argument(
                "items carry text vectors: the request needs their text_model and a "
                f"text_dim of 1..4096 (got {text_model!r}, {text_dim})"
            )
        if row.text_model == text_model and row.text_dim == text_dim:
            self.vectors.ensure(space(row.name), text_dim)
            return
        if row.text_model:
            raise errors.failed_precondition(
                f"collection {row.name!r} holds text vectors of {row.text_model!r}, not "
                f"{text_model!r}: index with the embedder that made them"
            )
        self.vectors.create(space(row.name), text_dim, replace=True)
        self.meta.set_text(row.name, text_model, text_dim)

    def store(self, row: CollectionRow, items: dict[int, bytes]) -> None:
        """Text vectors of images whose rows are stored, by image id."""
        if not items:
            return
        ids = sorted(items)
        what = f"collection {row.name!r}: a text vector"
        vectors = np.stack([unpack_vector(items[i], row.text_dim, what) for i in ids])
        self.vectors.upsert(space(row.name), ids, vectors)

    def forget(self, row: CollectionRow, ids: Sequence[int]) -> None:
        if row.text_model and ids:
            self.vectors.delete(space(row.name), ids)

    def spaces(self, name: str) -> list[str]:
        """The collection's text vector set, if it has one (Reconcile deletes
        the text vectors of images whose row is gone, as it does theirs)."""
        return [space(name)] if self.vectors.exists(space(name)) else []

    def drop(self, name: str) -> None:
        if self.vectors.exists(space(name)):
            self.vectors.drop(space(name))

    def lacking(self, row: CollectionRow, limit: int) -> tuple[int, list[ImageRow]]:
        """(how many ready images have no text vector, the rows of the first
        ``limit``): every ready image of a collection without a text space."""
        count = 0
        first: list[int] = []
        for page in self.meta.id_pages(row.name, READY):
            if row.text_model:
                have = self.vectors.existing(space(row.name), page, strong=True)
                page = [i for i in page if i not in have]
            count += len(page)
            first += page[: max(0, limit - len(first))]
        rows = self.meta.records(row.name, first, ready_only=True)
        return count, [rows[i] for i in first if i in rows]

    def queries(
        self, row: CollectionRow, vectors: list[bytes], text_model: str, expand: int
    ) -> list[np.ndarray]:
        """A search by words' arguments checked, its query vectors unpacked."""
        if not row.text_model:
            raise errors.failed_precondition(
                f"collection {row.name!r} has no text vectors, so it cannot be searched by "
                f"words; `{adds_text(row.name)}` adds them (its images are embedded again "
                "from their files, by an embedder of a model that has a text side)"
            )
        if text_model and text_model != row.text_model:
            raise errors.failed_precondition(
                f"collection {row.name!r} holds text vectors of {row.text_model!r}; the query "
                f"was embedded with {text_model!r}"
            )
        if not 0 <= expand <= MAX_EXPAND:
            raise errors.invalid_argument(f"expand must be between 0 and {MAX_EXPAND}")
        return [unpack_vector(v, row.text_dim, f"text query #{i}") for i, v in enumerate(vectors)]

    def expanded(self, row: CollectionRow, hits: list[Hit], expand: int, top_k: int) -> list[Hit]:
        """``hits`` (text hits, best first) ranked again by their images'
        likeness to the mean of the first ``expand`` (see the module)."""
        if expand <= 0 or len(hits) <= 1:
            return hits[:top_k]
        images = self.vectors.get_vectors(row.name, [h.image_id for h in hits])
        seeds = [images[h.image_id] for h in hits[:expand] if h.image_id in images]
        if not seeds:
            return hits[:top_k]
        centre = np.mean(seeds, axis=0)
        centre /= max(float(np.linalg.norm(centre)), 1e-12)
        scored = []
        for h in hits:
            vec = images.get(h.image_id)
            likeness = 0.0 if vec is None else max(0.0, float(vec @ centre))
            score = TEXT_WEIGHT * h.score + (1 - TEXT_WEIGHT) * likeness
            scored.append(Hit(h.image_id, 1.0 - score, score, h.row))
        scored.sort(key=lambda h: -h.score)
        return scored[:top_k]
