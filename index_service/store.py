"""The index's logic over both stores, with the write order that keeps them
consistent through a crash:

* Upsert: SQL rows as ``pending`` -> vectors into Milvus -> rows ``ready``.
* Delete / Drop: SQL first -> Milvus. A crash leaves at worst a vector with
  no row, which searches skip and Reconcile deletes.
* Reconcile: pending rows whose vector exists become ready; pending rows
  without a vector are reported for re-embedding; vectors without a row go.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np

from imagesearch import errors, ids, logs
from index_service import names
from index_service.metadata import (
    PENDING,
    READY,
    SERVER,
    STREAM,
    CollectionRow,
    ImageRow,
    MetadataStore,
    NewImage,
)
from index_service.vectors import MAX_TOPK, VectorStore
from index_service.writer import StoreLocked, WriterLock

log = logging.getLogger(__name__)

MAX_TOP_K = 1000
MAX_DIM = 32768
PREFIX_FILTER_LIMIT = 16384  # above this many candidates, over-fetch and filter
OVERFETCH = 4  # hits asked for beyond top_k, for rows pending or gone


@dataclass(frozen=True)
class Item:
    sha256: bytes
    path: str
    size: int
    width: int
    height: int
    vector: bytes
    origin: str = STREAM  # SERVER: a file a server job found; STREAM: a client's name
    thumbnail: bytes = b""  # JPEG; kept if the image has none yet


@dataclass(frozen=True)
class UpsertResult:
    image_id: int
    duplicate: bool
    path_added: bool
    refused: str = ""  # why nothing was stored for this item
    code: grpc.StatusCode = grpc.StatusCode.OK  # with ``refused``


@dataclass(frozen=True)
class Hit:
    image_id: int
    distance: float
    score: float
    row: ImageRow


@dataclass
class ReconcileReport:
    marked_ready: int = 0
    orphan_vectors_deleted: int = 0
    missing_vectors: int = 0  # ready rows whose vector was gone (set back to pending)
    needs_reembedding: list[tuple[str, ImageRow]] = field(default_factory=list)
    needs_thumbnail: list[tuple[str, ImageRow]] = field(default_factory=list)
    thumbnails_missing: int = 0


def unpack_vector(raw: bytes, dim: int, what: str) -> np.ndarray:
    if len(raw) == 0:
        raise errors.invalid_argument(f"{what}: the vector is empty")
    if len(raw) != dim * 4:
        raise errors.invalid_argument(
            f"{what}: the vector has {len(raw)} bytes, expected {dim} float32 values "
            f"({dim * 4} bytes) for this collection"
        )
    vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vec)):
        raise errors.invalid_argument(f"{what}: the vector contains NaN or infinity")
    norm = float(np.linalg.norm(vec))
    if norm == 0.0:
        raise errors.invalid_argument(f"{what}: the vector is all zeros")
    return vec / norm


def ways_back(name: str, stored: str) -> str:
    """What to do about a collection of another model's vectors: the two ways
    out, exactly. Model ids are ``model/pooling/weights-digest``, then
    ``/resize-crop`` when the preprocessing sizes are not the defaults; a GeM
    exponent other than 3 shows in the pooling (``gem4``); a composed model's
    (tirg_css) is ``flat``, set by the model itself."""
    parts = stored.split("/")
    model, pooling, digest = [*parts, "", ""][:3]
    sizes = parts[3:]
    settings = [f"EMBEDDER_MODEL={model}"]
    if pooling == "flat":  # a composed model (tirg_css): its sizes are its own
        sizes = []
    elif pooling.startswith("gem") and pooling != "gem":
        settings += ["EMBEDDER_POOLING=gem", f"EMBEDDER_GEM_P={pooling.removeprefix('gem')}"]
    else:
        settings.append(f"EMBEDDER_POOLING={pooling or 'avg'}")
    if sizes:
        resize, _, crop = sizes[0].partition("-")
        settings += [f"EMBEDDER_RESIZE={resize}", f"EMBEDDER_IMAGE_SIZE={crop}"]
    return (
        f"Either run the embedder that built it ({' '.join(settings)}, with the weights "
        f"whose sha256 starts {digest or '?'}: EMBEDDER_WEIGHTS=bundled if they were the "
        f"bundled ones), or re-index it with this one: `imgsearch drop -c {name} --yes`, "
        "then index its folders again (or index into a new collection)"
    )


def score_of(metric: str, raw: float) -> tuple[float, float]:
    """(distance reported, score in [0,1]) from Milvus' raw distance: for L2
    the squared distance between unit vectors, for IP/COSINE the similarity."""
    if metric == "L2":
        cos = 1.0 - raw / 2.0
        return raw, min(1.0, max(0.0, cos))
    return 1.0 - raw, min(1.0, max(0.0, raw))


class IndexStore:
    def __init__(
        self, meta: MetadataStore, vectors: VectorStore, writer: WriterLock | None = None
    ) -> None:
        self.meta = meta
        self.vectors = vectors
        self.metric = vectors.metric
        self.writer = writer  # one index per store (index_service.writer)
        self._write = threading.Lock()  # one writer thread: keeps the two stores in step

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Holds the write lock, with the store's writer lock taken first
        (taken here when the database was away at start)."""
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

    def _score(self, distance: float) -> tuple[float, float]:
        return score_of(self.metric, distance)

    # -- writes ----------------------------------------------------------

    def upsert(self, name: str, model: str, dim: int, items: list[Item]) -> list[UpsertResult]:
        names.collection(name)
        if not model:
            raise errors.invalid_argument(
                "Upsert needs the model id of the vectors (ModelInfo.model_id)"
            )
        if not 0 < dim <= MAX_DIM:
            raise errors.invalid_argument(f"dim {dim} is out of range 1..{MAX_DIM}")
        if not items:
            return []
        vectors: list[np.ndarray] = []
        image_ids: list[int] = []
        for n, item in enumerate(items):
            what = f"item #{n} ({item.path[:60] or 'no path'})"
            if len(item.sha256) != ids.SHA256_BYTES:
                raise errors.invalid_argument(
                    f"{what}: sha256 must be 32 bytes, got {len(item.sha256)}"
                )
            if item.size < 0 or item.width < 0 or item.height < 0:
                raise errors.invalid_argument(
                    f"{what}: size, width and height must not be negative"
                )
            vectors.append(unpack_vector(item.vector, dim, what))
            image_ids.append(ids.image_id_from_sha256(item.sha256))

        with self._writing():
            row = self.meta.get_collection(name)
            if row is None:
                # SQL is the system of record: a Milvus collection it does not
                # know is a leftover of an interrupted drop, replaced here.
                self.vectors.create(name, dim, replace=True)
                self.meta.create_collection(
                    CollectionRow(name, model, dim, self.metric, self.vectors.index_type)
                )
                logs.event(log, "collection.created", collection=name, model=model, dim=dim)
            else:
                if row.dim != dim or row.model != model:
                    raise errors.failed_precondition(
                        f"collection {name!r} holds {row.dim}-d vectors of model {row.model!r}; "
                        f"these are {dim}-d vectors of {model!r}. " + ways_back(name, row.model)
                    )
                self.vectors.ensure(name, dim)

            statuses = self.meta.statuses(name, image_ids)
            owners = self.meta.path_owners(name, [it.path for it in items])
            new_images: dict[int, NewImage] = {}
            to_embed: dict[int, np.ndarray] = {}
            new_paths: dict[str, int] = {}
            moved_paths: dict[str, int] = {}
            origins: dict[str, str] = {}
            results: list[UpsertResult] = []
            digests = {iid: sha for iid, (_, sha) in statuses.items()}
            for item, iid, vec in zip(items, image_ids, vectors, strict=True):
                current = owners.get(item.path)  # (image id, origin), this batch included
                refused = self._refusal(item, iid, current, digests)
                if refused is not None:
                    results.append(UpsertResult(iid, False, False, *refused))
                    continue
                digests.setdefault(iid, item.sha256.hex())
                known = statuses.get(iid, (None, ""))[0]
                duplicate = known == READY or iid in new_images or (iid in to_embed)
                if known is None and iid not in new_images:
                    new_images[iid] = NewImage(
                        iid, item.sha256.hex(), item.path, item.size, item.width, item.height
                    )
                if known != READY and iid not in to_embed:
                    to_embed[iid] = vec
                path_added = False
                if current is None:
                    new_paths[item.path] = iid
                    path_added = True
                elif current[0] != iid:
                    moved_paths[item.path] = iid  # the file at this path changed
                    path_added = True
                elif item.origin == SERVER and current[1] != SERVER:
                    moved_paths[item.path] = iid  # a server job takes back a streamed name
                if item.path not in origins or item.origin == SERVER:
                    origins[item.path] = item.origin
                owners[item.path] = (iid, origins[item.path])
                results.append(UpsertResult(iid, duplicate, path_added and duplicate))

            orphaned = self.meta.write_pending(
                name,
                model,
                list(new_images.values()),
                list(new_paths.items()),
                list(moved_paths.items()),
                origins,
            )
            thumbnails = {
                res.image_id: item.thumbnail
                for item, res in zip(items, results, strict=True)
                if item.thumbnail and not res.refused and res.image_id not in orphaned
            }
            if thumbnails:
                self.meta.put_thumbnails(name, thumbnails)
            if to_embed:
                keys = list(to_embed)
                self.vectors.upsert(name, keys, np.stack([to_embed[k] for k in keys]))
                self.meta.mark_ready(name, keys)
            if orphaned:
                self.vectors.delete(name, orphaned)
        return results

    @staticmethod
    def _refusal(
        item: Item, iid: int, owner: tuple[int, str] | None, digests: dict[int, str]
    ) -> tuple[str, grpc.StatusCode] | None:
        """Why ``item`` cannot be stored (its own problem, not the batch's), or None."""
        try:
            names.path(item.path)
        except errors.ServiceError as exc:
            return exc.message, exc.code
        stored = digests.get(iid)
        if stored is not None and stored != item.sha256.hex():
            # Ids are the first 8 bytes of SHA-256: two different images can
            # share one. They are never merged.
            return (
                f"{item.path}: image id {iid} collides: the stored image with this id has "
                f"sha256 {stored}, these bytes {item.sha256.hex()}; not stored",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        if item.origin != SERVER and owner is not None and owner[1] == SERVER and owner[0] != iid:
            return (
                f"{item.path}: a server job indexed a file under this path; a streamed "
                "image cannot take it (send it under another name)",
                grpc.StatusCode.PERMISSION_DENIED,
            )
        return None

    def delete(
        self, name: str, image_ids: list[int], paths: list[str], prefix: str
    ) -> tuple[int, int]:
        """Returns (images deleted, paths removed)."""
        self.collection(name)
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
        logs.event(log, "images.deleted", collection=name, images=len(gone), paths=removed)
        return len(gone), removed

    def drop(self, name: str) -> bool:
        names.collection(name)
        with self._writing():
            existed = self.meta.drop_collection(name)
            in_milvus = self.vectors.exists(name)
            if in_milvus:
                self.vectors.drop(name)
        if not existed and not in_milvus:
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
        if model and query_vectors and model != row.model:
            raise errors.failed_precondition(
                f"collection {name!r} holds vectors of model {row.model!r}, the query was "
                f"embedded with {model!r}. " + ways_back(name, row.model)
            )
        if not 1 <= top_k <= MAX_TOP_K:
            raise errors.invalid_argument(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        if not (0.0 <= min_score <= 1.0) or math.isnan(min_score):
            raise errors.invalid_argument(f"min_score must be between 0 and 1, got {min_score}")
        if not query_vectors and not query_ids:
            raise errors.invalid_argument("Search needs at least one query vector or image id")
        queries = [unpack_vector(v, row.dim, f"query #{i}") for i, v in enumerate(query_vectors)]
        if query_ids:
            known = self.meta.records(name, query_ids)
            missing = [i for i in query_ids if i not in known]
            if missing:
                raise errors.not_found(f"image id {missing[0]} is not in collection {name!r}")
            stored = self.vectors.get_vectors(name, query_ids)
            lost = [i for i in query_ids if i not in stored]
            if lost:
                raise errors.failed_precondition(
                    f"image {lost[0]} has a row but no vector in {name!r}; run Reconcile"
                )
            queries += [stored[i] for i in query_ids]

        only_ids: list[int] | None = None
        if prefix:
            candidates = self.meta.ids_with_prefix(name, prefix, PREFIX_FILTER_LIMIT + 1)
            if not candidates:
                return [[] for _ in queries]
            if len(candidates) <= PREFIX_FILTER_LIMIT:
                only_ids = candidates
        # Hits whose row is pending or gone are skipped, and with a prefix too
        # broad to pass to Milvus as ids, hits are filtered here: ask for a few
        # more than top_k, and ask again, 4x deeper, for the queries that came
        # up short while Milvus still had more to give.
        filtered_here = bool(prefix) and only_ids is None
        fetch = min(MAX_TOPK, (top_k * 8 if filtered_here else top_k) + OVERFETCH)
        out: list[list[Hit]] = [[] for _ in queries]
        todo = list(range(len(queries)))
        while todo:
            raw = self.vectors.search(name, np.stack([queries[q] for q in todo]), fetch, only_ids)
            rows = self.meta.records(name, [iid for hits in raw for iid, _ in hits])
            short = []
            for q, hits in zip(todo, raw, strict=True):
                out[q], complete = self._choose(hits, rows, top_k, prefix, min_score)
                if not complete and len(hits) == fetch and fetch < MAX_TOPK:
                    short.append(q)
            todo, fetch = short, min(MAX_TOPK, fetch * 4)
        return out

    def _choose(
        self,
        hits: list[tuple[int, float]],
        rows: dict[int, ImageRow],
        top_k: int,
        prefix: str,
        min_score: float,
    ) -> tuple[list[Hit], bool]:
        """The first top_k usable hits, and whether the list is final (full,
        or cut by min_score: hits come best first)."""
        chosen: list[Hit] = []
        for iid, dist in hits:
            meta_row = rows.get(iid)
            if meta_row is None:
                continue
            if prefix and not any(p.startswith(prefix) for p in meta_row.paths):
                continue
            distance, score = self._score(dist)
            if score < min_score:
                return chosen, True
            chosen.append(Hit(iid, distance, score, meta_row))
            if len(chosen) == top_k:
                return chosen, True
        return chosen, False

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

    def reconcile(self, name: str = "", thumbnails_limit: int = 0) -> ReconcileReport:
        """``thumbnails_limit``: also list (up to that many) ready images
        without a thumbnail, for the gateway to make them."""
        report = ReconcileReport()
        targets = [self.collection(name)] if name else self.meta.list_collections()
        with self._writing():
            for row in targets:
                self.vectors.ensure(row.name, row.dim)
                pending = self.meta.ids_by_status(row.name, PENDING)
                if pending:
                    have = self.vectors.existing(row.name, pending, consistency="Strong")
                    self.meta.mark_ready(row.name, sorted(have))
                    report.marked_ready += len(have)
                    lacking = [i for i in pending if i not in have]
                    report.needs_reembedding += [
                        (row.name, r) for r in self.meta.pending_rows(row.name, lacking)
                    ]
                known = self.meta.all_ids(row.name)
                stored = set(self.vectors.all_ids(row.name))
                orphans = [i for i in stored if i not in known]
                self.vectors.delete(row.name, orphans)
                report.orphan_vectors_deleted += len(orphans)
                # Ready rows whose vector is gone (Milvus data lost): pending
                # again, so that indexing the file again repairs them instead
                # of being skipped as a duplicate.
                lost = [i for i in self.meta.ids_by_status(row.name, READY) if i not in stored]
                if lost:
                    self.meta.mark_pending(row.name, lost)
                    report.missing_vectors += len(lost)
                    report.needs_reembedding += [
                        (row.name, r) for r in self.meta.pending_rows(row.name, lost)
                    ]
                if thumbnails_limit > 0:
                    room = thumbnails_limit - len(report.needs_thumbnail)
                    missing, first = self.meta.ready_without_thumbnail(row.name, room)
                    report.thumbnails_missing += missing
                    rows = self.meta.records(row.name, first, ready_only=True)
                    report.needs_thumbnail += [(row.name, rows[i]) for i in first if i in rows]
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
