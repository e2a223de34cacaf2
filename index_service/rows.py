"""The index's rows as Python sees them: a collection, an image with its
paths, a new image to store, and the words for their states."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

PENDING = "pending"
READY = "ready"
# Where a path came from (index.proto PathOrigin): a server job's file, or a
# name a client sent. Rows from before the column existed count as streamed.
SERVER = "server"
STREAM = "stream"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class CollectionRow:
    name: str
    model: str
    dim: int
    metric: str
    index_type: str
    text_model: str = ""  # search by words: the text space ("": none)
    text_dim: int = 0

    @classmethod
    def from_sql(cls, r: Any) -> CollectionRow:
        """From a row of the collections table."""
        return cls(
            r.name, r.model, r.dim, r.metric, r.index_type, r.text_model or "", r.text_dim or 0
        )


@dataclass
class ImageRow:
    image_id: int
    sha256: str
    size: int
    width: int
    height: int
    model: str
    status: str
    created_at_ms: int
    updated_at_ms: int
    paths: list[str] = field(default_factory=list)
    server_paths: list[str] = field(default_factory=list)  # found by server jobs


@dataclass(frozen=True)
class NewImage:
    image_id: int
    sha256: str
    path: str
    size: int
    width: int
    height: int


@dataclass
class ReconcileReport:
    """What Reconcile found and did (IndexStore.reconcile)."""

    marked_ready: int = 0
    orphan_vectors_deleted: int = 0
    missing_vectors: int = 0  # ready rows whose vector was gone (set back to pending)
    needs_reembedding: list[tuple[str, ImageRow]] = field(default_factory=list)
    needs_thumbnail: list[tuple[str, ImageRow]] = field(default_factory=list)
    thumbnails_missing: int = 0
    needs_text: list[tuple[str, ImageRow]] = field(default_factory=list)
    text_missing: int = 0
