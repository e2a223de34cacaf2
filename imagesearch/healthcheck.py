"""``python -m imagesearch.healthcheck PORT [SERVICE]``: exit 0 when the gRPC
server on localhost:PORT reports SERVING (for Docker HEALTHCHECK and probes)."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagesearch.channels import plain_channel


def check(
    port: int,
    service: str = "",
    timeout: float = 3.0,
    credentials: grpc.ChannelCredentials | None = None,
    host: str = "127.0.0.1",
) -> bool:
    """``credentials``: over TLS (the port of a service with a certificate)."""
    with plain_channel(f"{host}:{port}", credentials) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit():
        print("usage: python -m imagesearch.healthcheck PORT [SERVICE]", file=sys.stderr)
        return 2
    ok = check(int(argv[0]), argv[1] if len(argv) > 1 else "")
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
