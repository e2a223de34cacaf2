"""The index's logic over both stores, with the write order that keeps them
consistent through a crash:

* Upsert: the vectors go to the vector store while SQL writes the rows in one
  transaction, which commits them ``ready`` only once the vectors are stored.
  A crash or a refused write leaves at worst vectors with no row: deleted at
  once where the database says so, else by the next Reconcile; searches never
  show them (they keep ready rows only). Reconcile waits for writes (one
  write lock), so it never sees a batch half written.
* Delete / Drop: SQL first -> vectors. A crash leaves at worst a vector with
  no row, which searches skip and Reconcile deletes.
* Reconcile: pending rows whose vector exists become ready; pending rows
  without a vector are reported for re-embedding; vectors without a row go.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import cast

import numpy as np

from imagesearch import errors, logs
from imagesearch.batching import batched
from index_service import names
from index_service.metadata import MetadataStore
from index_service.names import ways_back
from index_service.plan import (
    Item,
    UpsertPlan,
    UpsertResult,
    check_items,
    plan_upsert,
    unpack_vector,
)
from index_service.ranking import Hit, search_rounds
from index_service.rows import PENDING, READY, CollectionRow, ImageRow, ReconcileReport
from index_service.text_space import EXPAND_DEPTH, TextSpace
from index_service.text_space import space as text_space
from index_service.vectors import VectorStore
from index_service.writer import StoreLocked, WriterLock

log = logging.getLogger(__name__)

MAX_TOP_K = 1000
MAX_DIM = 32768
PREFIX_FILTER_LIMIT = 16384  # above this many candidates, over-fetch and filter
RECONCILE_PAGE = 2000  # vector ids checked against SQL at a time


class IndexStore:
    def __init__(
        self,
        meta: MetadataStore,
        vectors: VectorStore,
        writer: WriterLock | None = None,
        read_only: bool = False,
    ) -> None:
        self.meta = meta
        self.vectors = vectors
        self.metric = vectors.metric
        self.writer = writer  # one index per store (index_service.writer)
        self.read_only = read_only  # a reader (INDEX_ROLE=reader): every write refused
        self._write = threading.Lock()  # one writer thread: keeps the two stores in step
        # Vectors are sent while SQL writes the rows of the same batch.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vector-writes")
        self.text = TextSpace(vectors, meta)  # search by words

    def _writable(self) -> None:
        """Refuses a write on a reader, before anything else is checked."""
        if self.read_only:
            raise errors.failed_precondition(
                "this index is a reader (INDEX_ROLE=reader): it serves Search, Get, Count, "
                "ListCollections and GetThumbnails; send writes and Reconcile to the index "
                "writer (the gateway's GATEWAY_INDEX_ADDR)"
            )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Holds the write lock, with the store's writer lock taken first
        (taken here when the database was away at start). A reader refuses."""
        self._writable()
        with self._write:
            if self.writer is not None and not self.writer.held:
                try:
                    self.writer.acquire()
                except StoreLocked as exc:
                    logs.event(log, "writer_lock.held_elsewhere", logging.ERROR, error=str(exc))
                    raise errors.failed_precondition(
                        "another index process writes to this database; this one may not "
                        "(its log says which)"
                    ) from None
            yield

    # -- helpers ---------------------------------------------------------

    def collection(self, name: str) -> CollectionRow:
        names.collection(name)
        row = self.meta.get_collection(name)
        if row is None:
            raise errors.not_found(
                f"collection {name!r} does not exist; index images into it first "
                "(ListCollections shows the existing ones)"
            )
        return row

    # -- writes ----------------------------------------------------------

    def upsert(
        self,
        name: str,
        model: str,
        dim: int,
        items: list[Item],
        text_model: str = "",
        text_dim: int = 0,
    ) -> list[UpsertResult]:
        """Stores ``items``; their text vectors (search by words, in
        ``text_model``'s ``text_dim``-d space) once their rows are stored."""
        self._writable()
        names.collection(name)
        if not model:
            raise errors.invalid_argument(
                "Upsert needs the model id of the vectors (ModelInfo.model_id)"
            )
        if not 0 < dim <= MAX_DIM:
            raise errors.invalid_argument(f"dim {dim} is out of range 1..{MAX_DIM}")
        checked = check_items(items, dim)
        with self._writing():
            self._ensure_collection(name, model, dim)
            if not checked:  # no items: the collection is made, or checked
                return []
            statuses = self.meta.statuses(name, [c.image_id for c in checked])
            owners = self.meta.path_owners(name, [it.path for it in items])
            plan = plan_upsert(checked, statuses, owners)
            texts = [it.text_vector for it in items]
            if any(texts):
                self.text.ensure(self.collection(name), text_model, text_dim)
            self._apply(name, model, plan)
            # A refused item's id names another image (or none): its text is not stored.
            kept = zip(plan.results, texts, strict=True)
            self.text.store(
                self.collection(name), {r.image_id: t for r, t in kept if t and not r.refused}
            )
        return plan.results

    def _ensure_collection(self, name: str, model: str, dim: int) -> None:
        """Makes the collection for ``model``'s ``dim``-d vectors, or checks
        that it holds those (FAILED_PRECONDITION naming the ways back)."""
        row = self.meta.get_collection(name)
        if row is None:
            # SQL is the system of record: a vector set it does not
            # know is a leftover of an interrupted drop, replaced here.
            self.vectors.create(name, dim, replace=True)
            self.meta.create_collection(
                CollectionRow(name, model, dim, self.metric, self.vectors.index_type)
            )
            logs.event(log, "collection.created", collection=name, model=model, dim=dim)
            return
        if row.dim != dim or row.model != model:
            raise errors.failed_precondition(
                f"collection {name!r} holds {row.dim}-d vectors of model {row.model!r}; "
                f"these are {dim}-d vectors of {model!r}. " + ways_back(name, row.model)
            )
        self.vectors.ensure(name, dim)

    def _apply(self, name: str, model: str, plan: UpsertPlan) -> None:
        """Writes ``plan``: its vectors are sent while SQL writes its rows in
        one transaction, which commits them ready once the vectors are stored
        (nothing, if they were not); then the vectors no row keeps go."""
        keys = list(plan.to_embed)
        if not keys:
            paths, moved = list(plan.new_paths.items()), list(plan.moved_paths.items())
            orphaned = self.meta.write_rows(
                name, model, [], paths, moved, plan.origins, plan.thumbnails
            )
        else:
            vectors = np.stack([plan.to_embed[k] for k in keys])
            context = contextvars.copy_context()  # the call's request id, in logs
            sending = self._sender.submit(context.run, self.vectors.upsert, name, keys, vectors)
            new = {n.image_id for n in plan.new_images}
            try:
                orphaned = self.meta.write_rows(
                    name,
                    model,
                    plan.new_images,
                    list(plan.new_paths.items()),
                    list(plan.moved_paths.items()),
                    plan.origins,
                    plan.thumbnails,
                    vectors_stored=sending.result,
                    ready=[k for k in keys if k not in new],  # rows left pending before
                )
            except BaseException:
                self._withdraw(name, sorted(new), sending)
                raise
        if orphaned:
            self.vectors.delete(name, orphaned)
            self.text.forget(self.collection(name), orphaned)

    def _withdraw(self, name: str, new: list[int], sending: Future[None]) -> None:
        """The batch's rows did not commit: the vectors of its new images, if
        stored, go (those without a row after all; Reconcile does it where
        the database cannot say)."""
        try:
            if not new or sending.exception() is not None:
                return
            self.vectors.delete(name, sorted(set(new) - self.meta.known_ids(name, new)))
        except Exception as exc:  # best effort: the refusal is what the caller hears
            logs.event(
                log, "upsert.withdraw_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}"
            )

    def delete(
        self, name: str, image_ids: list[int], paths: list[str], prefix: str
    ) -> tuple[int, int]:
        """Returns (images deleted, paths removed)."""
        self._writable()
        row = self.collection(name)
        for p in paths:
            names.path(p)
        if not image_ids and not paths and not prefix:
            raise errors.invalid_argument(
                "Delete needs image_ids, paths or path_prefix; to remove everything use "
                "DropCollection"
            )
        with self._writing():
            gone: list[int] = []
            removed = 0
            if image_ids:
                gone += self.meta.delete_images(name, image_ids)
            if paths or prefix:
                count, deleted = self.meta.delete_paths(name, paths, prefix or None)
                removed += count
                gone += deleted
            self.vectors.delete(name, gone)
            self.text.forget(row, gone)
        logs.event(log, "images.deleted", collection=name, images=len(gone), paths=removed)
        return len(gone), removed

    def drop(self, name: str) -> bool:
        self._writable()
        names.collection(name)
        with self._writing():
            existed = self.meta.drop_collection(name)
            in_vectors = self.vectors.exists(name)
            if in_vectors:
                self.vectors.drop(name)
            self.text.drop(name)
        if not existed and not in_vectors:
            raise errors.not_found(f"collection {name!r} does not exist")
        logs.event(log, "collection.dropped", collection=name)
        return True

    # -- reads -----------------------------------------------------------

    def search(
        self,
        name: str,
        query_vectors: list[bytes],
        query_ids: list[int],
        top_k: int,
        prefix: str = "",
        min_score: float = 0.0,
        model: str = "",
    ) -> list[list[Hit]]:
        row = self.collection(name)
        queries = self._queries(row, query_vectors, query_ids, top_k, min_score, model)
        if query_ids:
            known = self.meta.records(name, query_ids)
            missing = [i for i in query_ids if i not in known]
            if missing:
                raise errors.not_found(f"image id {missing[0]} is not in collection {name!r}")
            stored = self.vectors.get_vectors(name, query_ids)
            lost = [i for i in query_ids if i not in stored]
            if lost:
                # A reader sees rows at once and vectors within its staleness:
                # an image stored a moment ago is read as of every write.
                stored.update(self.vectors.get_vectors(name, lost, strong=True))
                lost = [i for i in query_ids if i not in stored]
            if lost:
                raise errors.failed_precondition(
                    f"image {lost[0]} has a row but no vector in {name!r}; run Reconcile"
                )
            queries += [stored[i] for i in query_ids]

        return self._searched(name, name, queries, top_k, prefix, min_score)

    def search_text(
        self,
        name: str,
        text_vectors: list[bytes],
        top_k: int,
        prefix: str = "",
        min_score: float = 0.0,
        text_model: str = "",
        expand: int = 0,
    ) -> list[list[Hit]]:
        """Search by words: the hits of each query vector in the collection's
        text space, expanded by their images (text_space.py) when asked."""
        row = self.collection(name)
        queries = self.text.queries(row, text_vectors, text_model, expand)
        self._check_search(top_k, min_score, bool(queries))
        depth = min(max(top_k, EXPAND_DEPTH), self.vectors.max_top_k) if expand else top_k
        found = self._searched(name, text_space(name), queries, depth, prefix, 0.0)
        ranked = [self.text.expanded(row, hits, expand, top_k) for hits in found]
        return [[h for h in hits if h.score >= min_score] for hits in ranked]

    def _searched(
        self,
        name: str,
        vector_set: str,
        queries: list[np.ndarray],
        top_k: int,
        prefix: str,
        min_score: float,
    ) -> list[list[Hit]]:
        """The search's I/O: ``queries`` in ``vector_set`` (the collection's
        image vectors, or its text vectors), rows from the collection's."""
        only_ids: list[int] | None = None
        if prefix:
            candidates = self.meta.ids_with_prefix(name, prefix, PREFIX_FILTER_LIMIT + 1)
            if not candidates:
                return [[] for _ in queries]
            if len(candidates) <= PREFIX_FILTER_LIMIT:
                only_ids = candidates
        filtered_here = bool(prefix) and only_ids is None
        rounds = search_rounds(
            queries,
            top_k,
            prefix,
            min_score,
            filtered_here,
            self.vectors.max_top_k,
            self.vectors.score,
        )
        try:
            batch, fetch = next(rounds)
            while True:
                raw = self.vectors.search(vector_set, batch, fetch, only_ids)
                rows = self.meta.records(name, [iid for hits in raw for iid, _ in hits])
                batch, fetch = rounds.send((raw, rows))
        except StopIteration as done:
            return cast(list[list[Hit]], done.value)

    async def search_async(
        self,
        name: str,
        query_vectors: list[bytes],
        query_ids: list[int],
        top_k: int,
        prefix: str = "",
        min_score: float = 0.0,
        model: str = "",
    ) -> list[list[Hit]]:
        """``search`` on the server's event loop: the vector search is awaited
        and the rows come from the row cache, so a search by vectors whose
        hits are cached takes no thread. What needs SQL (the collection's
        row or a hit's not yet cached, queries by id, a path prefix) runs on
        a thread, so the loop never waits on the database."""
        row = self.meta.cached_collection(name)
        if row is None or query_ids or prefix:
            return await asyncio.to_thread(
                self.search, name, query_vectors, query_ids, top_k, prefix, min_score, model
            )
        queries = self._queries(row, query_vectors, query_ids, top_k, min_score, model)
        rounds = search_rounds(
            queries, top_k, prefix, min_score, False, self.vectors.max_top_k, self.vectors.score
        )
        try:
            batch, fetch = next(rounds)
            while True:
                raw = await self.vectors.search_async(name, batch, fetch)
                ids = [iid for hits in raw for iid, _ in hits]
                rows = self.meta.cached_records(name, ids)
                if rows is None:
                    rows = await asyncio.to_thread(self.meta.records, name, ids)
                batch, fetch = rounds.send((raw, rows))
        except StopIteration as done:
            return cast(list[list[Hit]], done.value)

    def _queries(
        self,
        row: CollectionRow,
        query_vectors: list[bytes],
        query_ids: list[int],
        top_k: int,
        min_score: float,
        model: str,
    ) -> list[np.ndarray]:
        """The search's arguments checked, and its query vectors unpacked."""
        if model and query_vectors and model != row.model:
            raise errors.failed_precondition(
                f"collection {row.name!r} holds vectors of model {row.model!r}, the query was "
                f"embedded with {model!r}. " + ways_back(row.name, row.model)
            )
        self._check_search(top_k, min_score, bool(query_vectors or query_ids))
        return [unpack_vector(v, row.dim, f"query #{i}") for i, v in enumerate(query_vectors)]

    def _check_search(self, top_k: int, min_score: float, any_query: bool) -> None:
        if not 1 <= top_k <= MAX_TOP_K:
            raise errors.invalid_argument(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        if not (0.0 <= min_score <= 1.0) or math.isnan(min_score):
            raise errors.invalid_argument(f"min_score must be between 0 and 1, got {min_score}")
        if not any_query:
            raise errors.invalid_argument("Search needs at least one query vector or image id")

    def get(
        self, name: str, image_ids: list[int], paths: list[str], include_pending: bool
    ) -> list[ImageRow]:
        self.collection(name)
        wanted = list(image_ids) + self.meta.ids_for_paths(name, paths)
        found = self.meta.records(name, wanted, ready_only=not include_pending)
        return [found[i] for i in dict.fromkeys(wanted) if i in found]

    def count(self, name: str) -> tuple[int, int]:
        self.collection(name)
        return self.meta.counts(name)

    def list_collections(self) -> list[tuple[CollectionRow, int, int]]:
        return [(row, *self.meta.counts(row.name)) for row in self.meta.list_collections()]

    # -- repair ----------------------------------------------------------

    def thumbnails(self, name: str, image_ids: Sequence[int]) -> dict[int, bytes]:
        self.collection(name)
        return self.meta.get_thumbnails(name, image_ids)

    def _reconcile_collection(self, name: str, report: ReconcileReport) -> None:
        """Both stores of one collection brought in step, a page of ids at a
        time (memory does not grow with the collection): pending rows whose
        vector is stored become ready, vectors without a row go, and ready
        rows whose vector is gone become pending again."""
        for pending in self.meta.id_pages(name, PENDING):
            have = self.vectors.existing(name, pending, strong=True)
            self.meta.mark_ready(name, sorted(have))
            report.marked_ready += len(have)
            lacking = [i for i in pending if i not in have]
            report.needs_reembedding += [(name, r) for r in self.meta.pending_rows(name, lacking)]
        for vector_set in (name, *self.text.spaces(name)):  # image vectors, then text ones
            for stored in batched(self.vectors.all_ids(vector_set), RECONCILE_PAGE):
                known = self.meta.known_ids(name, stored)
                orphans = [i for i in stored if i not in known]
                self.vectors.delete(vector_set, orphans)
                report.orphan_vectors_deleted += len(orphans)
        # Ready rows whose vector is gone (vector data lost): pending again, so
        # that indexing the file again repairs them instead of being skipped
        # as a duplicate.
        for ready in self.meta.id_pages(name, READY):
            have = self.vectors.existing(name, ready, strong=True)
            lost = [i for i in ready if i not in have]
            if lost:
                self.meta.mark_pending(name, lost)
                report.missing_vectors += len(lost)
                report.needs_reembedding += [(name, r) for r in self.meta.pending_rows(name, lost)]

    def reconcile(
        self, name: str = "", thumbnails_limit: int = 0, text_limit: int = 0
    ) -> ReconcileReport:
        """``thumbnails_limit``, ``text_limit``: also list (up to that many)
        ready images without a thumbnail, or a text vector, for the gateway
        to make them."""
        self._writable()
        report = ReconcileReport()
        targets = [self.collection(name)] if name else self.meta.list_collections()
        with self._writing():
            for row in targets:
                self.vectors.ensure(row.name, row.dim)
                self._reconcile_collection(row.name, report)
                if thumbnails_limit > 0:
                    room = thumbnails_limit - len(report.needs_thumbnail)
                    missing, first = self.meta.ready_without_thumbnail(row.name, room)
                    report.thumbnails_missing += missing
                    rows = self.meta.records(row.name, first, ready_only=True)
                    report.needs_thumbnail += [(row.name, rows[i]) for i in first if i in rows]
                if text_limit > 0:
                    room = text_limit - len(report.needs_text)
                    missing, lacking = self.text.lacking(row, room)
                    report.text_missing += missing
                    report.needs_text += [(row.name, r) for r in lacking]
        logs.event(
            log,
            "reconcile.done",
            collection=name or "*",
            marked_ready=report.marked_ready,
            orphans_deleted=report.orphan_vectors_deleted,
            missing_vectors=report.missing_vectors,
            needs_reembedding=len(report.needs_reembedding),
        )
        return report
