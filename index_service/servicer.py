"""gRPC layer of the index: translates messages to IndexStore calls."""

from __future__ import annotations

import asyncio

import grpc

from imagesearch import errors
from imagesearch.readiness import Readiness
from imagesearch.v1 import common_pb2, index_pb2, index_pb2_grpc
from index_service.plan import Item
from index_service.rows import READY, SERVER, STREAM, ImageRow
from index_service.store import IndexStore

STATUS = {READY: index_pb2.IMAGE_STATUS_READY}
MAX_THUMBNAILS_LISTED = 1000  # ids per GetThumbnails; images listed per Reconcile


def record(row: ImageRow, collection: str = "") -> index_pb2.ImageRecord:
    return index_pb2.ImageRecord(
        collection=collection,
        image_id=row.image_id,
        path=row.paths[0] if row.paths else "",
        paths=row.paths,
        server_paths=row.server_paths,
        size=row.size,
        width=row.width,
        height=row.height,
        sha256=row.sha256,
        model=row.model,
        status=STATUS.get(row.status, index_pb2.IMAGE_STATUS_PENDING),
        created_at_ms=row.created_at_ms,
        updated_at_ms=row.updated_at_ms,
    )


class IndexServicer(index_pb2_grpc.IndexServiceServicer):
    def __init__(
        self,
        store: IndexStore,
        max_items: int,
        max_paths: int = 16,
        ready: Readiness | None = None,
    ) -> None:
        self.store = store
        self.max_items = max_items
        self.max_paths = max_paths
        # Calls wait while the start-up Reconcile runs.
        self.ready = ready or Readiness("the index is starting", ready=True)

    def Upsert(
        self, request: index_pb2.IndexServiceUpsertRequest, context: grpc.ServicerContext
    ) -> index_pb2.IndexServiceUpsertResponse:
        self.ready.wait(context)
        if len(request.items) > self.max_items:
            raise errors.invalid_argument(
                f"{len(request.items)} items in one Upsert, limit {self.max_items} "
                "(INDEX_MAX_ITEMS_PER_UPSERT); split the request"
            )
        items = [
            Item(
                it.sha256,
                it.path,
                it.size,
                it.width,
                it.height,
                it.vector,
                SERVER if it.origin == index_pb2.PATH_ORIGIN_SERVER else STREAM,
                it.thumbnail,
                it.text_vector,
            )
            for it in request.items
        ]
        results = self.store.upsert(
            request.collection,
            request.model,
            request.dim,
            items,
            request.text_model,
            request.text_dim,
        )
        out = [
            index_pb2.UpsertResult(
                image_id=r.image_id,
                outcome=index_pb2.UPSERT_OUTCOME_REFUSED
                if r.refused
                else index_pb2.UPSERT_OUTCOME_DUPLICATE
                if r.duplicate
                else index_pb2.UPSERT_OUTCOME_INDEXED,
                path_added=r.path_added,
                error=r.refused,
                code=errors.status_code_number(r.code) if r.refused else 0,
            )
            for r in results
        ]
        dups = sum(r.duplicate for r in results)
        refused = sum(bool(r.refused) for r in results)
        return index_pb2.IndexServiceUpsertResponse(
            results=out, indexed=len(results) - dups - refused, duplicates=dups
        )

    async def Search(
        self, request: index_pb2.IndexServiceSearchRequest, context: grpc.ServicerContext
    ) -> index_pb2.IndexServiceSearchResponse:
        """Served on the event loop (imagesearch.bridge): a search whose
        rows are cached takes no thread (IndexStore.search_async)."""
        if not self.ready.is_set():
            await asyncio.to_thread(self.ready.wait, context)
        if request.text_vectors:
            if request.vectors or request.image_ids:
                raise errors.invalid_argument(
                    "a Search is by words (text_vectors) or by images (vectors, image_ids), "
                    "not both"
                )
            results = await asyncio.to_thread(
                self.store.search_text,
                request.collection,
                list(request.text_vectors),
                request.top_k,
                request.path_prefix,
                request.min_score,
                request.text_model,
                request.expand,
            )
        else:
            results = await self.store.search_async(
                request.collection,
                list(request.vectors),
                list(request.image_ids),
                request.top_k,
                request.path_prefix,
                request.min_score,
                request.model,
            )
        return index_pb2.IndexServiceSearchResponse(
            results=[
                index_pb2.IndexHits(
                    hits=[
                        index_pb2.IndexHit(
                            image_id=h.image_id,
                            path=h.row.paths[0] if h.row.paths else "",
                            paths=h.row.paths[: self.max_paths],
                            more_paths=max(0, len(h.row.paths) - self.max_paths),
                            distance=h.distance,
                            score=h.score,
                            width=h.row.width,
                            height=h.row.height,
                        )
                        for h in hits
                    ]
                )
                for hits in results
            ]
        )

    def Get(
        self, request: index_pb2.IndexServiceGetRequest, context: grpc.ServicerContext
    ) -> index_pb2.IndexServiceGetResponse:
        self.ready.wait(context)
        rows = self.store.get(
            request.collection,
            list(request.image_ids),
            list(request.paths),
            request.include_pending,
        )
        return index_pb2.IndexServiceGetResponse(records=[record(r) for r in rows])

    def Delete(
        self, request: index_pb2.IndexServiceDeleteRequest, context: grpc.ServicerContext
    ) -> index_pb2.IndexServiceDeleteResponse:
        self.ready.wait(context)
        deleted, paths = self.store.delete(
            request.collection, list(request.image_ids), list(request.paths), request.path_prefix
        )
        return index_pb2.IndexServiceDeleteResponse(deleted=deleted, paths_removed=paths)

    def Count(
        self, request: index_pb2.IndexServiceCountRequest, context: grpc.ServicerContext
    ) -> index_pb2.IndexServiceCountResponse:
        self.ready.wait(context)
        ready, pending = self.store.count(request.collection)
        return index_pb2.IndexServiceCountResponse(count=ready, pending=pending)

    def ListCollections(
        self, request: index_pb2.IndexServiceListCollectionsRequest, context: grpc.ServicerContext
    ) -> index_pb2.IndexServiceListCollectionsResponse:
        self.ready.wait(context)
        return index_pb2.IndexServiceListCollectionsResponse(
            collections=[
                common_pb2.CollectionInfo(
                    name=row.name,
                    model=row.model,
                    dim=row.dim,
                    metric=row.metric,
                    index_type=row.index_type,
                    count=ready,
                    pending=pending,
                    text_model=row.text_model,
                    text_dim=row.text_dim,
                )
                for row, ready, pending in self.store.list_collections()
            ]
        )

    def DropCollection(
        self, request: index_pb2.IndexServiceDropCollectionRequest, context: grpc.ServicerContext
    ) -> index_pb2.IndexServiceDropCollectionResponse:
        self.ready.wait(context)
        return index_pb2.IndexServiceDropCollectionResponse(
            dropped=self.store.drop(request.collection)
        )

    def Reconcile(
        self, request: index_pb2.IndexServiceReconcileRequest, context: grpc.ServicerContext
    ) -> index_pb2.IndexServiceReconcileResponse:
        self.ready.wait(context)
        report = self.store.reconcile(
            request.collection,
            min(max(request.thumbnails_limit, 0), MAX_THUMBNAILS_LISTED),
            min(max(request.text_limit, 0), MAX_THUMBNAILS_LISTED),
        )
        return index_pb2.IndexServiceReconcileResponse(
            marked_ready=report.marked_ready,
            orphan_vectors_deleted=report.orphan_vectors_deleted,
            needs_reembedding=[record(r, name) for name, r in report.needs_reembedding],
            missing_vectors=report.missing_vectors,
            needs_thumbnail=[record(r, name) for name, r in report.needs_thumbnail],
            thumbnails_missing=report.thumbnails_missing,
            needs_text=[record(r, name) for name, r in report.needs_text],
            text_missing=report.text_missing,
        )

    def GetThumbnails(
        self, request: index_pb2.IndexServiceGetThumbnailsRequest, context: grpc.ServicerContext
    ) -> index_pb2.IndexServiceGetThumbnailsResponse:
        self.ready.wait(context)
        if len(request.image_ids) > MAX_THUMBNAILS_LISTED:
            raise errors.invalid_argument(
                f"{len(request.image_ids)} ids in one GetThumbnails, limit {MAX_THUMBNAILS_LISTED}"
            )
        found = self.store.thumbnails(request.collection, list(request.image_ids))
        return index_pb2.IndexServiceGetThumbnailsResponse(
            thumbnails=[index_pb2.Thumbnail(image_id=i, data=d) for i, d in found.items()]
        )
