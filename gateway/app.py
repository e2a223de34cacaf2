"""Builds the gateway's objects and starts its server (used by __main__ and tests)."""

from __future__ import annotations

import logging
import threading

from gateway.auth import Tokens
from gateway.budget import ByteBudget
from gateway.clients import Backends
from gateway.jobs import JobManager
from gateway.orchestrator import ImageLimit, Ingestor
from gateway.paths import AllowedRoots
from gateway.servicer import GatewayServicer
from gateway.settings import GatewaySettings
from imagesearch import logs
from imagesearch.server import RunningServer, start_server
from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


def start(settings: GatewaySettings) -> RunningServer:
    roots = AllowedRoots(settings.roots)
    backends = Backends(settings)
    ingestor = Ingestor(backends, ImageLimit(settings.max_image_bytes), settings.thumbnail_px)
    inflight = ByteBudget(settings.max_total_inflight_bytes)  # all streams and jobs
    jobs = JobManager(settings, ingestor, roots, inflight)
    tokens = Tokens(settings.tokens_file) if settings.tokens_file else None
    servicer = GatewayServicer(
        settings,
        backends,
        ingestor,
        jobs,
        roots,
        inflight,
        caller_role=tokens.caller_role if tokens is not None else None,
    )
    running = start_server(
        [lambda s: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, s)],
        [SERVICE_NAME],
        **settings.server_options(),
        serving=False,
        live=True,
        max_send_bytes=max(settings.max_message_mb * 1024 * 1024, settings.max_image_bytes)
        + 1024 * 1024,  # GetImage answers hold a whole image
        authorize=tokens.authorize if tokens is not None else None,
    )
    if tokens is not None:
        running.on_reload.append(tokens.reload)
    else:
        logs.event(
            log,
            "unauthenticated",
            level=logging.WARNING,
            note="no GATEWAY_TOKENS_FILE: every caller that reaches this port may search, "
            "index, delete and drop; keep it on loopback or set a tokens file",
        )
    running.on_stop.append(jobs.close)
    running.on_stop.append(backends.close)
    jobs.resume_interrupted()
    threading.Thread(
        target=_ready_when_backends_serve, args=(backends, running), name="readiness", daemon=True
    ).start()
    logs.event(
        log,
        "serving",
        service=SERVICE_NAME,
        port=running.port,
        embedder=settings.embedder_addr,
        index=settings.index_addr,
        allowed_roots=roots.describe(),
        tls="on" if settings.tls_cert else "off",
        backends_tls="mTLS"
        if settings.backend_tls_cert
        else ("on" if settings.backend_tls_ca else "off"),
        tokens=len(tokens) if tokens is not None else "none",
    )
    return running


def _ready_when_backends_serve(backends: Backends, running: RunningServer) -> None:
    """The gateway's service turns SERVING once the embedder and the index
    have both answered SERVING (readiness); the empty name, for liveness,
    is SERVING from the start. Calls that arrive earlier wait for their
    backend (wait-for-ready) instead of failing."""
    if backends.wait_serving():
        running.set_serving(True)
        logs.event(log, "ready", service=SERVICE_NAME, note="embedder and index answered SERVING")
