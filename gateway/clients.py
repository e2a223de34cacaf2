"""Calls to the embedder and the index: deadlines on every call, UNAVAILABLE
retried with backoff by the channel's service config, and downstream errors
turned into ServiceErrors that say which backend failed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from gateway.settings import GatewaySettings
from imagesearch import errors
from imagesearch.channels import make_channel
from imagesearch.logs import request_id
from imagesearch.server import REQUEST_ID_HEADER
from imagesearch.v1 import (
    embedder_pb2,
    embedder_pb2_grpc,
    index_pb2,
    index_pb2_grpc,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Embedded:
    """One embedded image: a vector (packed float32) or an error."""

    name: str
    vector: bytes
    width: int
    height: int
    error: str
    error_code: int


def _metadata() -> tuple[tuple[str, str], ...]:
    rid = request_id.get()
    return ((REQUEST_ID_HEADER, rid),) if rid != "-" else ()


class Backends:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        limit = max(settings.max_image_bytes * settings.embed_batch + (1 << 20), 64 << 20)
        self.embedder_channel = make_channel(
            settings.embedder_addr,
            ["imagesearch.v1.Embedder"],
            max_message_bytes=limit,
            retry_attempts=settings.retry_attempts,
        )
        self.index_channel = make_channel(
            settings.index_addr,
            ["imagesearch.v1.Index"],
            max_message_bytes=limit,
            retry_attempts=settings.retry_attempts,
        )
        self.embedder = embedder_pb2_grpc.EmbedderStub(self.embedder_channel)
        self.index = index_pb2_grpc.IndexStub(self.index_channel)

    def close(self) -> None:
        self.embedder_channel.close()
        self.index_channel.close()

    def _call(
        self, backend: str, addr: str, fn: Callable[..., T], request: Any, timeout: float
    ) -> T:
        try:
            return fn(request, timeout=timeout, metadata=_metadata())
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            if code == grpc.StatusCode.UNAVAILABLE:
                raise errors.unavailable(
                    f"the {backend} at {addr} is unavailable ({detail}); retry later"
                ) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise errors.ServiceError(
                    code, f"the {backend} at {addr} did not answer within {timeout:.0f}s"
                ) from None
            raise errors.ServiceError(code, detail or f"{backend} call failed") from None

    # -- embedder --------------------------------------------------------

    def embed(self, images: Sequence[tuple[str, bytes]]) -> tuple[str, list[Embedded]]:
        """(model_id, one result per image in order)."""
        if not images:
            return "", []
        request = embedder_pb2.EmbedRequest(
            images=[embedder_pb2.Image(name=name, data=data) for name, data in images]
        )
        s = self.settings
        response = self._call(
            "embedder", s.embedder_addr, self.embedder.Embed, request, s.embed_timeout_s
        )
        return response.model_id, [
            Embedded(e.name, e.vector, e.width, e.height, e.error, e.error_code)
            for e in response.embeddings
        ]

    # -- index -----------------------------------------------------------

    def index_call(self, method: str, request: Any) -> Any:
        s = self.settings
        return self._call(
            "index", s.index_addr, getattr(self.index, method), request, s.index_timeout_s
        )

    def upsert(self, request: index_pb2.IndexUpsertRequest) -> index_pb2.IndexUpsertResponse:
        return self.index_call("Upsert", request)

    def get_ready(self, collection: str, ids: Sequence[int]) -> dict[int, index_pb2.ImageRecord]:
        """Ready records for ``ids``; an unknown collection has none."""
        try:
            response = self.index_call(
                "Get", index_pb2.IndexGetRequest(collection=collection, image_ids=list(ids))
            )
        except errors.ServiceError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return {}
            raise
        return {r.image_id: r for r in response.records}
