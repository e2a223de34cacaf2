"""Reconcile through the gateway: the index repairs what it can alone
(pending rows whose vector is there, vectors without rows, ready rows whose
vector is gone set back to pending); the gateway then embeds again every
image left without a vector whose file it can read under the allowed roots
with the very bytes that were stored. The rest is listed for the caller."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from functools import partial

from gateway.budget import ByteBudget
from gateway.clients import Backends
from gateway.deadline import Deadline
from gateway.orchestrator import Ingestor, Outcome, Source
from gateway.paths import AllowedRoots
from imagesearch import errors, ids
from imagesearch.v1 import gateway_pb2, index_pb2

BATCH = 16  # images read and embedded together


def reconcile(
    backends: Backends,
    ingestor: Ingestor,
    roots: AllowedRoots,
    collection: str,
    deadline: Deadline,
    keep: int,
    budget: ByteBudget,
) -> gateway_pb2.ReconcileResponse:
    """``keep``: how many unrepaired paths the answer lists (all are counted).
    ``budget``: files are read while they fit it (the stored sizes), like a
    stream's or a job's batches."""
    found = backends.index_call(
        "Reconcile", index_pb2.IndexServiceReconcileRequest(collection=collection), deadline
    )
    answer = gateway_pb2.ReconcileResponse(
        marked_ready=found.marked_ready,
        orphan_vectors_deleted=found.orphan_vectors_deleted,
        missing_vectors=found.missing_vectors,
    )
    by_collection: dict[str, list[index_pb2.ImageRecord]] = defaultdict(list)
    for record in found.needs_reembedding:
        by_collection[record.collection or collection].append(record)

    def unrepaired(record: index_pb2.ImageRecord) -> None:
        answer.unrepaired += 1
        if len(answer.unrepaired_paths) < keep:
            answer.unrepaired_paths.append(record.path or f"image {record.image_id}")

    for name, records in by_collection.items():
        for group in _groups(records, BATCH):
            taken = budget.acquire(sum(r.size for r in group))
            try:
                sources: list[Source] = []
                origins: list[index_pb2.ImageRecord] = []
                for record in group:
                    source = _readable(record, roots, ingestor)
                    if source is None:
                        unrepaired(record)
                    else:
                        sources.append(source)
                        origins.append(record)
                results = (
                    ingestor.ingest(name, sources, deadline, index_pb2.PATH_ORIGIN_SERVER)
                    if sources
                    else []
                )
            finally:
                budget.release(taken)
            for record, result in zip(origins, results, strict=True):
                if result.outcome is Outcome.FAILED:
                    unrepaired(record)
                else:
                    answer.reembedded += 1
    return answer


def _readable(
    record: index_pb2.ImageRecord, roots: AllowedRoots, ingestor: Ingestor
) -> Source | None:
    """The first of the record's paths the gateway may read and that still
    holds the stored bytes (same sha256)."""
    for path in record.paths or [record.path]:
        try:
            data = roots.read(path, partial(ingestor.limit.check, path))
        except (errors.ServiceError, OSError):
            continue
        if ids.sha256(data).hex() == record.sha256:
            return Source(path, data)
    return None


def _groups(
    items: Sequence[index_pb2.ImageRecord], size: int
) -> Iterator[list[index_pb2.ImageRecord]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
