"""Reconcile through the gateway: the index repairs what it can alone
(pending rows whose vector is there, vectors without rows, ready rows whose
vector is gone set back to pending); the gateway then embeds again every
image left without a vector whose file it can read under the allowed roots
with the very bytes that were stored. The rest is listed for the caller.
With ``backfill_thumbnails`` it also embeds again, from their files, images
stored before thumbnails existed (up to THUMBNAILS_PER_CALL per call); with
``backfill_text``, images without a text vector (search by words), which the
same pass gives them (up to TEXT_PER_CALL per call)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from gateway.budget import ByteBudget
from gateway.clients import Backends
from gateway.deadline import Deadline
from gateway.orchestrator import Ingestor, Outcome, Source
from gateway.paths import AllowedRoots
from imagesearch import errors, ids
from imagesearch.v1 import gateway_pb2, index_pb2

BATCH = 16  # images read and embedded together
THUMBNAILS_PER_CALL = 1000  # images given a thumbnail per Reconcile call
TEXT_PER_CALL = 1000  # images given a text vector per Reconcile call


def reconcile(
    backends: Backends,
    ingestor: Ingestor,
    roots: AllowedRoots,
    request: gateway_pb2.ReconcileRequest,
    deadline: Deadline,
    keep: int,
    budget: ByteBudget,
) -> gateway_pb2.ReconcileResponse:
    """``keep``: how many unrepaired paths the answer lists (all are counted).
    ``budget``: files are read while they fit it (the stored sizes), like a
    stream's or a job's batches."""
    collection = request.collection
    if request.backfill_text:
        _check_text_side(backends, collection, deadline)
    found = backends.index_call(
        "Reconcile",
        index_pb2.IndexServiceReconcileRequest(
            collection=collection,
            thumbnails_limit=THUMBNAILS_PER_CALL if request.backfill_thumbnails else 0,
            text_limit=TEXT_PER_CALL if request.backfill_text else 0,
        ),
        deadline,
    )
    answer = gateway_pb2.ReconcileResponse(
        marked_ready=found.marked_ready,
        orphan_vectors_deleted=found.orphan_vectors_deleted,
        missing_vectors=found.missing_vectors,
        thumbnails_missing=found.thumbnails_missing,
        text_missing=found.text_missing,
    )

    def unrepaired(record: index_pb2.ImageRecord) -> None:
        answer.unrepaired += 1
        if len(answer.unrepaired_paths) < keep:
            answer.unrepaired_paths.append(record.path or f"image {record.image_id}")

    answer.reembedded = _embed_again(
        found.needs_reembedding, collection, roots, ingestor, deadline, budget, unrepaired
    )
    if request.backfill_thumbnails and ingestor.thumbnail_px:
        answer.thumbnails_made = _embed_again(
            found.needs_thumbnail, collection, roots, ingestor, deadline, budget, None
        )
        answer.thumbnails_missing -= answer.thumbnails_made
    if request.backfill_text:
        answer.text_made = _embed_again(
            found.needs_text, collection, roots, ingestor, deadline, budget, None
        )
        answer.text_missing -= answer.text_made
    return answer


def _check_text_side(backends: Backends, collection: str, deadline: Deadline) -> None:
    """FAILED_PRECONDITION unless the embedder of ``collection`` (of every
    collection, for "") has a text side."""
    names = [collection] if collection else backends.collection_names(deadline)
    for name in names:
        model = backends.model_of(backends.embedder_for(name, deadline), deadline)
        if model.text_dim <= 0:
            raise errors.failed_precondition(
                f"collection {name!r} is embedded with {model.model}, which has no text side: "
                "its images cannot get text vectors (search by words needs a model with an "
                "ImageNet classifier: efficientnet_lite0, resnet18, resnet50, vgg16)"
            )


def _embed_again(
    records: Sequence[index_pb2.ImageRecord],
    collection: str,
    roots: AllowedRoots,
    ingestor: Ingestor,
    deadline: Deadline,
    budget: ByteBudget,
    unrepaired: Callable[[index_pb2.ImageRecord], None] | None,
) -> int:
    """Embeds (and upserts) again the records whose file is readable with the
    stored bytes; returns how many went through. ``unrepaired`` hears of the rest."""
    by_collection: dict[str, list[index_pb2.ImageRecord]] = defaultdict(list)
    for record in records:
        by_collection[record.collection or collection].append(record)
    done = 0
    for name, items in by_collection.items():
        for start in range(0, len(items), BATCH):
            group = items[start : start + BATCH]
            taken = budget.acquire(sum(r.size for r in group))
            try:
                sources: list[Source] = []
                origins: list[index_pb2.ImageRecord] = []
                for record in group:
                    source = _readable(record, roots, ingestor)
                    if source is None:
                        if unrepaired is not None:
                            unrepaired(record)
                    else:
                        sources.append(source)
                        origins.append(record)
                results = (
                    ingestor.ingest(
                        name, sources, deadline, index_pb2.PATH_ORIGIN_SERVER, again=True
                    )
                    if sources
                    else []
                )
            finally:
                budget.release(taken)
            for record, result in zip(origins, results, strict=True):
                if result.outcome is Outcome.FAILED:
                    if unrepaired is not None:
                        unrepaired(record)
                else:
                    done += 1
    return done


def _readable(
    record: index_pb2.ImageRecord, roots: AllowedRoots, ingestor: Ingestor
) -> Source | None:
    """The first of the record's paths the gateway may read and that still
    holds the stored bytes (same sha256)."""
    for path in record.paths or [record.path]:
        try:
            data = ingestor.limit.read(roots, path)
        except (errors.ServiceError, OSError):
            continue
        if ids.sha256(data).hex() == record.sha256:
            return Source(path, data)
    return None
