"""gRPC layer of the gateway: validates requests, calls the orchestrator,
the job manager and the backends, and builds responses."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import grpc
from google.protobuf.message import Message

from gateway.auth import refuse_below
from gateway.budget import ByteBudget
from gateway.clients import Backends
from gateway.deadline import Deadline
from gateway.jobs import JobManager
from gateway.orchestrator import Ingestor, Outcome, Result, Source
from gateway.paths import AllowedRoots
from gateway.repair import reconcile
from gateway.settings import GatewaySettings
from gateway.words import search_by_words
from imagesearch import errors, ids, naming
from imagesearch.rpcs import Role
from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc, index_pb2

M = TypeVar("M", bound=Message)


@dataclass
class StreamHeader:
    """What the first message of an IndexImages stream says for the whole stream."""

    seen: bool = False
    collection: str = ""
    return_images: bool = False
    model: str = ""


def convert(message: Message, cls: type[M]) -> M:
    """The same fields as another message type: public Gateway requests and
    responses and their internal Index twins share field numbers."""
    return cls.FromString(message.SerializeToString())


def best_per_image(views: Sequence[index_pb2.IndexHits], top_k: int) -> list[index_pb2.IndexHit]:
    """The hits of several views of one query (its rotations), each stored
    image once with its best score, best first, at most ``top_k``."""
    if len(views) == 1:
        return list(views[0].hits)
    best: dict[int, index_pb2.IndexHit] = {}
    for view in views:
        for hit in view.hits:
            kept = best.get(hit.image_id)
            if kept is None or hit.score > kept.score:
                best[hit.image_id] = hit
    return sorted(best.values(), key=lambda h: (-h.score, h.distance))[:top_k]


def hit_message(h: index_pb2.IndexHit) -> gateway_pb2.Hit:
    return gateway_pb2.Hit(
        image_id=h.image_id,
        path=h.path,
        paths=h.paths,
        more_paths=h.more_paths,
        distance=h.distance,
        score=h.score,
        width=h.width,
        height=h.height,
    )


def views_of(any_rotation: bool) -> int:
    """Vectors per image query: the image as given, and with ``any_rotation``
    also turned 90, 180 and 270 degrees."""
    return 4 if any_rotation else 1


class Query(NamedTuple):
    """One query of a Search: its kind (image, image_id, path), the value and
    the text that composes with it."""

    kind: str
    value: object
    text: str


WORDS = "words"  # a query that is a text alone: search by words (gateway/words.py)


def parse_queries(request: gateway_pb2.SearchRequest, max_queries: int) -> list[Query]:
    """The queries of a Search (the single one first, then ``queries``),
    INVALID_ARGUMENT for any that cannot be answered as sent."""
    queries: list[Query] = []
    single = request.WhichOneof("query")
    if single is not None:
        queries.append(Query(single, getattr(request, single), request.text))
    elif request.text:
        queries.append(Query(WORDS, request.text, request.text))
    for q in request.queries:
        kind = q.WhichOneof("query")
        if kind is None and not q.text:
            raise errors.invalid_argument(
                "a query in `queries` has no image, image_id, path or text"
            )
        queries.append(Query(kind or WORDS, getattr(q, kind) if kind else q.text, q.text))
    if not queries:
        raise errors.invalid_argument(
            "Search needs an image, image_id, path or text (or `queries`)"
        )
    if any(q.kind == WORDS for q in queries):
        if any(q.kind != WORDS for q in queries):
            raise errors.invalid_argument(
                "a Search is by words or by images, not both: send them in separate calls"
            )
        if request.any_rotation:
            raise errors.invalid_argument("any_rotation is for image queries, not words")
    if len(queries) > max_queries:
        raise errors.invalid_argument(
            f"{len(queries)} queries in one Search, limit {max_queries} "
            "(GATEWAY_MAX_QUERIES); split them over several calls"
        )
    if any(q.text for q in queries):
        if request.any_rotation:
            raise errors.invalid_argument(
                "any_rotation cannot go with a text (a composed query); leave one out"
            )
        if any(q.text and q.kind == "image_id" for q in queries):
            raise errors.invalid_argument(
                "a text composes with a query image: send the image or its path, "
                "not a stored image_id"
            )
    return queries


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        settings: GatewaySettings,
        backends: Backends,
        ingestor: Ingestor,
        jobs: JobManager,
        roots: AllowedRoots,
        inflight: ByteBudget | None = None,
        caller_role: Callable[[grpc.ServicerContext], Role] | None = None,
    ) -> None:
        """``caller_role``: the role of a call's token (gateway.auth); none:
        the gateway asks for no token, and every caller may do everything."""
        self.settings = settings
        self.caller_role = caller_role or (lambda _context: Role.ADMIN)
        # The gateway's total, shared with jobs.
        self.inflight = inflight or ByteBudget(settings.max_total_inflight_bytes)
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
        try:
            return self.ingestor.limit.read(self.roots, str(real), value)
        except FileNotFoundError:
            raise errors.not_found(f"{value}: no such file on the gateway's machine") from None
        except OSError as exc:
            raise errors.not_found(f"{value}: cannot read ({exc.strerror or exc})") from None

    @contextmanager
    def _files_held(self, request: gateway_pb2.SearchRequest) -> Iterator[None]:
        """The files that path queries will read, charged to the gateway's
        byte budget (GATEWAY_MAX_TOTAL_INFLIGHT_MB) like streamed images, for
        as long as the call holds them; their sizes together may not pass one
        call's budget (GATEWAY_MAX_INFLIGHT_MB)."""
        paths = [q.path for q in request.queries if q.WhichOneof("query") == "path"]
        if request.WhichOneof("query") == "path":
            paths.append(request.path)
        total = 0
        for raw in paths[: self.settings.max_queries]:
            try:
                total += os.stat(self.roots.resolve(raw)).st_size
            except OSError:
                continue  # reading it says what is wrong
        if total > self.settings.max_inflight_bytes:
            raise errors.invalid_argument(
                f"the files of this Search's path queries add up to {total} bytes, over one "
                f"call's limit of {self.settings.max_inflight_bytes} (GATEWAY_MAX_INFLIGHT_MB); "
                "send fewer per call"
            )
        taken = self.inflight.acquire(total) if total else 0
        try:
            yield
        finally:
            if taken:
                self.inflight.release(taken)

    def Search(
        self, request: gateway_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.SearchResponse:
        with self._files_held(request):
            return self._search(request, context)

    def _search(
        self, request: gateway_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.SearchResponse:
        collection = self._collection(request.collection)
        top_k = request.top_k or self.settings.default_top_k
        if not 1 <= top_k <= 1000:
            raise errors.invalid_argument(f"top_k must be between 1 and 1000, got {top_k}")
        queries = parse_queries(request, self.settings.max_queries)
        if queries[0].kind == WORDS:
            return self._search_words(collection, queries, request, top_k, Deadline.of(context))
        images: list[tuple[int, bytes, str]] = []  # position, bytes, text
        stored: list[tuple[int, int]] = []  # position, image id
        for pos, q in enumerate(queries):
            if q.kind == "image_id":
                assert isinstance(q.value, int)
                stored.append((pos, q.value))
            else:
                images.append((pos, self._query_bytes(q.kind, q.value), q.text))
        deadline = Deadline.of(context)
        model_id, vectors = (
            self._embed_queries(collection, images, request.any_rotation, deadline)
            if images
            else ("", [])
        )
        response = self.backends.index_read_or_writer(
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
        views = views_of(request.any_rotation)
        found = list(response.results)
        by_position: dict[int, list[index_pb2.IndexHit]] = {}
        for n, (p, _, _) in enumerate(images):
            by_position[p] = best_per_image(found[n * views : (n + 1) * views], top_k)
        for n, (p, _) in enumerate(stored):
            by_position[p] = list(found[len(images) * views + n].hits)
        results = [
            gateway_pb2.QueryResult(hits=[hit_message(h) for h in by_position[p]])
            for p in range(len(queries))
        ]
        if request.WhichOneof("query") is not None:
            return gateway_pb2.SearchResponse(hits=results[0].hits, results=results[1:])
        return gateway_pb2.SearchResponse(results=results)

    def _search_words(
        self,
        collection: str,
        queries: list[Query],
        request: gateway_pb2.SearchRequest,
        top_k: int,
        deadline: Deadline,
    ) -> gateway_pb2.SearchResponse:
        found = search_by_words(
            self.backends,
            collection,
            [q.text for q in queries],
            top_k,
            request.path_prefix,
            request.min_score,
            self.settings.text_expand,
            deadline,
        )
        results = [gateway_pb2.QueryResult(hits=[hit_message(h) for h in r.hits]) for r in found]
        if request.text:
            return gateway_pb2.SearchResponse(hits=results[0].hits, results=results[1:])
        return gateway_pb2.SearchResponse(results=results)

    def _embed_queries(
        self,
        collection: str,
        images: list[tuple[int, bytes, str]],
        any_rotation: bool,
        deadline: Deadline,
    ) -> tuple[str, list[bytes]]:
        """The model id and the vectors of the query images: one each, or four
        (as given, then turned 90, 180, 270 degrees) with ``any_rotation``."""
        embedder = self.backends.embedder_for(collection, deadline)
        if any(text for _, _, text in images):
            model = self.backends.model_of(embedder, deadline)
            if not model.composes:
                raise errors.failed_precondition(
                    f"collection {collection!r} is searched with model {model.model}, "
                    "which cannot compose a text with an image; search without text, or "
                    "index the images into a collection of a composing model "
                    "(imgsearch index --model tirg_css)"
                )
        model_id, embedded = self.backends.embed(
            [(f"query #{p}", data) for p, data, _ in images],
            deadline,
            rotations=any_rotation,
            texts=[text for _, _, text in images],
            embedder=embedder,
        )
        vectors: list[bytes] = []
        for emb in embedded:
            if emb.error:
                code = emb.error_code
                raise errors.ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT if code == grpc.StatusCode.OK else code,
                    emb.error,
                )
            turned = list(emb.rotated_vectors) if any_rotation else []
            if len(turned) != views_of(any_rotation) - 1:
                raise errors.unavailable(
                    "the embedder did not return the rotated query vectors (an older "
                    "version?); retry without any_rotation or update it"
                )
            vectors += [emb.vector, *turned]
        return model_id, vectors

    # -- streaming ingest --------------------------------------------------

    def _images(
        self, requests: Iterator[gateway_pb2.IndexImagesRequest], first: StreamHeader
    ) -> Iterator[Source]:
        """Reassembles chunked images: yields one source per image, and fills
        ``first`` from the stream's first message."""
        name, size, count = "", 0, 0
        parts: list[bytes] = []
        refusal: errors.ServiceError | None = None  # the image passed a limit
        for msg in requests:
            if not first.seen:
                first.seen = True
                first.collection = msg.collection
                first.return_images = msg.return_images
                first.model = msg.model
            if not parts and refusal is None:
                count += 1
                name = msg.name or f"image #{count}"
            size += len(msg.data)
            if refusal is None:
                try:
                    self.ingestor.limit.check(name, size)
                    parts.append(msg.data)
                except errors.ServiceError as exc:
                    parts, refusal = [], exc
            if msg.more_chunks:
                continue
            if refusal is not None:
                yield Source.failed(refusal, name)
            else:
                yield Source(name, b"".join(parts))
            name, parts, size, refusal = "", [], 0, None
        if parts or refusal is not None:
            raise errors.invalid_argument(
                f"the stream ended inside image {name!r} (its last chunk had more_chunks=true)"
            )

    def IndexImages(
        self,
        request_iterator: Iterator[gateway_pb2.IndexImagesRequest],
        context: grpc.ServicerContext,
    ) -> gateway_pb2.IndexImagesResponse:
        s = self.settings
        deadline = Deadline.of(context)
        first = StreamHeader()
        budget = ByteBudget(s.max_inflight_bytes, self.inflight)
        batch_cap = max(1, s.max_inflight_bytes // s.job_concurrency)
        batch: list[Source] = []
        batch_bytes = 0
        pending: list[Future[list[Result]]] = []
        results: list[Result] = []

        def run(collection: str, sources: list[Source], taken: int) -> list[Result]:
            try:
                return self.ingestor.ingest(collection, sources, deadline, model=first.model)
            finally:
                budget.release(taken)

        with ThreadPoolExecutor(s.job_concurrency, thread_name_prefix="stream") as pool:

            def flush() -> None:
                nonlocal batch_bytes
                while len(pending) >= s.job_concurrency:
                    results.extend(pending.pop(0).result())
                taken = budget.acquire(batch_bytes)  # waits for earlier batches
                collection = self._collection(first.collection)
                pending.append(pool.submit(run, collection, list(batch), taken))
                batch.clear()
                batch_bytes = 0

            for source in self._images(request_iterator, first):
                if batch and batch_bytes + len(source.data) > batch_cap:
                    flush()
                batch.append(source)
                batch_bytes += len(source.data)
                if len(batch) >= s.embed_batch:
                    flush()
            if batch:
                flush()
            for fut in pending:
                results.extend(fut.result())
        response = gateway_pb2.IndexImagesResponse()
        for r in results:
            if r.outcome is Outcome.FAILED:
                response.failed += 1
                if len(response.errors) < s.max_errors_kept:
                    response.errors.append(
                        gateway_pb2.FileError(
                            path=r.name, reason=r.reason, code=errors.status_code_number(r.code)
                        )
                    )
                else:
                    response.errors_omitted += 1
                continue
            duplicate = r.outcome is Outcome.DUPLICATE
            response.duplicates += int(duplicate)
            response.indexed += int(not duplicate)
            if first.return_images:
                response.images.append(
                    gateway_pb2.IndexedImage(name=r.name, image_id=r.image_id, duplicate=duplicate)
                )
        return response

    # -- jobs ------------------------------------------------------------

    def StartIndexJob(
        self, request: gateway_pb2.StartIndexJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.StartIndexJobResponse:
        collection = naming.check_collection(self._collection(request.collection))
        if request.model:  # refused now, not by every batch of the job
            self.backends.embedder_for(collection, Deadline.of(context), request.model)
        job = self.jobs.start(collection, request.folder, request.recursive, request.model)
        return gateway_pb2.StartIndexJobResponse(job=job.view().to_proto())

    def WatchJob(
        self, request: gateway_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.WatchJobResponse]:
        for job in self.jobs.watch(request.job_id, context.is_active):
            yield gateway_pb2.WatchJobResponse(job=job.view().to_proto())

    def GetJob(
        self, request: gateway_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetJobResponse:
        return gateway_pb2.GetJobResponse(job=self.jobs.get(request.job_id).view().to_proto())

    def ListJobs(
        self, request: gateway_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListJobsResponse:
        jobs, token = self.jobs.list_jobs(request.collection, request.page_size, request.page_token)
        return gateway_pb2.ListJobsResponse(
            jobs=[j.view(with_errors=request.include_errors).to_proto() for j in jobs],
            next_page_token=token,
        )

    def CancelJob(
        self, request: gateway_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CancelJobResponse:
        return gateway_pb2.CancelJobResponse(job=self.jobs.cancel(request.job_id).view().to_proto())

    def ResumeJob(
        self, request: gateway_pb2.ResumeJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ResumeJobResponse:
        return gateway_pb2.ResumeJobResponse(job=self.jobs.resume(request.job_id).view().to_proto())

    def CheckAccess(
        self, request: gateway_pb2.CheckAccessRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CheckAccessResponse:
        role = self.caller_role(context)  # the auth hook has checked the read role
        if request.write:
            refuse_below(Role.WRITE, role, "writing (IndexImages, StartIndexJob, jobs)")
        return gateway_pb2.CheckAccessResponse(role=role.name.lower())

    # -- collections (forwarded to the index) ----------------------------

    def Count(
        self, request: gateway_pb2.CountRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.CountResponse:
        forwarded = index_pb2.IndexServiceCountRequest(
            collection=self._collection(request.collection)
        )
        response = self.backends.index_read("Count", forwarded, Deadline.of(context))
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
        self.backends.forget_collection(request.collection)
        return convert(response, gateway_pb2.DropCollectionResponse)

    def GetImage(
        self, request: gateway_pb2.GetImageRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetImageResponse:
        """Only a file a server job found, under the roots, with the indexed bytes."""
        collection = self._collection(request.collection)
        path = request.path
        if not path:
            raise errors.invalid_argument("GetImage needs the path of an indexed image")
        nothing = errors.not_found(
            f"{path}: no image that a server job indexed is stored under this path in "
            f"{collection!r}"
        )
        reply = self.backends.index_read(
            "Get",
            index_pb2.IndexServiceGetRequest(collection=collection, paths=[path]),
            Deadline.of(context),
        )
        record = next((r for r in reply.records if path in r.server_paths), None)
        if record is None:
            raise nothing
        try:
            data = self.ingestor.limit.read(self.roots, path)
        except OSError:
            raise errors.not_found(f"{path}: the file is gone from the gateway's machine") from None
        except errors.ServiceError as exc:
            if exc.code == grpc.StatusCode.PERMISSION_DENIED:  # the roots changed since
                raise nothing from None
            raise
        if ids.sha256(data).hex() != record.sha256:
            raise errors.failed_precondition(
                f"{path}: the file has changed since it was indexed; index it again"
            )
        return gateway_pb2.GetImageResponse(data=data, image_id=record.image_id, path=path)

    def GetThumbnail(
        self, request: gateway_pb2.GetThumbnailRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.GetThumbnailResponse:
        collection = self._collection(request.collection)
        reply = self.backends.index_read(
            "GetThumbnails",
            index_pb2.IndexServiceGetThumbnailsRequest(
                collection=collection, image_ids=[request.image_id]
            ),
            Deadline.of(context),
        )
        if not reply.thumbnails:
            raise errors.not_found(
                f"image {request.image_id} has no thumbnail in {collection!r}: it is not stored, "
                "or was indexed before thumbnails (Reconcile with backfill_thumbnails)"
            )
        return gateway_pb2.GetThumbnailResponse(
            data=reply.thumbnails[0].data, content_type="image/jpeg"
        )

    def Reconcile(
        self, request: gateway_pb2.ReconcileRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ReconcileResponse:
        return reconcile(
            self.backends,
            self.ingestor,
            self.roots,
            request,
            Deadline.of(context),
            self.settings.max_errors_kept,
            ByteBudget(self.settings.max_inflight_bytes, self.inflight),
        )

    def ListCollections(
        self, request: gateway_pb2.ListCollectionsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListCollectionsResponse:
        forwarded = convert(request, index_pb2.IndexServiceListCollectionsRequest)
        deadline = Deadline.of(context)
        response = self.backends.index_read("ListCollections", forwarded, deadline)
        listed = convert(response, gateway_pb2.ListCollectionsResponse)
        composing = self.backends.composing_models(deadline)
        for c in listed.collections:
            c.composes = c.model in composing
        return listed
