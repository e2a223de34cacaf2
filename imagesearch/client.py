"""The typed Python client of the Gateway (``imagesearch.v1.GatewayService``).

    from imagesearch.client import Client

    with Client("localhost:50051") as client:
        report = client.index_files(["photos/a.jpg", "photos/b.jpg"], collection="photos")
        hits = client.search(image=open("query.jpg", "rb").read(), collection="photos")

Every method takes a per-call ``timeout`` (default: the client's). Calls that
are safe to repeat are retried while the gateway answers UNAVAILABLE;
streams of images are retried batch by batch (re-indexing the same bytes is a
no-op). Every failure is raised as ``ImageSearchError`` with the gRPC code
and the server's sentence. The CLI and the HTTP face use this client; it
needs only grpcio and the generated stubs (no torch, Milvus or SQL).
"""

from __future__ import annotations

import copy
import enum
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagesearch.batching import byte_groups
from imagesearch.channels import make_channel
from imagesearch.errors import code_from_number, rpc_status, status_code_number
from imagesearch.rpcs import idempotent_methods
from imagesearch.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
CHUNK_BYTES = 1024 * 1024  # per stream message, under the gateway's 4 MiB default
T = TypeVar("T")


class ImageSearchError(Exception):
    """A call failed: ``code`` is the gRPC status, ``message`` the server's sentence."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _error(exc: grpc.RpcError) -> ImageSearchError:
    code, detail = rpc_status(exc)
    return ImageSearchError(code, detail or code.name.lower())


class JobState(enum.Enum):
    UNSPECIFIED = gateway_pb2.JOB_STATE_UNSPECIFIED
    PENDING = gateway_pb2.JOB_STATE_PENDING
    RUNNING = gateway_pb2.JOB_STATE_RUNNING
    SUCCEEDED = gateway_pb2.JOB_STATE_SUCCEEDED
    FAILED = gateway_pb2.JOB_STATE_FAILED
    CANCELED = gateway_pb2.JOB_STATE_CANCELED

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED)

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Hit:
    image_id: int
    path: str
    score: float
    distance: float
    width: int
    height: int
    paths: tuple[str, ...]  # the first ones (INDEX_MAX_PATHS_PER_HIT), oldest first
    more_paths: int = 0  # paths of this image beyond ``paths``

    @classmethod
    def from_proto(cls, h: gateway_pb2.Hit) -> Hit:
        return cls(
            h.image_id,
            h.path,
            h.score,
            h.distance,
            h.width,
            h.height,
            tuple(h.paths),
            h.more_paths,
        )


@dataclass(frozen=True)
class Query:
    """One query of ``search_many``: one of image, image_id and path, where
    ``text`` composes with an image or path (a collection of tirg_css); or
    ``text`` alone, a search by words."""

    image: bytes | None = None
    image_id: int | None = None
    path: str | None = None
    text: str = ""

    def to_proto(self) -> gateway_pb2.Query:
        given = [v is not None for v in (self.image, self.image_id, self.path)]
        if sum(given) == 0 and self.text:
            return gateway_pb2.Query(text=self.text)  # search by words
        if sum(given) != 1:
            raise ValueError("a Query needs exactly one of image, image_id or path, or a text")
        if self.image is not None:
            return gateway_pb2.Query(image=self.image, text=self.text)
        if self.image_id is not None:
            return gateway_pb2.Query(image_id=self.image_id, text=self.text)
        return gateway_pb2.Query(path=self.path, text=self.text)


@dataclass(frozen=True)
class FileError:
    path: str
    reason: str
    code: grpc.StatusCode

    @classmethod
    def from_proto(cls, e: gateway_pb2.FileError) -> FileError:
        return cls(e.path, e.reason, code_from_number(e.code))

    def to_proto(self) -> gateway_pb2.FileError:
        return gateway_pb2.FileError(
            path=self.path, reason=self.reason, code=status_code_number(self.code)
        )


@dataclass(frozen=True)
class Job:
    """A server-side folder job: the one record of it that clients see (the
    CLI's --json and the web face's JobOut are ``as_dict``)."""

    job_id: str
    state: JobState
    collection: str
    folder: str
    recursive: bool
    total: int
    done: int
    indexed: int
    duplicates: int
    failed: int
    message: str
    errors: tuple[FileError, ...]
    created_at_ms: int
    updated_at_ms: int
    model: str = ""  # the model it asked for a new collection
    walk_complete: bool = False  # total is final
    errors_omitted: int = 0  # file errors counted in `failed` but not listed in `errors`

    def as_dict(self) -> dict[str, Any]:
        """The job as JSON shows it: the state as its label, with
        ``terminal``; each file error as path, reason and status name."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["state"] = self.state.label
        out["terminal"] = self.state.terminal
        out["errors"] = [
            {"path": e.path, "reason": e.reason, "code": e.code.name} for e in self.errors
        ]
        return out

    @classmethod
    def from_proto(cls, j: gateway_pb2.Job) -> Job:
        return cls(
            j.job_id,
            JobState(j.state),
            j.collection,
            j.folder,
            j.recursive,
            j.total,
            j.done,
            j.indexed,
            j.duplicates,
            j.failed,
            j.message,
            tuple(FileError.from_proto(e) for e in j.errors),
            j.created_at_ms,
            j.updated_at_ms,
            j.model,
            j.walk_complete,
            j.errors_omitted,
        )

    def to_proto(self) -> gateway_pb2.Job:
        """The message the gateway sends (it builds this type from its record,
        so both ends of the wire spell the job once)."""
        return gateway_pb2.Job(
            job_id=self.job_id,
            state=self.state.value,
            collection=self.collection,
            folder=self.folder,
            recursive=self.recursive,
            total=self.total,
            done=self.done,
            indexed=self.indexed,
            duplicates=self.duplicates,
            failed=self.failed,
            message=self.message,
            errors=[e.to_proto() for e in self.errors],
            created_at_ms=self.created_at_ms,
            updated_at_ms=self.updated_at_ms,
            model=self.model,
            walk_complete=self.walk_complete,
            errors_omitted=self.errors_omitted,
        )


@dataclass
class IndexReport:
    """What a stream of images did: counts, per-file errors, ids by name."""

    files: int = 0
    indexed: int = 0
    duplicates: int = 0
    failed: int = 0
    errors: list[FileError] = field(default_factory=list)
    errors_omitted: int = 0  # failures the gateway counted but did not list
    image_ids: dict[str, int] = field(default_factory=dict)  # with return_images=True

    def add(self, reply: gateway_pb2.IndexImagesResponse, files: int) -> None:
        self.files += files
        self.indexed += reply.indexed
        self.duplicates += reply.duplicates
        self.failed += reply.failed
        self.errors += [FileError.from_proto(e) for e in reply.errors]
        self.errors_omitted += reply.errors_omitted
        self.image_ids.update({i.name: i.image_id for i in reply.images})

    def merge(self, other: IndexReport) -> None:
        self.files += other.files
        self.indexed += other.indexed
        self.duplicates += other.duplicates
        self.failed += other.failed
        self.errors += other.errors
        self.errors_omitted += other.errors_omitted
        self.image_ids.update(other.image_ids)


@dataclass(frozen=True)
class Count:
    count: int
    pending: int


@dataclass(frozen=True)
class Deleted:
    images: int
    paths: int


@dataclass(frozen=True)
class Reconciled:
    """What Reconcile found and did (see gateway.proto ReconcileResponse)."""

    marked_ready: int
    orphan_vectors_deleted: int
    missing_vectors: int
    reembedded: int
    unrepaired: int
    unrepaired_paths: tuple[str, ...]
    thumbnails_made: int = 0
    thumbnails_missing: int = 0  # ready images still without one
    text_made: int = 0
    text_missing: int = 0  # ready images still without a text vector


@dataclass(frozen=True)
class Collection:
    name: str
    model: str
    dim: int
    metric: str
    index_type: str
    count: int
    pending: int
    composes: bool = False  # its model takes a text change with the query image
    text_model: str = ""  # search by words: its text space ("": none)

    @classmethod
    def from_proto(cls, c: common_pb2.CollectionInfo) -> Collection:
        return cls(
            c.name,
            c.model,
            c.dim,
            c.metric,
            c.index_type,
            c.count,
            c.pending,
            c.composes,
            c.text_model,
        )


def image_requests(
    collection: str,
    images: Iterable[tuple[str, bytes]],
    return_images: bool = False,
    chunk: int = CHUNK_BYTES,
    model: str = "",
) -> Iterator[gateway_pb2.IndexImagesRequest]:
    """The IndexImages stream for ``(name, bytes)`` pairs, in chunks."""
    for name, data in images:
        parts = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
        for n, part in enumerate(parts):
            yield gateway_pb2.IndexImagesRequest(
                collection=collection,
                name=name if n == 0 else "",
                data=part,
                more_chunks=n < len(parts) - 1,
                return_images=return_images,
                model=model,
            )


class WatchStop:
    """Ends a ``Client.watch_job`` from another thread: ``set()`` cancels the
    stream it is waiting on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._call: Any = None

    def attach(self, call: Any) -> None:
        with self._lock:
            self._call = call
            if self._set:
                call.cancel()

    def set(self) -> None:
        with self._lock:
            self._set = True
            if self._call is not None:
                self._call.cancel()

    def is_set(self) -> bool:
        with self._lock:
            return self._set


class Client:
    """A connection to one gateway. Thread-safe; close it (or use ``with``)."""

    def __init__(
        self,
        address: str = "localhost:50051",
        *,
        tls: bool = False,
        ca_file: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        max_message_mb: int = 64,
    ) -> None:
        """``tls``: connect over TLS (the system's roots, or ``ca_file``).
        ``token``: sent as ``authorization: Bearer TOKEN``. ``timeout``: the
        default deadline of a call, in seconds. ``retries``: tries of a call
        answered UNAVAILABLE."""
        credentials = None
        if tls or ca_file:
            roots = Path(ca_file).read_bytes() if ca_file else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        self.address = address
        self.timeout = timeout
        self.retries = max(1, retries)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._channel = make_channel(
            address,
            [],
            max_message_bytes=max_message_mb * 1024 * 1024,
            retry_attempts=self.retries,
            methods=[(SERVICE, m) for m in idempotent_methods()],
            credentials=credentials,
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def as_caller(self, authorization: str | None) -> Client:
        """This client (the same connection) sending ``authorization`` (a whole
        header value, e.g. ``Bearer TOKEN``) instead of its own token: how a
        proxy such as the HTTP face forwards its caller's credentials. Close
        only the original."""
        if not authorization:
            return self
        if not authorization.isascii() or not authorization.isprintable():
            raise ImageSearchError(
                grpc.StatusCode.UNAUTHENTICATED,
                "the Authorization header must be printable ASCII (Bearer TOKEN)",
            )
        view = copy.copy(self)
        view._metadata = (("authorization", authorization),)
        return view

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def check_access(self, write: bool, *, timeout: float | None = 10.0) -> None:
        """Raises the gateway's UNAUTHENTICATED or PERMISSION_DENIED (or
        UNAVAILABLE) when it would refuse this caller's token for reading or,
        with ``write``, for writing (CheckAccess, which changes nothing), so
        a proxy can refuse an upload before reading its body. A gateway too
        old to know CheckAccess is let be: it checks the call itself."""
        try:
            self._call(self._stub.CheckAccess, gateway_pb2.CheckAccessRequest(write=write), timeout)
        except ImageSearchError as exc:
            if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                raise

    # -- readiness -------------------------------------------------------

    def ready(self, timeout: float = 3.0) -> bool:
        """True when the gateway and both its backends are serving."""
        try:
            reply = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def wait_ready(
        self, timeout: float, on_wait: Callable[[str], None] | None = None, interval: float = 0.5
    ) -> None:
        """Waits until the gateway reports its backends ready. A gateway that is
        not there at all fails at once (UNAVAILABLE); one whose embedder or index
        is still starting is waited for, up to ``timeout`` seconds."""
        health = health_pb2_grpc.HealthStub(self._channel)
        started = time.monotonic()
        deadline = started + timeout
        said = False
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
            except grpc.RpcError as exc:
                raise _error(exc) from None
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            if time.monotonic() > deadline:
                raise ImageSearchError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the gateway at {self.address} is up but its embedder or index did not "
                    f"start within {timeout:.0f}s; see their logs",
                )
            # A wait of a moment (the gateway's first health check of its
            # backends) is not worth a line.
            if not said and on_wait is not None and time.monotonic() - started >= 2.0:
                on_wait(
                    f"waiting for the gateway at {self.address}: its embedder or index is starting"
                )
                said = True
            time.sleep(interval)

    # -- search ----------------------------------------------------------

    def search(
        self,
        *,
        image: bytes | None = None,
        image_id: int | None = None,
        path: str | None = None,
        collection: str = "",
        top_k: int = 10,
        min_score: float = 0.0,
        path_prefix: str = "",
        any_rotation: bool = False,
        text: str = "",
        timeout: float | None = None,
    ) -> list[Hit]:
        """Hits for one query (image bytes, a stored image id, or a server path,
        or words), best first. ``any_rotation``: match stored images turned by
        any right angle from the query (one embedder batch of four views; each
        stored image keeps its best score). ``text`` with an image: how the
        wanted image differs from it ("make the red cube blue"), for a
        collection of a composing model (tirg_css); ``text`` alone: a search by
        words ("red sneakers"), for a collection with text vectors; others
        answer FAILED_PRECONDITION."""
        Query(image, image_id, path, text).to_proto()  # one of the three, or words
        request = gateway_pb2.SearchRequest(
            collection=collection,
            top_k=top_k,
            min_score=min_score,
            path_prefix=path_prefix,
            any_rotation=any_rotation,
            image=image,
            image_id=image_id,
            path=path,
            text=text,
        )
        reply = self._call(self._stub.Search, request, timeout)
        return [Hit.from_proto(h) for h in reply.hits]

    def search_many(
        self,
        queries: Sequence[Query],
        *,
        collection: str = "",
        top_k: int = 10,
        min_score: float = 0.0,
        path_prefix: str = "",
        any_rotation: bool = False,
        timeout: float | None = None,
    ) -> list[list[Hit]]:
        """Hits for each query, in order, in one call."""
        request = gateway_pb2.SearchRequest(
            collection=collection,
            top_k=top_k,
            min_score=min_score,
            path_prefix=path_prefix,
            any_rotation=any_rotation,
            queries=[q.to_proto() for q in queries],
        )
        reply = self._call(self._stub.Search, request, timeout)
        return [[Hit.from_proto(h) for h in r.hits] for r in reply.results]

    # -- indexing --------------------------------------------------------

    def index_images(
        self,
        images: Sequence[tuple[str, bytes]],
        *,
        collection: str = "",
        return_images: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> IndexReport:
        """Indexes ``(name, bytes)`` pairs in one stream; retried as a whole
        while the gateway is UNAVAILABLE (content ids make a repeat harmless).
        ``return_images``: fill ``image_ids`` (name -> id). ``model``: the
        model of a collection this creates (e.g. tirg_css; default: the
        gateway's default embedder)."""
        report = IndexReport()
        reply = self._retry(
            lambda: self._stub.IndexImages(
                image_requests(collection, images, return_images, model=model),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        )
        report.add(reply, len(images))
        return report

    def index_files(
        self,
        files: Sequence[str | Path],
        *,
        collection: str = "",
        files_per_call: int = 32,
        bytes_per_call: int = 64 * 1024 * 1024,
        calls_in_flight: int = 3,
        on_progress: Callable[[IndexReport], None] | None = None,
        return_images: bool = False,
        model: str = "",
        timeout: float | None = None,
    ) -> IndexReport:
        """Indexes local files under their absolute paths, a few streams in
        flight so that reading and uploading overlap embedding on the server.
        A call carries at most ``files_per_call`` files and, past its first
        file, at most ``bytes_per_call`` bytes, so memory stays bounded with
        camera-size photos. ``on_progress`` gets the running totals after every call."""
        paths = [str(Path(f).expanduser().resolve()) for f in files]
        batches = [g for g, _ in byte_groups(paths, bytes_per_call, files_per_call)]
        report = IndexReport()

        def send(batch: list[str]) -> tuple[int, IndexReport]:
            return len(batch), self.index_images(
                [(p, Path(p).read_bytes()) for p in batch],
                collection=collection,
                return_images=return_images,
                model=model,
                timeout=timeout,
            )

        with ThreadPoolExecutor(max(1, calls_in_flight)) as pool:
            for _count, part in pool.map(send, batches):
                report.merge(part)
                if on_progress is not None:
                    on_progress(report)
        return report

    def _retry(self, call: Callable[[], T]) -> T:
        for attempt in range(1, self.retries + 1):
            try:
                return call()
            except grpc.RpcError as exc:
                error = _error(exc)
                if error.code != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise error from None
                time.sleep(min(0.5 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    # -- jobs ------------------------------------------------------------

    def start_job(
        self,
        folder: str,
        *,
        collection: str = "",
        recursive: bool = True,
        model: str = "",
        timeout: float | None = None,
    ) -> Job:
        """Starts indexing a folder on the gateway's machine (under its allowed
        roots). ``model``: the model of a collection this creates."""
        request = gateway_pb2.StartIndexJobRequest(
            collection=collection, folder=folder, recursive=recursive, model=model
        )
        return Job.from_proto(self._call(self._stub.StartIndexJob, request, timeout).job)

    def get_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        request = gateway_pb2.GetJobRequest(job_id=job_id)
        return Job.from_proto(self._call(self._stub.GetJob, request, timeout).job)

    def list_jobs(
        self,
        *,
        collection: str = "",
        include_errors: bool = False,
        page_size: int = 100,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> list[Job]:
        """Jobs, newest first, page by page (at most ``limit``). Their file
        errors only with ``include_errors`` (``get_job`` always has them)."""
        jobs: list[Job] = []
        token = ""
        while limit is None or len(jobs) < limit:
            request = gateway_pb2.ListJobsRequest(
                collection=collection,
                page_size=page_size,
                page_token=token,
                include_errors=include_errors,
            )
            reply = self._call(self._stub.ListJobs, request, timeout)
            jobs += [Job.from_proto(j) for j in reply.jobs]
            token = reply.next_page_token
            if not token:
                break
        return jobs if limit is None else jobs[:limit]

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        request = gateway_pb2.CancelJobRequest(job_id=job_id)
        return Job.from_proto(self._call(self._stub.CancelJob, request, timeout).job)

    def resume_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        request = gateway_pb2.ResumeJobRequest(job_id=job_id)
        return Job.from_proto(self._call(self._stub.ResumeJob, request, timeout).job)

    def watch_job(
        self,
        job_id: str,
        *,
        stream_s: float = 600.0,
        reconnect_s: float = 300.0,
        on_reconnect: Callable[[ImageSearchError], None] | None = None,
        stop: WatchStop | None = None,
    ) -> Iterator[Job]:
        """The job now and at every change, for as long as it runs.

        Each WatchJob stream lasts at most ``stream_s``; then, or when a stream
        is lost (the gateway restarting, a network blip), watching resumes
        with a new stream. Only a gateway unreachable for ``reconnect_s`` in a
        row, or an error that is not about the connection, ends it. ``stop``:
        ``stop.set()`` from any thread ends the watch at once (its stream is
        cancelled), e.g. when whoever was told has gone away."""
        last: Job | None = None
        failing_since: float | None = None
        while stop is None or not stop.is_set():
            try:
                call = self._stub.WatchJob(
                    gateway_pb2.WatchJobRequest(job_id=job_id),
                    timeout=stream_s,
                    metadata=self._metadata,
                )
                if stop is not None:
                    stop.attach(call)
                for reply in call:
                    failing_since = None
                    job = Job.from_proto(reply.job)
                    if last is None or job != last:
                        last = job
                        yield job
                    if job.state.terminal:
                        return
            except grpc.RpcError as exc:
                if stop is not None and stop.is_set():
                    return
                error = _error(exc)
                if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue  # the stream's time is up, not the job's
                if error.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise error from None
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > reconnect_s:
                    raise error from None
                if on_reconnect is not None:
                    on_reconnect(error)
                time.sleep(1.0)
            else:
                if last is not None and last.state.terminal:
                    return

    # -- collections -----------------------------------------------------

    def count(self, *, collection: str = "", timeout: float | None = None) -> Count:
        reply = self._call(
            self._stub.Count, gateway_pb2.CountRequest(collection=collection), timeout
        )
        return Count(reply.count, reply.pending)

    def delete(
        self,
        *,
        collection: str = "",
        image_ids: Sequence[int] = (),
        paths: Sequence[str] = (),
        path_prefix: str = "",
        timeout: float | None = None,
    ) -> Deleted:
        """Deletes by ids, exact paths or a path prefix (combinable)."""
        if not (image_ids or paths or path_prefix):
            raise ValueError("say what to delete: image_ids, paths or path_prefix")
        request = gateway_pb2.DeleteRequest(
            collection=collection,
            image_ids=list(image_ids),
            paths=list(paths),
            path_prefix=path_prefix,
        )
        reply = self._call(self._stub.Delete, request, timeout)
        return Deleted(reply.deleted, reply.paths_removed)

    def drop_collection(self, collection: str, *, timeout: float | None = None) -> bool:
        """Drops every image of ``collection``; False if it did not exist."""
        request = gateway_pb2.DropCollectionRequest(collection=collection)
        return bool(self._call(self._stub.DropCollection, request, timeout).dropped)

    def get_image(self, path: str, *, collection: str = "", timeout: float | None = None) -> bytes:
        """The bytes of an indexed image at a path a server job found (NOT_FOUND
        for any other path, FAILED_PRECONDITION when the file changed since)."""
        request = gateway_pb2.GetImageRequest(collection=collection, path=path)
        return bytes(self._call(self._stub.GetImage, request, timeout).data)

    def get_thumbnail(
        self, image_id: int, *, collection: str = "", timeout: float | None = None
    ) -> bytes:
        """The JPEG thumbnail of a stored image (NOT_FOUND: not stored, or
        stored before thumbnails; ``reconcile(thumbnails=True)`` makes them)."""
        request = gateway_pb2.GetThumbnailRequest(collection=collection, image_id=image_id)
        return bytes(self._call(self._stub.GetThumbnail, request, timeout).data)

    def reconcile(
        self,
        *,
        collection: str = "",
        thumbnails: bool = False,
        text: bool = False,
        timeout: float | None = None,
    ) -> Reconciled:
        """Repairs storage (admin role): ``collection``, or every one when empty.
        ``thumbnails``: also make thumbnails, from their files, for images
        stored without one; ``text``: also text vectors (search by words) for
        images without one (each a thousand per call)."""
        request = gateway_pb2.ReconcileRequest(
            collection=collection, backfill_thumbnails=thumbnails, backfill_text=text
        )
        reply = self._call(self._stub.Reconcile, request, timeout)
        return Reconciled(
            reply.marked_ready,
            reply.orphan_vectors_deleted,
            reply.missing_vectors,
            reply.reembedded,
            reply.unrepaired,
            tuple(reply.unrepaired_paths),
            reply.thumbnails_made,
            reply.thumbnails_missing,
            reply.text_made,
            reply.text_missing,
        )

    def list_collections(self, *, timeout: float | None = None) -> list[Collection]:
        reply = self._call(
            self._stub.ListCollections, gateway_pb2.ListCollectionsRequest(), timeout
        )
        return [Collection.from_proto(c) for c in reply.collections]
