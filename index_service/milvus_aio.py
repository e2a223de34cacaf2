"""Milvus searches sent from the index server's event loop (grpc.aio).

A search through pymilvus' blocking stub costs the index a hop to a handler
thread and back, and grpc's blocking call on top of the call itself: about
1.0 ms of CPU per search here, against 0.66 ms for the same request awaited
on an asyncio channel (bench/RESULTS.md). So searches take a second channel,
an asyncio one, to the Milvus that pymilvus' connection resolved (a server,
or Milvus Lite's local socket), with the same credentials: TLS from the
index's settings, the token or user and password, the database name. Every
other call (writes, Reconcile, reads by id) stays on pymilvus.

The channel belongs to the event loop that opened it; from any other loop
``search`` is not offered (``bound_here`` is False) and callers use the
threaded path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from pathlib import Path
from typing import Any

import grpc
from pymilvus.grpc_gen import milvus_pb2

from index_service.settings import IndexSettings

SEARCH = "/milvus.proto.milvus.MilvusService/Search"


def call_metadata(settings: IndexSettings) -> tuple[tuple[str, str], ...]:
    """The headers pymilvus adds to each call: authorization, database."""
    out: list[tuple[str, str]] = []
    if settings.milvus_token:
        secret = settings.milvus_token
    elif settings.milvus_user:
        secret = f"{settings.milvus_user}:{settings.milvus_password}"
    else:
        secret = ""
    if secret:
        out.append(("authorization", base64.b64encode(secret.encode()).decode()))
    if settings.milvus_db_name:
        out.append(("dbname", settings.milvus_db_name))
    return tuple(out)


def _credentials(settings: IndexSettings) -> grpc.ChannelCredentials:
    """The TLS of the index's Milvus settings, as pymilvus builds it."""
    root = Path(settings.milvus_tls_ca).read_bytes()
    if settings.milvus_tls_cert:
        return grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=Path(settings.milvus_tls_key).read_bytes(),
            certificate_chain=Path(settings.milvus_tls_cert).read_bytes(),
        )
    return grpc.ssl_channel_credentials(root_certificates=root)


class AioSearches:
    """One asyncio channel to Milvus, opened on the running loop."""

    def __init__(self, settings: IndexSettings, address: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.metadata = call_metadata(settings)
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.keepalive_time_ms", 55000),
        ]
        if settings.milvus_tls_ca:
            if settings.milvus_tls_server_name:
                options.append(("grpc.ssl_target_name_override", settings.milvus_tls_server_name))
            self.channel = grpc.aio.secure_channel(address, _credentials(settings), options)
        else:
            self.channel = grpc.aio.insecure_channel(address, options)
        self._search = self.channel.unary_unary(
            SEARCH,
            request_serializer=milvus_pb2.SearchRequest.SerializeToString,
            response_deserializer=milvus_pb2.SearchResults.FromString,
        )

    def bound_here(self) -> bool:
        """Whether the running loop (if any) is the channel's."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    async def search(self, request: Any, timeout: float | None) -> Any:
        """Sends a SearchRequest; the SearchResults (status not checked)."""
        return await self._search(request, timeout=timeout, metadata=self.metadata)

    def close(self) -> None:
        """Closes the channel on its loop, from any thread (nothing to wait for)."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop has stopped
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.channel.close(None)))
