"""TLS for every hop: server credentials (with client verification for mTLS),
channel credentials, and a local CA for ``imgsearch up --tls``.

The gRPC port of a service serves TLS when it has a certificate and key
(``*_TLS_CERT``, ``*_TLS_KEY``); with ``*_TLS_CLIENT_CA`` it also refuses any
client whose certificate that CA did not sign (mTLS).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from imagesearch.filewatch import FileWatch
from imagesearch.settings import SettingsError

log = logging.getLogger(__name__)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key, the CA its clients must show (mTLS),
    and the names one of those client certificates must carry (empty: any
    the CA signed)."""

    cert: str
    key: str
    client_ca: str = ""
    client_names: tuple[str, ...] = ()

    def _configuration(self) -> Any:
        key = _read(self.key, "TLS key")
        cert = _read(self.cert, "TLS certificate")
        client_ca = _read(self.client_ca, "client CA") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that read the files again, at the next handshake, once
        they change (a renewed certificate from cert-manager, a rotated CA):
        no restart. Files that cannot be read then keep the ones in use."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            _Reloader(self).fetch,
            require_client_authentication=bool(self.client_ca),
        )

    def check_peer(self, auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
        """Why a caller's certificate is refused (None: accepted), by
        ``client_names`` against its common name and DNS names."""
        if not self.client_names:
            return None
        names = {
            value.decode("utf-8", "replace")
            for key in ("x509_common_name", "x509_subject_alternative_name")
            for value in auth_context.get(key, ())
        }
        if names & set(self.client_names):
            return None
        return (
            "this service answers only its gateway: the client certificate's names are not "
            "among TLS_CLIENT_NAMES"
        )


class _Reloader:
    """gRPC asks ``fetch`` at every handshake; it reads the files when they
    have changed (imagesearch.filewatch)."""

    def __init__(self, tls: ServerTls) -> None:
        self.tls = tls
        self.watch = FileWatch([p for p in (tls.cert, tls.key, tls.client_ca) if p])

    def fetch(self) -> Any:
        key = self.watch.changed()
        if key is None:
            return None
        try:
            fresh = self.tls._configuration()
        except SettingsError as exc:  # half-written during a rotation: next time
            log.warning("tls.reload_failed", extra={"fields": {"error": str(exc)}})
            return None
        self.watch.accept(key)
        log.info("tls.reloaded", extra={"fields": {"cert": self.tls.cert}})
        return fresh


@dataclass(frozen=True)
class ClientTls:
    """What a client trusts (``ca``; empty: the system's roots) and the
    certificate it shows (mTLS), both optional."""

    ca: str = ""
    cert: str = ""
    key: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA certificate") if self.ca else None,
            private_key=_read(self.key, "TLS key") if self.key else None,
            certificate_chain=_read(self.cert, "TLS certificate") if self.cert else None,
        )


# -- a local CA (imgsearch up --tls) -------------------------------------------


@dataclass(frozen=True)
class LocalPki:
    """Files made by ``local_pki``: one CA; a server certificate that every
    service presents; a client certificate the gateway presents to the
    embedder and the index."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.folder / "gateway-client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "gateway-client-key.pem"

    def service_cert(self, service: str) -> Path:
        """A server certificate of one service's own (``local_pki(services=)``)."""
        return self.folder / f"{service}.pem"

    def service_key(self, service: str) -> Path:
        return self.folder / f"{service}-key.pem"


# The common name of the gateway's client certificate: what the embedder and
# the index accept with *_TLS_CLIENT_NAMES.
GATEWAY_CLIENT_NAME = "imagesearch gateway"


def local_pki(
    folder: Path, hosts: list[str], days: int = 825, services: Sequence[str] = ()
) -> tuple[LocalPki, bool]:
    """Creates a CA and certificates under ``folder`` unless they are there
    already; returns them and whether they were made now. The server
    certificate names localhost, 127.0.0.1, ::1 and ``hosts``; each of
    ``services`` also gets a server certificate and key of its own
    (``<service>.pem``), for its name and the same ones, so that no service
    holds another's key."""
    pki = LocalPki(folder)
    files = [pki.ca, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key]
    files += [f for s in services for f in (pki.service_cert(s), pki.service_key(s))]
    sans = list(dict.fromkeys(["localhost", "127.0.0.1", "::1", *hosts]))
    sans = [h.strip("[]") for h in sans if h not in ("0.0.0.0", "::", "[::]", "")]
    if all(f.exists() for f in files) and set(sans) <= _names_in(pki.server_cert):
        return pki, False
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca = _LocalCa(days)
    server_key, server_cert = ca.leaf(
        "imagesearch services", [ExtendedKeyUsageOID.SERVER_AUTH], sans
    )
    client_key, client_cert = ca.leaf(GATEWAY_CLIENT_NAME, [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    pem = serialization.Encoding.PEM
    for service in services:
        own_key, own_cert = ca.leaf(
            f"imagesearch {service}",
            [ExtendedKeyUsageOID.SERVER_AUTH],
            list(dict.fromkeys([service, *sans])),
        )
        _write_key(pki.service_key(service), own_key)
        pki.service_cert(service).write_bytes(own_cert.public_bytes(pem))
    _write_key(pki.server_key, server_key)
    _write_key(pki.client_key, client_key)
    pki.server_cert.write_bytes(server_cert.public_bytes(pem))
    pki.client_cert.write_bytes(client_cert.public_bytes(pem))
    pki.ca.write_bytes(ca.cert.public_bytes(pem))  # last: its presence means "complete"
    # The CA's key is not kept: nothing else is ever signed with it.
    return pki, True


class _LocalCa:
    """A CA made in memory, valid for ``days``, that signs the local leaves."""

    def __init__(self, days: int) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        self.days = days
        self.now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name("imagesearch local CA")
        self.cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject: Any, public_key: Any) -> Any:
        from cryptography import x509

        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(minutes=5))
            .not_valid_after(self.now + datetime.timedelta(days=self.days))
        )

    def leaf(self, common: str, usage: list[Any], sans: list[str]) -> tuple[Any, Any]:
        """A key and a certificate for ``common``, for ``usage`` (server or
        client auth), valid for the names and addresses in ``sans``."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(_name(common), key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if sans:
            entries: list[x509.GeneralName] = []
            for host in sans:
                try:
                    entries.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
                except ValueError:
                    entries.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def _name(common: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imagesearch (local)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _write_key(path: Path, key: Any) -> None:
    """The private key as PEM, readable by its owner only."""
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _names_in(cert_file: Path) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = set(alt.get_values_for_type(x509.DNSName))
    return names | {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)}
