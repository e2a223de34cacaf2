"""TLS on every port and mTLS from the gateway inward, on real servers with
certificates from imagesearch.tls.local_pki (the CA `imgsearch up --tls` makes)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagesearch.channels import plain_channel
from imagesearch.client import Client, ImageSearchError
from imagesearch.tls import GATEWAY_CLIENT_NAME, ClientTls, LocalPki, local_pki
from tests.conftest import (
    CLOTHING,
    VENV_BIN,
    Server,
    start_embedder,
    start_gateway,
    start_index,
)


@dataclass
class TlsStack:
    embedder: Server
    index: Server
    gateway: Server
    pki: LocalPki
    other: LocalPki  # a second CA, trusted by nobody


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    tmp = tmp_path_factory.mktemp("tls")
    pki, made = local_pki(tmp / "pki", [])
    assert made and local_pki(tmp / "pki", [])[1] is False  # made once, then reused
    other, _ = local_pki(tmp / "other", [])
    serve = {
        "tls_cert": str(pki.server_cert),
        "tls_key": str(pki.server_key),
        "tls_client_ca": str(pki.ca),
        "tls_client_names": (GATEWAY_CLIENT_NAME,),  # the gateway's, not any the CA signed
    }
    gateway_client = ClientTls(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    embedder = start_embedder(**serve)
    index = start_index(tmp / "index", credentials=gateway_client.credentials(), **serve)
    gateway = start_gateway(
        tmp,
        f"localhost:{embedder.port}",
        f"localhost:{index.port}",
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        backend_tls_ca=str(pki.ca),
        backend_tls_cert=str(pki.client_cert),
        backend_tls_key=str(pki.client_key),
    )
    yield TlsStack(embedder, index, gateway, pki, other)
    gateway.running.stop(1)
    index.running.stop(1)
    embedder.running.stop(1)


def health(port: int, credentials: grpc.ChannelCredentials | None) -> int:
    """The health status, or raises grpc.RpcError when the connection is refused."""
    with plain_channel(f"localhost:{port}", credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return int(reply.status)


def test_plaintext_gets_nothing_on_any_port(tls_stack: TlsStack) -> None:
    for server in (tls_stack.embedder, tls_stack.index, tls_stack.gateway):
        with pytest.raises(grpc.RpcError) as info:
            health(server.port, None)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_embedder_and_index_refuse_clients_the_ca_did_not_sign(tls_stack: TlsStack) -> None:
    pki, other = tls_stack.pki, tls_stack.other
    good = ClientTls(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    no_cert = ClientTls(str(pki.ca))
    foreign = ClientTls(str(pki.ca), str(other.client_cert), str(other.client_key))
    for server in (tls_stack.embedder, tls_stack.index):
        assert health(server.port, good.credentials()) == health_pb2.HealthCheckResponse.SERVING
        for refused in (no_cert, foreign):
            with pytest.raises(grpc.RpcError) as info:
                health(server.port, refused.credentials())
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # The gateway verifies its clients by token, not certificate: the CA is enough.
    assert health(tls_stack.gateway.port, no_cert.credentials()) == (
        health_pb2.HealthCheckResponse.SERVING
    )
    # A client that trusts another CA does not trust the gateway.
    with pytest.raises(grpc.RpcError):
        health(tls_stack.gateway.port, ClientTls(str(other.ca)).credentials())


@pytest.mark.processes
def test_the_journey_over_mtls(tls_stack: TlsStack) -> None:
    addr = f"localhost:{tls_stack.gateway.port}"
    ca = str(tls_stack.pki.ca)
    env = {**os.environ, "IMGSEARCH_GATEWAY": addr, "IMGSEARCH_CA": ca}
    folder = CLOTHING / sorted(p.name for p in CLOTHING.iterdir() if p.is_dir())[0]
    indexed = subprocess.run(
        [str(VENV_BIN / "imgsearch"), "index", str(folder), "-c", "tls", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert indexed.returncode == 0, indexed.stderr
    files = sorted(folder.glob("*.jpg"))
    assert json.loads(indexed.stdout)["indexed"] == len(files) > 0

    with Client(addr, ca_file=ca) as client:
        hits = client.search(collection="tls", image=files[0].read_bytes(), top_k=1)
        assert Path(hits[0].path).name == files[0].name and hits[0].score > 0.99
    with Client(addr, ca_file=str(tls_stack.other.ca), timeout=10, retries=1) as stranger:
        with pytest.raises(ImageSearchError) as info:
            stranger.count(collection="tls")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE

    counted = subprocess.run(
        [str(VENV_BIN / "grpcurl"), "-cacert", ca, "-d", '{"collection": "tls"}', addr,
         "imagesearch.v1.GatewayService/Count"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["count"] == str(len(files))
