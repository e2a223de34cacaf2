"""Builds the gateway's objects and starts its server (used by __main__ and tests)."""

from __future__ import annotations

import logging

from gateway.clients import Backends
from gateway.jobs import JobManager
from gateway.orchestrator import Ingestor
from gateway.paths import AllowedRoots
from gateway.servicer import GatewayServicer
from gateway.settings import GatewaySettings
from imagesearch import logs
from imagesearch.server import RunningServer, start_server
from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


def start(settings: GatewaySettings) -> RunningServer:
    roots = AllowedRoots(settings.roots)
    backends = Backends(settings)
    ingestor = Ingestor(backends, settings.max_image_bytes)
    jobs = JobManager(settings, ingestor, roots)
    servicer = GatewayServicer(settings, backends, ingestor, jobs, roots)
    running = start_server(
        [lambda s: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        host=settings.host,
        port=settings.port,
        max_workers=settings.rpc_workers,
        max_message_bytes=settings.max_message_mb * 1024 * 1024,
    )
    running.on_stop.append(jobs.close)
    running.on_stop.append(backends.close)
    jobs.resume_interrupted()
    logs.event(
        log,
        "serving",
        service=SERVICE_NAME,
        port=running.port,
        embedder=settings.embedder_addr,
        index=settings.index_addr,
        allowed_roots=roots.describe(),
    )
    return running
