"""Typed settings from environment variables, with command-line flags on top.

Each service declares one frozen dataclass; every field is read from
``<PREFIX><FIELD_NAME>`` (e.g. ``EMBEDDER_MAX_BATCH``) and can be overridden by
``--field-name``. The field's ``metadata["help"]`` is the documentation.
A secret field (``secret_field``) may instead be read from the file that
``<PREFIX><FIELD_NAME>_FILE`` names (a mounted Secret, a Docker secret), so
no password sits in an environment or a manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from imagesearch.limits import CallLimits

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    """The fields every gRPC service has. A service's settings class inherits
    them and re-declares a field (with ``server_field``) to change its default."""

    env_prefix: ClassVar[str] = ""  # GATEWAY_, INDEX_, EMBEDDER_: names settings in messages

    host: str = field(
        default="localhost",
        metadata={
            "help": "address to listen on: loopback by default; containers and manifests "
            "set 0.0.0.0 or [::] (every address)"
        },
    )
    port: int = field(default=0, metadata={"help": "gRPC port (0: pick a free one)"})
    rpc_workers: int = field(
        default=16, metadata={"help": "threads that run unary calls (streams have their own)"}
    )
    max_calls: int = field(
        default=128,
        metadata={
            "help": "unary calls running or waiting for a thread; more are refused "
            "RESOURCE_EXHAUSTED at once (health is never refused)"
        },
    )
    max_streams: int = field(
        default=16,
        metadata={
            "help": "client streams (uploads: IndexImages) open at once, each with a thread "
            "of its own; more are refused RESOURCE_EXHAUSTED"
        },
    )
    max_watchers: int = field(
        default=16,
        metadata={
            "help": "server streams (watchers: WatchJob) open at once, a cap apart from "
            "uploads; more are refused RESOURCE_EXHAUSTED"
        },
    )
    max_reflection_streams: int = field(
        default=8, metadata={"help": "reflection sessions (grpcurl) open at once"}
    )
    stream_idle_s: float = field(
        default=60.0,
        metadata={
            "help": "a client stream that sends nothing, a unary call whose request does not "
            "arrive, or a watcher that reads nothing for this long is ended (DEADLINE_EXCEEDED)"
        },
    )
    max_streams_per_connection: int = field(
        default=100,
        metadata={"help": "calls open at once on one connection (HTTP/2); more wait client-side"},
    )
    max_open_rpcs: int = field(
        default=1000,
        metadata={
            "help": "calls of every kind open at once, health included (gRPC's own cap): a "
            "backstop against floods of connections; past it RESOURCE_EXHAUSTED"
        },
    )
    max_message_mb: int = field(default=4, metadata={"help": "largest gRPC message"})
    max_connection_age_s: float = field(
        default=300.0,
        metadata={
            "help": "a client's connection is closed after this long (GOAWAY; its calls "
            "finish within SHUTDOWN_GRACE_S) so that clients spread over replicas added "
            "since; 0: never"
        },
    )
    drain_s: float = field(
        default=0.0,
        metadata={
            "help": "on SIGTERM: seconds it answers health NOT_SERVING while still serving, "
            "so that load balancers and clients' health checks move away before it stops "
            "taking calls (Kubernetes: 5)"
        },
    )
    shutdown_grace_s: float = field(
        default=20.0,
        metadata={
            "help": "on SIGTERM, after DRAIN_S: new calls are refused and the calls in "
            "progress get this long to finish; then it exits"
        },
    )
    metrics_port: int = field(default=0, metadata={"help": "Prometheus port (0: off)"})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING"})
    tls_cert: str = field(
        default="", metadata={"help": "PEM certificate (chain): serve TLS (empty: plaintext)"}
    )
    tls_key: str = field(default="", metadata={"help": "PEM private key of TLS_CERT"})
    tls_client_ca: str = field(
        default="",
        metadata={
            "help": "PEM CA: refuse clients without a certificate it signed (mTLS; needs TLS_CERT)"
        },
    )
    tls_client_names: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "with TLS_CLIENT_CA: the names (common name or DNS name) a client "
            "certificate must carry, e.g. the gateway's; others are refused "
            "PERMISSION_DENIED (health stays open). Empty: any certificate the CA signed"
        },
    )
    health_port: int = field(
        default=0,
        metadata={
            "help": "plaintext port serving only gRPC health, for probes that cannot speak "
            "TLS (Kubernetes grpc probes); 0: off"
        },
    )
    reflection: bool = field(
        default=True, metadata={"help": "serve gRPC reflection (grpcurl without protos)"}
    )

    def call_limits(self, prefix: str) -> CallLimits:
        return CallLimits(
            prefix=prefix,
            threads=self.rpc_workers,
            calls=self.max_calls,
            uploads=self.max_streams,
            watchers=self.max_watchers,
            reflection=self.max_reflection_streams,
            idle_s=self.stream_idle_s,
            per_connection=self.max_streams_per_connection,
            open_rpcs=self.max_open_rpcs,
            connection_age_s=self.max_connection_age_s,
            connection_grace_s=self.shutdown_grace_s,
        )

    def server_options(self) -> dict[str, Any]:
        """Keyword arguments of ``imagesearch.server.start_server``."""
        from imagesearch.tls import ServerTls

        return {
            "host": self.host,
            "port": self.port,
            "limits": self.call_limits(self.env_prefix),
            "max_message_bytes": self.max_message_mb * 1024 * 1024,
            "tls": ServerTls(self.tls_cert, self.tls_key, self.tls_client_ca, self.tls_client_names)
            if self.tls_cert
            else None,
            "health_port": self.health_port,
            "reflection": self.reflection,
        }

    def check_server(self, prefix: str) -> None:
        """Refuses TLS settings that cannot work together, and caps below 1."""
        try:
            self.call_limits(prefix)  # checks the caps, naming the setting
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        check_cert_key(f"{prefix}TLS", self.tls_cert, self.tls_key)
        if self.tls_client_names and not self.tls_client_ca:
            raise SettingsError(
                f"{prefix}TLS_CLIENT_NAMES needs {prefix}TLS_CLIENT_CA (mTLS) to check them against"
            )
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError(
                f"{prefix}TLS_CLIENT_CA (mTLS) needs {prefix}TLS_CERT and {prefix}TLS_KEY"
            )


def check_cert_key(stem: str, cert: str, key: str) -> None:
    """``{stem}_CERT`` and ``{stem}_KEY`` are set together or not at all."""
    if bool(cert) != bool(key):
        raise SettingsError(f"{stem}_CERT and {stem}_KEY go together: set both")


def check_client_tls(stem: str, ca: str, cert: str, key: str) -> None:
    """A client's TLS settings: a certificate of its own (mTLS) comes with its
    key and with ``{stem}_CA``, which verifies the server."""
    check_cert_key(stem, cert, key)
    if cert and not ca:
        raise SettingsError(f"{stem}_CERT (mTLS) needs {stem}_CA to verify the server")


def server_field(name: str, default: Any, help: str | None = None) -> Any:
    """A ServerSettings field with another default (and the same help)."""
    base = {f.name: f for f in dataclasses.fields(ServerSettings)}[name]
    return field(default=default, metadata={"help": help or base.metadata["help"]})


def secret_field(default: str, help: str) -> Any:
    """A field that holds a secret (a password, a URL with one, a token):
    also read from the file ``<PREFIX><FIELD_NAME>_FILE`` names."""
    return field(default=default, metadata={"help": help, "secret": True})


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


def _secret_from_file(name: str, env: Mapping[str, str]) -> str | None:
    """The value in the file ``<name>_FILE`` names (trailing newline dropped),
    None when that is unset; both set is an error (which one wins?)."""
    path = env.get(f"{name}_FILE", "")
    if not path:
        return None
    if name in env:
        raise SettingsError(f"{name} and {name}_FILE are both set; keep one")
    try:
        return open(path, encoding="utf-8").read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{name}_FILE={path!r} cannot be read: {exc}") from None


def _parse(kind: Any, raw: str, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # X | None
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw == "":
            return None
        return _parse(args[0], raw, name)
    if origin is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    return raw


def _old_value(f: dataclasses.Field[Any], kind: Any, raw: str, was: str) -> Any:
    """A value given under a setting's old name, in the new name's unit where
    the unit changed (metadata ``was_unit``: how many old units make a new
    one, e.g. bytes per MB; rounded up, so a limit never shrinks)."""
    unit = f.metadata.get("was_unit")
    if not unit:
        return _parse(kind, raw, was)
    return math.ceil(_parse(int, raw, was) / unit)


def env_name(prefix: str, field_name: str) -> str:
    return f"{prefix}{field_name.upper()}"


def load_settings(
    cls: type[T],
    prefix: str,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    description: str | None = None,
) -> T:
    """Builds ``cls`` from env vars, then flags in ``argv`` (None: no flags parsed)."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = env_name(prefix, f.name)
        secret = _secret_from_file(name, env) if f.metadata.get("secret") else None
        was = env_name(prefix, f.metadata["was"]) if f.metadata.get("was") else ""
        if secret is not None:
            values[f.name] = _parse(hints[f.name], secret, f"{name}_FILE")
        elif name in env:
            values[f.name] = _parse(hints[f.name], env[name], name)
        elif was in env:  # an older name (CHANGELOG.md): still read, said once
            values[f.name] = _old_value(f, hints[f.name], env[was], was)
            log.warning("%s is now called %s; the old name still works for now", was, name)
    if argv is not None:
        parser = argparse.ArgumentParser(description=description)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            name = env_name(prefix, f.name)
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                default=None,
                help=f"{f.metadata.get('help', '')} (env {name})",
            )
        parsed = parser.parse_args(list(argv))
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            raw = getattr(parsed, f.name)
            if raw is not None:
                values[f.name] = _parse(hints[f.name], raw, "--" + f.name.replace("_", "-"))
    settings = cls(**values)
    if isinstance(settings, ServerSettings):
        settings.check_server(prefix)
    check = getattr(settings, "validate", None)
    if callable(check):
        check()
    return settings


def settings_table(cls: type, prefix: str) -> list[tuple[str, str, str]]:
    """(env var, default, help) rows, for the configuration tables in docs/configuration.md."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else ""
        if isinstance(default, tuple):
            default = ",".join(default)
        text = f.metadata.get("help", "")
        if f.metadata.get("was"):
            text += f" (was {env_name(prefix, f.metadata['was'])})"
        if f.metadata.get("secret"):
            text += f"; or {env_name(prefix, f.name)}_FILE: a file that holds it"
        rows.append((env_name(prefix, f.name), str(default), text))
    return rows
