"""Builds the index's objects and starts its server (used by __main__ and tests)."""

from __future__ import annotations

import logging
import threading

from imagesearch import errors, logs
from imagesearch.readiness import Readiness
from imagesearch.server import RunningServer, start_server
from imagesearch.v1 import index_pb2, index_pb2_grpc
from index_service.metadata import MetadataStore
from index_service.servicer import IndexServicer
from index_service.settings import IndexSettings
from index_service.store import IndexStore
from index_service.vectors import open_vector_store
from index_service.writer import WriterLock

log = logging.getLogger(__name__)

SERVICE_NAME = index_pb2.DESCRIPTOR.services_by_name["IndexService"].full_name


def build_store(settings: IndexSettings, writer: WriterLock | None = None) -> IndexStore:
    return IndexStore(
        MetadataStore(
            settings.database_url,
            settings.table_prefix,
            settings.row_cache,
            settings.row_cache_mb * 1024 * 1024,
            tls=settings.database_tls(),
            read_only=settings.reader,
            max_age_s=settings.read_staleness_s if settings.reader else None,
        ),
        open_vector_store(settings),
        writer,
        read_only=settings.reader,
    )


def take_writer_lock(settings: IndexSettings) -> WriterLock:
    writer = WriterLock(settings.database_url, settings.table_prefix)
    try:
        writer.acquire()  # StoreLocked: another index writes here; fatal
    except errors.ServiceError:  # the database is away: taken before the first write
        logs.event(log, "writer_lock.deferred", logging.WARNING, database=writer.safe_url)
    return writer


def start(settings: IndexSettings, store: IndexStore | None = None) -> RunningServer:
    """Serves at once: health answers (liveness SERVING, the IndexService
    NOT_SERVING) while the start-up Reconcile runs in the background, however
    large the collections; calls wait for it, then it turns SERVING. A reader
    (INDEX_ROLE=reader) takes no writer lock, runs no Reconcile, and serves
    at once."""
    writer = None if settings.reader else take_writer_lock(settings)
    store = store or build_store(settings, writer)
    ready = Readiness("the index is still reconciling its stores at start-up")
    servicer = IndexServicer(
        store, settings.max_items_per_upsert, settings.max_paths_per_hit, ready
    )
    running = start_server(
        [lambda s: index_pb2_grpc.add_IndexServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        **settings.server_options(),
        serving=False,
        live=True,
    )

    def reconcile_then_serve() -> None:
        if settings.reconcile_on_start and not settings.reader:
            try:
                store.reconcile()  # logs what it found and did
            except errors.ServiceError as exc:  # a backend down at start is not fatal
                logs.event(log, "reconcile.skipped", logging.WARNING, reason=exc.message)
        ready.set()
        running.set_serving(True)
        store.meta.load_at_start()

    threading.Thread(target=reconcile_then_serve, name="start-up-reconcile", daemon=True).start()
    running.on_stop.append(store.vectors.close)
    running.on_stop.append(store.meta.dispose)
    if writer is not None:
        running.on_stop.append(writer.release)
    logs.event(
        log,
        "serving",
        service=SERVICE_NAME,
        role=settings.role,
        port=running.port,
        milvus=settings.milvus_uri,
        database=store.meta.safe_url,
        index=settings.milvus_index_type,
        metric=settings.milvus_metric,
    )
    return running
