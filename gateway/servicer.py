"""gRPC layer of the gateway: validates requests, calls the orchestrator,
the job manager and the backends, and builds responses."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from gateway.clients import Backends
from gateway.deadline import Deadline
from gateway.jobs import JobManager, JobState
from gateway.orchestrator import Ingestor, Outcome, Result, Source
from gateway.paths import AllowedRoots
from gateway.settings import GatewaySettings
from imagesearch import errors
from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc, index_pb2

M = TypeVar("M", bound=Message)

JOB_STATES = {
    "pending": gateway_pb2.JOB_STATE_PENDING,
    "running": gateway_pb2.JOB_STATE_RUNNING,
    "succeeded": gateway_pb2.JOB_STATE_SUCCEEDED,
    "failed": gateway_pb2.JOB_STATE_FAILED,
    "canceled": gateway_pb2.JOB_STATE_CANCELED,
}


def convert(message: Message, cls: type[M]) -> M:
    """The same fields as another message type: public Gateway requests and
    responses and their internal Index twins share field numbers."""
    return cls.FromString(message.SerializeToString())


def code_number(stored: object) -> int:
    """A job error's code as saved (a status name; numbers in older files)."""
    text = str(stored)
    if text.isdigit():
        return int(text)
    return errors.status_code_number(grpc.StatusCode[text])


def job_message(job: JobState) -> gateway_pb2.Job:
    return gateway_pb2.Job(
        job_id=job.job_id,
        state=JOB_STATES[job.state],
        total=job.total,
        done=job.done,
        indexed=job.indexed,
        duplicates=job.duplicates,
        failed=job.failed,
        errors=[
            gateway_pb2.FileError(
                path=str(e["path"]), reason=str(e["reason"]), code=code_number(e["code"])
            )
            for e in job.errors
        ],
        collection=job.collection,
        folder=job.folder,
        recursive=job.recursive,
        message=job.message,
        created_at_ms=job.created_at_ms,
        updated_at_ms=job.updated_at_ms,
    )


def hit_message(h: index_pb2.IndexHit) -> gateway_pb2.Hit:
    return gateway_pb2.Hit(
        image_id=h.image_id,
        path=h.path,
        paths=h.paths,
        distance=h.distance,
        score=h.score,
        width=h.width,
        height=h.height,
    )


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        settings: GatewaySettings,
        backends: Backends,
        ingestor: Ingestor,
        jobs: JobManager,
        roots: AllowedRoots,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.ingestor = ingestor
        self.jobs = jobs
        self.roots = roots

    def _collection(self, name: str) -> str:
        return name or self.settings.default_collection

    # -- search ----------------------------------------------------------

    def _query_bytes(self, kind: str, value: object) -> bytes:
        if kind == "image":
            assert isinstance(value, bytes)
            if not value:
                raise errors.invalid_argument("the query image is empty (0 bytes)")
            return value
        assert isinstance(value, str)
        real = self.roots.resolve(value)
        if not real.is_file():
            raise errors.not_found(f"{value}: no such file on the gateway's machine")
        self.ingestor.limit.check(value, real.stat().st_size)
        return real.read_bytes()

    def Search(
        self, request: gateway_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.SearchResponse:
        collection = self._collection(request.collection)
        top_k = request.top_k or self.settings.default_top_k
        if not 1 <= top_k <= 1000:
            raise errors.invalid_argument(f"top_k must be between 1 and 1000, got {top_k}")
        single = request.WhichOneof("query")
        queries: list[tuple[str, object]] = []
        if single is not None:
            queries.append((single, getattr(request, single)))
        for q in request.queries:
            kind = q.WhichOneof("query")
            if kind is None:
                raise errors.invalid_argument("a query in `queries` has no image, image_id or path")
            queries.append((kind, getattr(q, kind)))
        if not queries:
            raise errors.invalid_argument("Search needs an image, image_id or path (or `queries`)")

        images: list[tuple[int, bytes]] = []
        stored: list[tuple[int, int]] = []
        for pos, (kind, value) in enumerate(queries):
            if kind == "image_id":
                assert isinstance(value, int)
                stored.append((pos, value))
            else:
                images.append((pos, self._query_bytes(kind, value)))
        deadline = Deadline.of(context)
        model_id = ""
        vectors: list[bytes] = []
        if images:
            model_id, embedded = self.backends.embed(
                [(f"query #{p}", data) for p, data in images], deadline
            )
            for emb in embedded:
                if emb.error:
                    code = emb.error_code
                    raise errors.ServiceError(
                        grpc.StatusCode.INVALID_ARGUMENT if code == grpc.StatusCode.OK else code,
                        emb.error,
                    )
                vectors.append(emb.vector)
        response = self.backends.index_call(
            "Search",
            index_pb2.IndexServiceSearchRequest(
                collection=collection,
                vectors=vectors,
                image_ids=[iid for _, iid in stored],
                top_k=top_k,
                path_prefix=request.path_prefix,
                min_score=request.min_score,
                model=model_id,
            ),
            deadline,
        )
        order = [p for p, _ in images] + [p for p, _ in stored]
        by_position = dict(zip(order, response.results, strict=True))
        results = [
            gateway_pb2.QueryResult(hits=[hit_message(h) for h in by_position[p].hits])
            for p in range(len(queries))
        ]
        if single is not None:
            return gateway_pb2.SearchResponse(hits=results[0].hits, results=results[1:])
        return gateway_pb2.SearchResponse(results=results)

    # -- streaming ingest --------------------------------------------------

    def _images(
        self, requests: Iterator[gateway_pb2.IndexImagesRequest]
    ) -> Iterator[tuple[str, Source]]:
        """Reassembles chunked images: yields (collection, source) per image."""
        collection = ""
        name, size, count = "", 0, 0
        parts: list[bytes] = []
        oversized = False
        refusal = errors.resource_exhausted("")
        for msg in requests:
            collection = collection or msg.collection
            if not parts and not oversized:
                count += 1
                name = msg.name or f"image #{count}"
            size += len(msg.data)
            if not oversized:
                try:
                    self.ingestor.limit.check(name, size)
                    parts.append(msg.data)
                except errors.ServiceError as exc:
                    oversized, parts, refusal = True, [], exc
            if msg.more_chunks:
                continue
            if oversized:
                yield collection, Source.failed(refusal, name)
            else:
                yield collection, Source(name, b"".join(parts))
            name, parts, size, oversized = "", [], 0, False
        if parts or oversized:
            raise errors.invalid_argument(
                f"the stream ended inside image {name!r} (its last chunk had more_chunks=true)"
            )

    def IndexImages(
        self,
        request_iterator: Iterator[gateway_pb2.IndexImagesRequest],
        context: grpc.ServicerContext,
    ) -> gateway_pb2.IndexImagesResponse:
        collection = ""
        deadline = Deadline.of(context)
        batch: list[Source] = []
        pending: list[Future[list[Result]]] = []
        results: list[Result] = []
        with ThreadPoolExecutor(self.settings.job_concurrency, thread_name_prefix="stream") as pool:

            def flush() -> None:
                pending.append(pool.submit(self.ingestor.ingest, collection, list(batch), deadline))
                batch.clear()
                while len(pending) > self.settings.job_concurrency:
                    results.extend(pending.pop(0).result())

            for coll, source in self._images(request_iterator):
                collection = collection or self._collection(coll)
                batch.append(source)
                if len(batch) >= self.settings.embed_batch:
                    flush()
            if batch:
                flush()
            for fut in pending:
                results.extend(fut.result())
        response = gateway_pb2.IndexImagesResponse()
        for r in results:
            if r.outcome is Outcome.FAILED:
                response.failed += 1
                response.errors.append(
                    gateway_pb2.FileError(
                        path=r.name, reason=r.reason, code=errors.status_code_number(r.code)
                    )
                )
                continue
            duplicate = r.outcome is Outcome.DUPLICATE
            response.duplicates += int(duplicate)
            response.indexed += int(not duplicate)
            response.images.append(
                gateway_pb2.IndexedImage(name=r.name, image_id=r.image_id, duplicate=duplicate)
            )
        return response

    # -- jobs ------------------------------------------------------------

    def StartIndexJob(
        self, request: gateway_pb2.StartIndexJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.StartIndexJobResponse:
        job = self.jobs.start(
            self._collection(request.collection), request.folder, request.recursive
        )
        return gateway_pb2.StartIndexJobResponse(job=job_message(job))

    def WatchJob(
        self, request: gateway_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.WatchJobResponse]:
        for job in self.jobs.watch(request.job_id, context.is_active):
            yield gateway_pb2.WatchJobResponse(job=job_message(job))

    def GetJob(
        self, request: gateway_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetJobResponse:
        return gateway_pb2.GetJobResponse(job=job_message(self.jobs.get(request.job_id)))

    def ListJobs(
        self, request: gateway_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListJobsResponse:
        return gateway_pb2.ListJobsResponse(
            jobs=[job_message(j) for j in self.jobs.list_jobs(request.collection)]
        )

    def CancelJob(
        self, request: gateway_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CancelJobResponse:
        return gateway_pb2.CancelJobResponse(job=job_message(self.jobs.cancel(request.job_id)))

    def ResumeJob(
        self, request: gateway_pb2.ResumeJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ResumeJobResponse:
        return gateway_pb2.ResumeJobResponse(job=job_message(self.jobs.resume(request.job_id)))

    # -- collections (forwarded to the index) ----------------------------

    def Count(
        self, request: gateway_pb2.CountRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CountResponse:
        forwarded = index_pb2.IndexServiceCountRequest(
            collection=self._collection(request.collection)
        )
        response = self.backends.index_call("Count", forwarded, Deadline.of(context))
        return convert(response, gateway_pb2.CountResponse)

    def Delete(
        self, request: gateway_pb2.DeleteRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.DeleteResponse:
        forwarded = convert(request, index_pb2.IndexServiceDeleteRequest)
        forwarded.collection = self._collection(request.collection)
        response = self.backends.index_call("Delete", forwarded, Deadline.of(context))
        return convert(response, gateway_pb2.DeleteResponse)

    def DropCollection(
        self, request: gateway_pb2.DropCollectionRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.DropCollectionResponse:
        if not request.collection:
            raise errors.invalid_argument("DropCollection needs the collection's name")
        forwarded = convert(request, index_pb2.IndexServiceDropCollectionRequest)
        response = self.backends.index_call("DropCollection", forwarded, Deadline.of(context))
        return convert(response, gateway_pb2.DropCollectionResponse)

    def ListCollections(
        self, request: gateway_pb2.ListCollectionsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListCollectionsResponse:
        forwarded = convert(request, index_pb2.IndexServiceListCollectionsRequest)
        response = self.backends.index_call("ListCollections", forwarded, Deadline.of(context))
        return convert(response, gateway_pb2.ListCollectionsResponse)
