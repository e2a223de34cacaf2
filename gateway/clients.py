"""Calls to the embedder and the index.

The policy, in one place (docs/concepts.md, "Deadlines and retries"):
- every call first waits for its backend's channel to be connected (what gRPC
  calls wait-for-ready, done here so that the wait has its own bound): a
  backend that is starting or restarting delays a call instead of failing it.
  The wait is bounded by the caller's deadline and by GATEWAY_BACKEND_WAIT_S;
  past it the call fails UNAVAILABLE naming the backend (retryable). The call
  itself then fails fast if the backend goes away under it, rather than
  waiting for it until the deadline.
- a call runs for at most the caller's remaining deadline and at most
  GATEWAY_CALL_TIMEOUT_S (see gateway.deadline).
- an UNAVAILABLE answer from a running backend is retried by the channel's
  service config (imagesearch.channels: 3 attempts, backoff from 0.2 s) while
  the deadline allows; jobs retry whole batches through longer outages
  (GATEWAY_JOB_OUTAGE_S, gateway.jobs).
- the gateway's own health reports its service SERVING only once the
  default embedder and the index have answered SERVING
  (``Backends.wait_serving``).

Several embedders (GATEWAY_EMBEDDERS, one per model) may stand beside the
default one: each collection is embedded by the embedder whose model id
(GetModelInfo) is the collection's (``Backends.embedder_for``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.deadline import Deadline
from gateway.settings import GatewaySettings
from imagesearch import errors, logs
from imagesearch.channels import make_channel
from imagesearch.logs import request_id
from imagesearch.server import REQUEST_ID_HEADER
from imagesearch.tls import ClientTls
from imagesearch.v1 import (
    embedder_pb2,
    embedder_pb2_grpc,
    index_pb2,
    index_pb2_grpc,
)

# Room kept in an Embed request for the message's own fields (names, framing).
MESSAGE_OVERHEAD = 64 * 1024
ITEM_OVERHEAD = 64
DEFAULT_EMBED_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default, for embedders that do not say
# The channels' own limit: calls are split to the embedder's, which is used
# only up to this.
CHANNEL_MESSAGE_BYTES = 1024 * 1024 * 1024
EMBEDDER_SERVICE = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"].full_name
log = logging.getLogger(__name__)
INDEX_SERVICE = index_pb2.DESCRIPTOR.services_by_name["IndexService"].full_name


@dataclass(frozen=True)
class Embedded:
    """One embedded image: a vector (packed float32) or an error."""

    name: str
    vector: bytes
    width: int
    height: int
    error: str
    error_code: grpc.StatusCode
    thumbnail: bytes = b""  # JPEG, when asked for
    rotated_vectors: tuple[bytes, ...] = ()  # 90, 180, 270 degrees, when asked for
    text_vector: bytes = b""  # in the model's text space, when asked for


def _transport_error(detail: str) -> bool:
    """gRPC's own words for a connection that failed (they name addresses)."""
    low = detail.lower()
    return any(w in low for w in ("connect", "address", "socket", "dns", "handshake", "tcp"))


def _metadata() -> tuple[tuple[str, str], ...]:
    rid = request_id.get()
    return ((REQUEST_ID_HEADER, rid),) if rid != "-" else ()


class Dependency:
    """One backend: its channel, whether it is connected now, and whether it
    has answered SERVING to a health check since the gateway started."""

    def __init__(
        self,
        name: str,
        addr: str,
        service: str,
        tls: ClientTls | None = None,
        server_name: str = "",
        health_checked: bool = False,
    ) -> None:
        self.name = name
        self.addr = addr
        self.service = service
        self.channel = make_channel(
            addr,
            [service],
            max_message_bytes=CHANNEL_MESSAGE_BYTES,
            credentials=tls.credentials() if tls is not None else None,
            server_name=server_name,
            health_checked=health_checked,
        )
        self._state = grpc.ChannelConnectivity.IDLE
        self.served = threading.Event()
        self.channel.subscribe(self._on_state, try_to_connect=True)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        self._state = state

    @property
    def connected(self) -> bool:
        return self._state == grpc.ChannelConnectivity.READY

    def wait_connected(self, timeout: float) -> bool:
        if self.connected:
            return True
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
        return True

    def check_serving(self, timeout: float = 2.0) -> bool:
        """One health check of the backend's service; remembers a SERVING answer."""
        if self.served.is_set():
            return True
        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=self.service), timeout=timeout
            )
        except grpc.RpcError:
            return False
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            self.served.set()
        return self.served.is_set()

    def close(self) -> None:
        self.channel.close()


@dataclass(frozen=True)
class EmbedderModel:
    """What an embedder's GetModelInfo said, as the gateway uses it."""

    model: str  # resnet50, tirg_css, ...
    model_id: str  # identity of its vector space
    composes: bool  # takes a text with the image
    max_message_bytes: int  # largest Embed request it accepts
    dim: int = 0  # length of its vectors
    text_dim: int = 0  # > 0: it searches by words (EmbedText, text vectors)
    text_model_id: str = ""


class Embedder:
    """One embedder target (all replicas of one model) and its model, learned
    from GetModelInfo once and again when its answers name another model."""

    def __init__(self, key: str, addr: str, tls: ClientTls | None, server_name: str) -> None:
        self.key = key  # its GATEWAY_EMBEDDERS name; "" for GATEWAY_EMBEDDER_ADDR
        label = f"embedder for {key}" if key else "embedder"
        # Replicas that warm up or drain (NOT_SERVING) get no Embed calls.
        self.dep = Dependency(label, addr, EMBEDDER_SERVICE, tls, server_name, health_checked=True)
        self.stub = embedder_pb2_grpc.EmbedderServiceStub(self.dep.channel)
        self.model: EmbedderModel | None = None

    def serves(self, model: str) -> bool:
        """Whether ``model`` (a name) is this embedder's."""
        return model == self.key or (self.model is not None and model == self.model.model)


# How long the gateway trusts what it learned of a collection's model; a
# collection dropped and made again with another model by another gateway is
# refused by the index meanwhile, never mixed.
COLLECTION_MODEL_TTL_S = 30.0


class Backends:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        tls, name = settings.backend_tls, settings.backend_tls_server_name
        self.default_embedder = Embedder("", settings.embedder_addr, tls, name)
        self.embedders = [self.default_embedder] + [
            Embedder(key, addr, tls, name) for key, addr in settings.embedder_routes.items()
        ]
        # Writes go to the index writer; reads to the readers, when there are any.
        split = bool(settings.index_read_addr) and settings.index_read_addr != settings.index_addr
        writer_name = "index writer" if split else "index"
        self.index_dep = Dependency(writer_name, settings.index_addr, INDEX_SERVICE, tls, name)
        self.index = index_pb2_grpc.IndexServiceStub(self.index_dep.channel)
        self.index_read_dep = (
            Dependency("index reader", settings.index_read_addr, INDEX_SERVICE, tls, name)
            if split
            else self.index_dep
        )
        self.index_reader = index_pb2_grpc.IndexServiceStub(self.index_read_dep.channel)
        self.split_reads = split
        self._closed = threading.Event()
        self._collection_models: dict[str, tuple[str, float]] = {}  # name -> (model id, when)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._closed.set()
        for e in self.embedders:
            e.dep.close()
        self.index_dep.close()
        if self.index_read_dep is not self.index_dep:
            self.index_read_dep.close()

    def wait_serving(self, interval: float = 0.5) -> bool:
        """Blocks until the default embedder and the index have answered
        SERVING once (True), or until the gateway closes (False). The
        embedders of other models are not waited for: one that is down fails
        only its own collections' calls (UNAVAILABLE naming it)."""
        deps = [self.default_embedder.dep, self.index_dep, self.index_read_dep]
        while not self._closed.is_set():
            if all([d.check_serving() for d in deps]):
                return True
            self._closed.wait(interval)
        return False

    def _call(self, dep: Dependency, method: Any, request: Any, deadline: Deadline) -> Any:
        s = self.settings
        wait = deadline.timeout(s.backend_wait_s)
        if not dep.wait_connected(wait):
            logs.event(log, "backend.unreachable", logging.WARNING, backend=dep.name, addr=dep.addr)
            raise errors.unavailable(
                f"the {dep.name} is not reachable: waited {wait:.1f}s for it "
                "to start or come back (GATEWAY_BACKEND_WAIT_S); retry later"
            )
        timeout = deadline.timeout(s.call_timeout_s)
        call = method.future(request, timeout=timeout, metadata=_metadata())
        deadline.track(call)  # canceled with the caller's call
        try:
            return call.result()
        except grpc.FutureCancelledError:
            raise errors.ServiceError(
                grpc.StatusCode.CANCELLED, f"the caller canceled; the {dep.name} call was dropped"
            ) from None
        except grpc.RpcError as exc:
            code, detail = errors.rpc_status(exc)
            if code == grpc.StatusCode.UNAVAILABLE or (
                code == grpc.StatusCode.DEADLINE_EXCEEDED and not dep.connected
            ):
                # Transport errors name addresses: they go to the log only.
                logs.event(
                    log, "backend.unavailable", logging.WARNING, backend=dep.name,
                    addr=dep.addr, detail=detail,
                )  # fmt: skip
                said = f" ({detail})" if detail and not _transport_error(detail) else ""
                raise errors.unavailable(
                    f"the {dep.name} is unavailable{said}; retry later"
                ) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise errors.ServiceError(
                    code,
                    f"the {dep.name} did not answer within {timeout:.1f}s "
                    "(the caller's deadline, or GATEWAY_CALL_TIMEOUT_S)",
                ) from None
            raise errors.ServiceError(code, detail or f"{dep.name} call failed") from None

    # -- embedder --------------------------------------------------------

    def model_of(self, embedder: Embedder, deadline: Deadline) -> EmbedderModel:
        """The embedder's model (GetModelInfo, asked once)."""
        if embedder.model is None:
            info = self._call(
                embedder.dep,
                embedder.stub.GetModelInfo,
                embedder_pb2.EmbedderServiceGetModelInfoRequest(),
                deadline,
            )
            embedder.model = EmbedderModel(
                info.model,
                info.model_id,
                info.composes,
                min(info.max_message_bytes or DEFAULT_EMBED_MESSAGE_BYTES, CHANNEL_MESSAGE_BYTES),
                info.dim,
                info.text_dim,
                info.text_model_id,
            )
        return embedder.model

    def composing_models(self, deadline: Deadline) -> set[str]:
        """The model ids whose embedder composes (an image and a text change);
        an embedder that does not answer within 2 s counts as not composing."""
        composing = set()
        for e in self.embedders:
            try:
                model = self.model_of(e, deadline.within(2.0))
            except errors.ServiceError:
                continue
            if model.composes:
                composing.add(model.model_id)
        return composing

    def collection_model(self, collection: str, deadline: Deadline) -> str:
        """The model id of a collection's vectors; "" when it does not exist."""
        now = time.monotonic()
        with self._lock:
            known = self._collection_models.get(collection)
        if known is not None and now - known[1] < COLLECTION_MODEL_TTL_S:
            return known[0]
        listed = self.index_read(
            "ListCollections", index_pb2.IndexServiceListCollectionsRequest(), deadline
        )
        with self._lock:
            self._collection_models = {c.name: (c.model, now) for c in listed.collections}
            return self._collection_models.get(collection, ("", now))[0]

    def collection_names(self, deadline: Deadline) -> list[str]:
        listed = self.index_read(
            "ListCollections", index_pb2.IndexServiceListCollectionsRequest(), deadline
        )
        return [c.name for c in listed.collections]

    def forget_collection(self, collection: str) -> None:
        with self._lock:
            self._collection_models.pop(collection, None)

    def embedder_for(self, collection: str, deadline: Deadline, model: str = "") -> Embedder:
        """The embedder for ``collection``: the one serving its model; for a
        new collection, the one ``model`` names (a GATEWAY_EMBEDDERS name or
        a model's own name), else the default. FAILED_PRECONDITION when no
        embedder serves ``model``, or the collection holds another model's
        vectors. A collection no embedder serves gets the default, whose
        vectors the index refuses naming both models."""
        if len(self.embedders) == 1 and not model:
            return self.default_embedder
        stored = self.collection_model(collection, deadline)
        if not stored:
            if not model:
                return self.default_embedder
            for e in self.embedders:
                if e.key == model or self.model_of(e, deadline).model == model:
                    return e
            default = self.model_of(self.default_embedder, deadline).model
            named = ", ".join(e.key for e in self.embedders[1:]) or "none"
            raise errors.failed_precondition(
                f"no embedder serves model {model!r}: GATEWAY_EMBEDDERS names {named}, and "
                f"the default embedder (GATEWAY_EMBEDDER_ADDR) serves {default}"
            )
        # Embedders already asked first: one that is down is asked last.
        ordered = sorted(self.embedders, key=lambda e: e.model is None)
        chosen = next(
            (e for e in ordered if self.model_of(e, deadline).model_id == stored),
            self.default_embedder,
        )
        if model and not chosen.serves(model):
            raise errors.failed_precondition(
                f"collection {collection!r} holds vectors of model {stored}, not {model}: "
                "leave the model out to add to it, or index into a new collection"
            )
        return chosen

    def embed(
        self,
        images: Sequence[tuple[str, bytes]],
        deadline: Deadline,
        thumbnail_px: int = 0,
        rotations: bool = False,
        texts: Sequence[str] = (),
        embedder: Embedder | None = None,
        text_vectors: bool = False,
    ) -> tuple[str, list[Embedded]]:
        """(model_id, one result per image in order). The images go in as many
        Embed calls as the embedder's message limit needs; an image too large
        for any call is a per-image error naming the limit. ``thumbnail_px``:
        also get a JPEG thumbnail of each image that size (0: none).
        ``rotations``: also the vectors of each image turned by 90, 180, 270.
        ``texts``: one per image ('' for none), for a composing model.
        ``embedder``: which one (default: GATEWAY_EMBEDDER_ADDR's).
        ``text_vectors``: also each image's text vector (search by words)."""
        if not images:
            return "", []
        embedder = embedder or self.default_embedder
        limit = self.model_of(embedder, deadline).max_message_bytes
        room = limit - MESSAGE_OVERHEAD  # an image alone must fit this
        call_room = min(room, self.settings.embed_call_mb * 1024 * 1024)  # images together
        results: list[Embedded | None] = [None] * len(images)
        groups: list[list[int]] = [[]]
        size = 0
        for i, (name, data) in enumerate(images):
            need = len(data) + len(name.encode()) + ITEM_OVERHEAD
            if need > room:
                results[i] = Embedded(
                    name,
                    b"",
                    0,
                    0,
                    f"{name}: {len(data)} bytes, more than the embedder accepts in one "
                    f"message ({limit} bytes, EMBEDDER_MAX_MESSAGE_MB)",
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
                continue
            if groups[-1] and size + need > call_room:
                groups.append([])
                size = 0
            groups[-1].append(i)
            size += need
        model_id = ""
        for group in groups:
            if not group:
                continue
            request = embedder_pb2.EmbedderServiceEmbedRequest(
                images=[
                    embedder_pb2.Image(
                        name=images[i][0], data=images[i][1], text=texts[i] if texts else ""
                    )
                    for i in group
                ],
                thumbnail_px=thumbnail_px,
                rotations=rotations,
                text_vectors=text_vectors,
            )
            response = self._call(embedder.dep, embedder.stub.Embed, request, deadline)
            model_id = response.model_id
            if embedder.model is not None and model_id != embedder.model.model_id:
                embedder.model = None  # restarted with another model: ask again
            for i, e in zip(group, response.embeddings, strict=True):
                results[i] = Embedded(
                    e.name,
                    e.vector,
                    e.width,
                    e.height,
                    e.error,
                    errors.code_from_number(e.error_code),
                    e.thumbnail,
                    tuple(e.rotated_vectors),
                    e.text_vector,
                )
        return model_id, [r for r in results if r is not None]

    def embed_text(
        self, texts: Sequence[str], deadline: Deadline, embedder: Embedder
    ) -> tuple[str, list[bytes]]:
        """(text model id, one vector per text) for a search by words."""
        response = self._call(
            embedder.dep,
            embedder.stub.EmbedText,
            embedder_pb2.EmbedderServiceEmbedTextRequest(texts=list(texts)),
            deadline,
        )
        return response.text_model_id, list(response.vectors)

    # -- index -----------------------------------------------------------

    def index_call(self, method: str, request: Any, deadline: Deadline) -> Any:
        """A call to the index writer: writes, Reconcile, and reads that must
        see this gateway's own writes (what an ingest checks before storing)."""
        return self._call(self.index_dep, getattr(self.index, method), request, deadline)

    def index_read(self, method: str, request: Any, deadline: Deadline) -> Any:
        """A read from the index readers (the writer when there are none),
        which may lag the writer by their INDEX_READ_STALENESS_S."""
        stub = self.index_reader
        return self._call(self.index_read_dep, getattr(stub, method), request, deadline)

    def index_read_or_writer(self, method: str, request: Any, deadline: Deadline) -> Any:
        """A read from the readers, asked again of the writer when a reader
        does not know what it names (NOT_FOUND: an image or collection newer
        than the reader's view). The reader's answer stands if the writer
        cannot be reached."""
        try:
            return self.index_read(method, request, deadline)
        except errors.ServiceError as exc:
            if not self.split_reads or exc.code != grpc.StatusCode.NOT_FOUND:
                raise
            try:
                return self.index_call(method, request, deadline)
            except errors.ServiceError as again:
                if again.code == grpc.StatusCode.UNAVAILABLE:
                    raise exc from None
                raise

    def upsert(
        self, request: index_pb2.IndexServiceUpsertRequest, deadline: Deadline
    ) -> index_pb2.IndexServiceUpsertResponse:
        return self.index_call("Upsert", request, deadline)

    def make_collection(self, collection: str, deadline: Deadline, model: str = "") -> bool:
        """Has the index make ``collection`` for the model its images would
        be embedded with (``embedder_for``), by an Upsert of no images; False,
        asking nothing of the index, when it exists already."""
        if self.collection_model(collection, deadline):
            return False
        info = self.model_of(self.embedder_for(collection, deadline, model), deadline)
        request = index_pb2.IndexServiceUpsertRequest(
            collection=collection, model=info.model_id, dim=info.dim
        )
        self.upsert(request, deadline)
        return True

    def get_ready(
        self, collection: str, ids: Sequence[int], deadline: Deadline
    ) -> dict[int, index_pb2.ImageRecord]:
        """Ready records for ``ids``; an unknown collection has none."""
        try:
            response = self.index_call(
                "Get",
                index_pb2.IndexServiceGetRequest(collection=collection, image_ids=list(ids)),
                deadline,
            )
        except errors.ServiceError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return {}
            raise
        return {r.image_id: r for r in response.records}
