"""What the index asks of a vector store, and the one place a store is
chosen. IndexStore (index_service.store) keeps rows in SQL and vectors here;
it knows nothing of the engine behind this Protocol.

A store holds one set of vectors per collection, keyed by image id (int64),
all of one dimension, unit length; it answers nearest-neighbour searches
with raw distances that ``score`` turns into what clients see. Today's one
implementation is Milvus (index_service.milvus: Milvus Lite files and
Milvus servers). Another engine is one module implementing this Protocol
plus one line in ``open_vector_store``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from index_service.settings import IndexSettings


class VectorStore(Protocol):
    @property
    def metric(self) -> str:
        """The distance the index is built for: L2, IP or COSINE."""
        ...

    @property
    def index_type(self) -> str:
        """The engine's index kind (FLAT, HNSW, IVF_FLAT, ...), as stored
        with each collection."""
        ...

    @property
    def max_top_k(self) -> int:
        """The most neighbours one search may ask for."""
        ...

    def score(self, raw: float) -> tuple[float, float]:
        """(distance reported, score in [0, 1], 1 = the same image) for a
        raw distance of ``search``."""
        ...

    def close(self) -> None: ...

    # collections
    def exists(self, name: str) -> bool: ...

    def create(self, name: str, dim: int, *, replace: bool = False) -> None:
        """Makes the collection's vector set; with ``replace``, drops a stale one first."""
        ...

    def ensure(self, name: str, dim: int) -> None:
        """Makes it unless it exists (cheap when this process made or saw it)."""
        ...

    def drop(self, name: str) -> None: ...

    # vectors
    def upsert(self, name: str, ids: Sequence[int], vectors: np.ndarray) -> None: ...

    def delete(self, name: str, ids: Sequence[int]) -> None: ...

    def existing(self, name: str, ids: Sequence[int], strong: bool = False) -> set[int]:
        """Which of ``ids`` hold a vector; ``strong``: as of every write so far."""
        ...

    def get_vectors(
        self, name: str, ids: Sequence[int], strong: bool = False
    ) -> dict[int, np.ndarray]:
        """The stored vectors of ``ids`` (those that have one); ``strong``: as
        of every write so far, not only those a reader's staleness lets it see."""
        ...

    def all_ids(self, name: str) -> Iterator[int]:
        """Every id of the collection, streamed (Reconcile)."""
        ...

    def search(
        self, name: str, vectors: np.ndarray, limit: int, only_ids: Sequence[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        """Per query vector, up to ``limit`` (id, raw distance), best first;
        ``only_ids``: among those ids only."""
        ...

    async def search_async(
        self, name: str, vectors: np.ndarray, limit: int, only_ids: Sequence[int] | None = None
    ) -> list[list[tuple[int, float]]]:
        """``search`` awaited on the server's event loop, which it never blocks."""
        ...


def open_vector_store(settings: IndexSettings) -> VectorStore:
    """The store INDEX_MILVUS_URI names: a Milvus server's address
    (http://, https://, tcp://, grpc://, unix:) or a Milvus Lite file."""
    from index_service.milvus import MilvusVectors

    return MilvusVectors(settings)
