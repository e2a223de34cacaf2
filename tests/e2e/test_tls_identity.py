"""Inward mTLS accepts only the gateway's certificate, not any the CA signed
(*_TLS_CLIENT_NAMES), and renewed certificates are served without a restart.
Real index server; certificates from a CA made here (its key is kept, unlike
``imgsearch certs``'s, so that an intruder's certificate can be signed)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagesearch.channels import plain_channel
from imagesearch.tls import ClientTls
from imagesearch.v1 import index_pb2, index_pb2_grpc
from tests.conftest import start_index, wait_until

GATEWAY_NAME = "imagesearch gateway"


@dataclass
class Ca:
    folder: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> Path:
        return self.folder / "ca.pem"

    def issue(self, name: str, server: bool) -> tuple[Path, Path]:
        """``name``.pem and ``name``-key.pem: a server certificate for
        localhost, or a client certificate whose common name is ``name``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        slug = name.replace(" ", "-")
        cert_path, key_path = self.folder / f"{slug}.pem", self.folder / f"{slug}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


def make_ca(folder: Path) -> Ca:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    ca = Ca(folder, key, cert)
    ca.pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca


def served_name(port: int, ca: Ca, client: tuple[Path, Path]) -> str:
    """The common name of the certificate the server presents now."""
    context = ssl.create_default_context(cafile=str(ca.pem))
    context.load_cert_chain(str(client[0]), str(client[1]))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("localhost", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return make_ca(tmp_path / "pki")


def test_the_index_answers_only_the_gateways_certificate(ca: Ca, tmp_path: Path) -> None:
    server_cert, server_key = ca.issue("index", server=True)
    gateway = ca.issue(GATEWAY_NAME, server=False)
    intruder = ca.issue("intruder", server=False)

    def tls(client: tuple[Path, Path]) -> grpc.ChannelCredentials:
        return ClientTls(str(ca.pem), str(client[0]), str(client[1])).credentials()

    index = start_index(
        tmp_path / "index",
        credentials=tls(gateway),
        tls_cert=str(server_cert),
        tls_key=str(server_key),
        tls_client_ca=str(ca.pem),
        tls_client_names=(GATEWAY_NAME,),
    )
    try:
        request = index_pb2.IndexServiceListCollectionsRequest()
        with plain_channel(f"localhost:{index.port}", tls(gateway)) as ch:
            index_pb2_grpc.IndexServiceStub(ch).ListCollections(request, timeout=10)
        with plain_channel(f"localhost:{index.port}", tls(intruder)) as ch:
            with pytest.raises(grpc.RpcError) as err:
                index_pb2_grpc.IndexServiceStub(ch).ListCollections(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "TLS_CLIENT_NAMES" in str(err.value.details())
            # Health stays open to any certificate the CA signed (probes).
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        index.running.stop(1)


def test_a_renewed_certificate_is_served_without_a_restart(ca: Ca, tmp_path: Path) -> None:
    first = ca.issue("first", server=True)
    gateway = ca.issue(GATEWAY_NAME, server=False)
    cert, key = tmp_path / "serving.pem", tmp_path / "serving-key.pem"
    cert.write_bytes(first[0].read_bytes())
    key.write_bytes(first[1].read_bytes())
    index = start_index(
        tmp_path / "index",
        credentials=ClientTls(str(ca.pem), str(gateway[0]), str(gateway[1])).credentials(),
        tls_cert=str(cert),
        tls_key=str(key),
        tls_client_ca=str(ca.pem),
    )
    try:
        assert served_name(index.port, ca, gateway) == "first"
        second = ca.issue("second", server=True)
        # cert-manager writes new files and swaps them in.
        for source, target in ((second[0], cert), (second[1], key)):
            staged = target.with_suffix(".new")
            staged.write_bytes(source.read_bytes())
            os.replace(staged, target)
        assert wait_until(lambda: served_name(index.port, ca, gateway) == "second", 10)
    finally:
        index.running.stop(1)
