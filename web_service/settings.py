"""Web settings: env ``WEB_*``, flags ``--name`` override."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field

from imagesearch.settings import SettingsError, check_cert_key
from web_service.guard import host_name


@dataclass(frozen=True)
class WebSettings:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "HTTP port"})
    gateway_addr: str = field(
        default="localhost:50051", metadata={"help": "the gateway this face calls"}
    )
    gateway_ca: str = field(
        default="",
        metadata={
            "help": "PEM CA of the gateway's certificate: call it over TLS (empty: plaintext)"
        },
    )
    gateway_tls: bool = field(
        default=False,
        metadata={"help": "call the gateway over TLS trusting the system's CAs"},
    )
    tls_cert: str = field(
        default="", metadata={"help": "PEM certificate (chain): serve HTTPS (empty: HTTP)"}
    )
    tls_key: str = field(default="", metadata={"help": "PEM private key of WEB_TLS_CERT"})
    max_upload_mb: int = field(
        default=64,
        metadata={"help": "largest request body (uploads); more is refused with 413"},
    )
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Host names this face answers to (others get 400, against DNS rebinding); "
            "default: localhost, the loopback addresses and WEB_HOST (with the machine's "
            "names when WEB_HOST is every address); * answers any"
        },
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "other sites (https://app.example) whose pages may POST, PUT, PATCH and "
            "DELETE here; a browser's cross-site request from any other is refused with 403"
        },
    )
    max_uploads: int = field(
        default=4,
        metadata={
            "help": "uploads received at once (each up to WEB_MAX_UPLOAD_MB in memory or "
            "/tmp); more get 429"
        },
    )
    max_bodies: int = field(
        default=32,
        metadata={
            "help": "other request bodies (JSON, forms) received at once, each up to "
            "WEB_MAX_UPLOAD_MB; more get 429. Every body's caller is checked before it is read"
        },
    )
    max_event_streams: int = field(
        default=32,
        metadata={"help": "job progress streams (Server-Sent Events) open at once; more get 429"},
    )
    collection: str = field(
        default="images",
        metadata={
            "help": "collection of seed 001's API when a request has no table_name (the "
            "gateway's default is images too)"
        },
    )
    timeout_s: float = field(default=60.0, metadata={"help": "deadline of each gateway call"})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING"})

    @property
    def hosts(self) -> frozenset[str] | None:
        """The Host names answered (lower case, no port); None: any."""
        if "*" in self.allowed_hosts:
            return None
        if self.allowed_hosts:
            return frozenset(host_name(h) for h in self.allowed_hosts)
        names = {"localhost", "127.0.0.1", "::1", host_name(self.host)}
        if host_name(self.host) in ("0.0.0.0", "::", ""):
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
            with contextlib.suppress(OSError):
                names |= {str(a[4][0]) for a in socket.getaddrinfo(socket.gethostname(), None)}
        return frozenset(names - {"0.0.0.0", "::", ""})

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def validate(self) -> None:
        check_cert_key("WEB_TLS", self.tls_cert, self.tls_key)
        if not 0 <= self.port < 65536:
            raise SettingsError(f"WEB_PORT={self.port} is not a port number")
        if self.max_event_streams <= 0:
            raise SettingsError("WEB_MAX_EVENT_STREAMS must be at least 1")
        if self.max_bodies <= 0:
            raise SettingsError("WEB_MAX_BODIES must be at least 1")
        if self.max_uploads <= 0:
            raise SettingsError("WEB_MAX_UPLOADS must be at least 1")
        if self.max_upload_mb <= 0:
            raise SettingsError("WEB_MAX_UPLOAD_MB must be at least 1")
        if not self.collection:
            raise SettingsError("WEB_COLLECTION must name a collection")
        if self.timeout_s <= 0:
            raise SettingsError("WEB_TIMEOUT_S must be positive")
