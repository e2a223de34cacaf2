"""Embed -> upsert for a batch of named images, shared by IndexImages streams
and folder jobs. Images already stored under the same name are recognised
from their content hash and never sent to the embedder again."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from gateway.clients import Backends, Embedder
from gateway.deadline import Deadline
from gateway.paths import AllowedRoots
from imagesearch import errors, ids
from imagesearch.v1 import index_pb2


class Outcome(enum.Enum):
    INDEXED = "indexed"
    DUPLICATE = "duplicate"
    FAILED = "failed"


@dataclass(frozen=True)
class Source:
    """One file to index: its bytes, or why they could not be read."""

    name: str
    data: bytes = b""
    error: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK

    @classmethod
    def failed(cls, exc: errors.ServiceError, name: str) -> Source:
        return cls(name, error=exc.message, code=exc.code)


@dataclass(frozen=True)
class Result:
    name: str
    outcome: Outcome
    image_id: int = 0
    reason: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK


@dataclass(frozen=True)
class ImageLimit:
    """GATEWAY_MAX_IMAGE_MB, checked here for every path an image comes in by
    (search queries, streams, job files)."""

    max_bytes: int

    def read(self, roots: AllowedRoots, path: str, name: str = "") -> bytes:
        """The file ``path`` under ``roots``: refused past the limit (naming
        ``name``, else the path) before it is read, and read no further than
        the limit + 1 byte whatever it does meanwhile."""
        return roots.read(path, lambda size: self.check(name or path, size), self.max_bytes)

    def check(self, name: str, size: int) -> None:
        """Too large is permanent: INVALID_ARGUMENT naming the limit, never retried."""
        if size > self.max_bytes:
            raise errors.invalid_argument(
                f"{name}: {size} bytes, over the limit of {self.max_bytes} (GATEWAY_MAX_IMAGE_MB)"
            )


class Ingestor:
    def __init__(self, backends: Backends, limit: ImageLimit, thumbnail_px: int = 0) -> None:
        self.backends = backends
        self.limit = limit
        self.thumbnail_px = thumbnail_px

    def ingest(
        self,
        collection: str,
        sources: Sequence[Source],
        deadline: Deadline,
        origin: index_pb2.PathOrigin = index_pb2.PATH_ORIGIN_STREAM,
        again: bool = False,
        model: str = "",
    ) -> list[Result]:
        """One result per source, in order. Per-file problems become FAILED
        results; a backend outage raises (UNAVAILABLE) so the caller can retry.
        ``origin``: PATH_ORIGIN_SERVER for files a server job found, whose
        paths a stream can then never take. ``again``: embed even images
        stored under the same name (to make a missing thumbnail). ``model``:
        the model of a collection this call creates (``Backends.embedder_for``)."""
        embedder = self.backends.embedder_for(collection, deadline, model)
        results: list[Result | None] = [None] * len(sources)
        digests: dict[int, bytes] = {}
        for i, src in enumerate(sources):
            if src.error:
                results[i] = Result(src.name, Outcome.FAILED, reason=src.error, code=src.code)
                continue
            try:
                self.limit.check(src.name, len(src.data))
            except errors.ServiceError as exc:
                results[i] = Result(src.name, Outcome.FAILED, reason=exc.message, code=exc.code)
                continue
            digests[i] = ids.sha256(src.data)

        image_ids = {i: ids.image_id_from_sha256(d) for i, d in digests.items()}
        known = self.backends.get_ready(collection, list(image_ids.values()), deadline)
        todo: list[int] = []
        for i, iid in image_ids.items():
            record = known.get(iid)
            if not again and record is not None and sources[i].name in record.paths:
                results[i] = Result(sources[i].name, Outcome.DUPLICATE, iid)
            else:
                todo.append(i)

        if todo:
            self._embed_and_store(
                collection, sources, todo, digests, origin, embedder, deadline, results
            )
        return [r for r in results if r is not None]

    def _embed_and_store(
        self,
        collection: str,
        sources: Sequence[Source],
        todo: list[int],
        digests: dict[int, bytes],
        origin: index_pb2.PathOrigin,
        embedder: Embedder,
        deadline: Deadline,
        results: list[Result | None],
    ) -> None:
        """Embeds the ``todo`` sources and upserts them, filling ``results``.
        Where the model searches by words, each image's text vector comes
        from the same pass and is stored with it."""
        text = self.backends.model_of(embedder, deadline)
        model_id, embedded = self.backends.embed(
            [(sources[i].name, sources[i].data) for i in todo],
            deadline,
            self.thumbnail_px,
            embedder=embedder,
            text_vectors=text.text_dim > 0,
        )
        items: list[index_pb2.UpsertItem] = []
        positions: list[int] = []
        for i, emb in zip(todo, embedded, strict=True):
            if emb.error:
                results[i] = Result(
                    sources[i].name, Outcome.FAILED, reason=emb.error, code=emb.error_code
                )
                continue
            items.append(
                index_pb2.UpsertItem(
                    sha256=digests[i],
                    path=sources[i].name,
                    size=len(sources[i].data),
                    width=emb.width,
                    height=emb.height,
                    vector=emb.vector,
                    origin=origin,
                    thumbnail=emb.thumbnail,
                    text_vector=emb.text_vector,
                )
            )
            positions.append(i)
        if not items:
            return
        texts = any(it.text_vector for it in items)
        response = self.backends.upsert(
            index_pb2.IndexServiceUpsertRequest(
                collection=collection,
                model=model_id,
                dim=len(items[0].vector) // 4,
                items=items,
                text_model=text.text_model_id if texts else "",
                text_dim=text.text_dim if texts else 0,
            ),
            deadline,
        )
        for i, res in zip(positions, response.results, strict=True):
            if res.outcome == index_pb2.UPSERT_OUTCOME_REFUSED:
                results[i] = Result(
                    sources[i].name,
                    Outcome.FAILED,
                    reason=res.error,
                    code=errors.code_from_number(res.code),
                )
                continue
            outcome = (
                Outcome.DUPLICATE
                if res.outcome == index_pb2.UPSERT_OUTCOME_DUPLICATE
                else Outcome.INDEXED
            )
            results[i] = Result(sources[i].name, outcome, res.image_id)
