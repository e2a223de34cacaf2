"""Client channels with the service config every caller wants: round-robin
over all addresses a name resolves to, and retries of UNAVAILABLE with
exponential backoff for the calls that are safe to repeat."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

# Tries of a call answered UNAVAILABLE (the first included), within its deadline.
RETRY_ATTEMPTS = 3


def service_config(
    services: Sequence[str],
    attempts: int = RETRY_ATTEMPTS,
    methods: Sequence[tuple[str, str]] = (),
    health_service: str = "",
) -> str:
    """Retries every method of ``services``, plus the (service, method) pairs
    in ``methods``. With ``health_service``, calls go only to the replicas
    whose health (watched over each connection) says SERVING for it: one
    that drains or warms up gets none."""
    names: list[dict[str, str]] = [{"service": s} for s in services]
    names += [{"service": s, "method": m} for s, m in methods]
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_service:
        config["healthCheckConfig"] = {"serviceName": health_service}
    if names:
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": max(2, min(attempts, 5)),
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def plain_channel(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A channel without a service config (one-off calls: health checks,
    start-up probes), over TLS when ``credentials`` are given."""
    if credentials is not None:
        return grpc.secure_channel(target, credentials)
    return grpc.insecure_channel(target)


def make_channel(
    target: str,
    services: Sequence[str],
    *,
    max_message_bytes: int = 64 * 1024 * 1024,
    retry_attempts: int = RETRY_ATTEMPTS,
    methods: Sequence[tuple[str, str]] = (),
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str = "",
    health_checked: bool = False,
) -> grpc.Channel:
    """A channel to ``target`` (``host:port``, ``dns:///name:port`` or
    ``ipv4:127.0.0.1:1,127.0.0.1:2``), over TLS when ``credentials`` are given;
    ``server_name``: the name expected in the server's certificate, when it
    is not the target's host; ``health_checked``: calls go only to replicas
    whose health says SERVING for ``services[0]``."""
    health = services[0] if health_checked and services else ""
    options = [
        ("grpc.service_config", service_config(services, retry_attempts, methods, health)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        # A backend that comes back is used again within ~2 s, not after
        # gRPC's default backoff of up to 2 minutes.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        # Subchannels of its own: a new channel to an address that an earlier
        # channel saw refused (a server restarted on the same port) connects
        # at once instead of inheriting that channel's reconnect backoff.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=options)
    return grpc.insecure_channel(target, options=options)
