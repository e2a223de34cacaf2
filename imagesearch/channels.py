"""Client channels with the service config every caller wants: round-robin
over all addresses a name resolves to, and retries of UNAVAILABLE with
exponential backoff (safe here: every call we retry is idempotent)."""

from __future__ import annotations

import json

import grpc


def service_config(services: list[str], attempts: int = 5) -> str:
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": s} for s in services],
                    "retryPolicy": {
                        "maxAttempts": max(2, min(attempts, 5)),
                        "initialBackoff": "0.2s",
                        "maxBackoff": "3s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def make_channel(
    target: str,
    services: list[str],
    *,
    max_message_bytes: int = 64 * 1024 * 1024,
    retry_attempts: int = 5,
) -> grpc.Channel:
    """An insecure channel to ``target`` (``host:port``, ``dns:///name:port`` or
    ``ipv4:127.0.0.1:1,127.0.0.1:2``)."""
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.service_config", service_config(services, retry_attempts)),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            # A backend that comes back is used again within ~2 s, not after
            # gRPC's default backoff of up to 2 minutes.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ],
    )
