"""``imgsearch up``: the three services and the HTTP face as separate
processes on the embedded defaults (Milvus Lite and SQLite under the data
folder); waits for their health, prints the endpoints, stops them all on
Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from imagesearch.channels import plain_channel
from imagesearch.healthcheck import check as healthy
from imagesearch.tls import GATEWAY_CLIENT_NAME, ClientTls, LocalPki, local_pki
from imagesearch.v1 import embedder_pb2, embedder_pb2_grpc


@dataclass
class Service:
    name: str
    module: str
    service: str  # the gRPC service whose health says "ready" ("": HTTP /healthz)
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    started: float = 0.0  # when the current process was started (monotonic)
    restarts: int = 0  # restarts in a row without a quiet RESTART_RESET_S
    due: float | None = None  # when a dead process is started again


# A dead service is started again after 1 s, doubling up to 30 s while it keeps dying.
RESTART_MIN_S, RESTART_MAX_S, RESTART_RESET_S = 1.0, 30.0, 60.0
# The embedders of --with models listen on the default embedder's port + 10, 11, ...
EXTRA_EMBEDDER_OFFSET = 10
# Settings of the default embedder's model that another model must not inherit.
MODEL_SETTINGS = (
    "EMBEDDER_WEIGHTS",
    "EMBEDDER_POOLING",
    "EMBEDDER_GEM_P",
    "EMBEDDER_IMAGE_SIZE",
    "EMBEDDER_RESIZE",
    "EMBEDDER_METRICS_PORT",
)


# glibc's largest mmap threshold, for the embedders: freed buffers up to
# this size stay in the heap, so a batch's activations reuse the pages of the
# one before instead of being mapped and zero-filled again (with 128 KiB, 30%
# of an int8 embedder's CPU went to page faults; an ingest of 256 photos on
# 2 cores ran 16% faster, its peak RSS 0.3-0.7 GiB higher: bench/RESULTS.md).
EMBEDDER_MMAP_THRESHOLD = 32 * 1024 * 1024


def embedder_environment(
    env: Mapping[str, str], user: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """``env`` for an embedder process: EMBEDDER_MMAP_THRESHOLD, unless the
    user's own environment sets MALLOC_MMAP_THRESHOLD_."""
    own = dict(env)
    if "MALLOC_MMAP_THRESHOLD_" not in user:
        own["MALLOC_MMAP_THRESHOLD_"] = str(EMBEDDER_MMAP_THRESHOLD)
    return own


def extra_embedders(
    models: Sequence[str], env: dict[str, str], dial: str, embedder_port: int
) -> list[Service]:
    """One embedder process per --with model, and GATEWAY_EMBEDDERS (set in
    ``env``) routing each model's collections to it."""
    services, routes = [], []
    for n, model in enumerate(models):
        port = embedder_port + EXTRA_EMBEDDER_OFFSET + n
        own = {k: v for k, v in embedder_environment(env).items() if k not in MODEL_SETTINGS}
        own.update(EMBEDDER_MODEL=model, EMBEDDER_PORT=str(port))
        services.append(
            Service(f"embedder-{model}", "embedder_service", "EmbedderService", port, own)
        )
        routes.append(f"{model}={dial}:{port}")
    if routes:  # after any the user set
        env["GATEWAY_EMBEDDERS"] = ";".join(filter(None, [env.get("GATEWAY_EMBEDDERS"), *routes]))
    return services


def spawn(svc: Service, data: Path) -> None:
    """Starts (or starts again) the service's process, appending to its log."""
    assert svc.log is not None
    with svc.log.open("ab") as out:
        svc.proc = subprocess.Popen(
            [sys.executable, "-m", svc.module],
            env=svc.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(data.parent),
        )
    svc.started = time.monotonic()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass(frozen=True)
class Reach:
    """How ``up`` itself reaches the services it started: the address it
    dials, and the gateway's client certificate and the local CA under TLS."""

    host: str  # where the services listen
    dial: str  # where they are dialled
    credentials: grpc.ChannelCredentials | None = None
    https: ssl.SSLContext | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.https is not None else "http"

    def where(self, svc: Service) -> str:
        return (
            f"{self.scheme}://{self.dial}:{svc.port}/"
            if not svc.service
            else f"{self.host}:{svc.port}"
        )

    def healthy(self, svc: Service) -> bool:
        if not svc.service:
            return web_healthy(f"{self.scheme}://{self.dial}:{svc.port}/healthz", self.https)
        return healthy(
            svc.port, f"imagesearch.v1.{svc.service}", credentials=self.credentials, host=self.dial
        )


def dial_address(host: str) -> str:
    """Where services listening on ``host`` are dialled: loopback when they
    listen everywhere, else the one address they listen on."""
    dial = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]", "") else host
    return f"[{dial}]" if ":" in dial and not dial.startswith("[") else dial


def environment(
    data: Path, host: str, dial: str, gateway_port: int, embedder_port: int, index_port: int,
    web_port: int | None,
) -> dict[str, str]:  # fmt: skip
    """The services' environment. Ports come resolved from flags or env; the
    storage and fallback defaults give way to whatever the user's environment
    sets (e.g. a real Milvus)."""
    env = dict(os.environ)
    env.setdefault("EMBEDDER_WEIGHTS_FALLBACK", "bundled")
    # Freed image buffers go back to the system at once instead of fragmenting
    # per-thread arenas: about half the peak memory with camera-size photos
    # (the embedders keep larger ones: embedder_environment).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.setdefault("INDEX_MILVUS_URI", str(data / "milvus.db"))
    env.setdefault("INDEX_DATABASE_URL", f"sqlite:///{data / 'meta.db'}")
    env.setdefault("GATEWAY_DATA_DIR", str(data))
    env.update(
        EMBEDDER_HOST=host,
        INDEX_HOST=host,
        GATEWAY_HOST=host,
        EMBEDDER_PORT=str(embedder_port),
        INDEX_PORT=str(index_port),
        GATEWAY_PORT=str(gateway_port),
        GATEWAY_EMBEDDER_ADDR=f"{dial}:{embedder_port}",
        GATEWAY_INDEX_ADDR=f"{dial}:{index_port}",
        WEB_HOST=host,
        WEB_PORT=str(web_port or 0),
        WEB_GATEWAY_ADDR=f"{dial}:{gateway_port}",
    )
    return env


def with_tls(data: Path, host: str, dial: str, env: dict[str, str]) -> Reach:
    """Every port over TLS from a local CA (made once under ``data``); sets
    the services' TLS settings in ``env``."""
    pki, made = local_pki(data / "tls", [host])
    env.update(tls_env(pki))
    client = ClientTls(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    print(
        f"imgsearch up: TLS on every port ({'made a local CA' if made else 'local CA'} "
        f"in {pki.folder}); clients trust {pki.ca}: imgsearch --ca {pki.ca} "
        f"(or IMGSEARCH_CA), grpcurl -cacert {pki.ca}",
        flush=True,
    )
    return Reach(host, dial, client.credentials(), ssl.create_default_context(cafile=str(pki.ca)))


def wait_healthy(
    services: Sequence[Service], reach: Reach, stop: threading.Event, timeout: float, logs: Path
) -> bool:
    """Waits until every service answers healthy, announcing each in
    dependency order (the gateway, then the web face, last). False when one
    exits or the time runs out (said on stderr) or ``stop`` is set."""
    started = time.monotonic()
    waiting = list(services)
    slow_said = False
    while waiting and not stop.is_set():
        if not slow_said and time.monotonic() - started > 15:
            slow_said = True
            print(
                f"imgsearch up: still starting ({', '.join(s.name for s in waiting)}); the "
                "embedder loads its model and, with EMBEDDER_COMPILE=auto, compiles it: "
                f"a minute or two the first time, seconds later. Logs: {logs}",
                flush=True,
            )
        for svc in list(waiting):
            assert svc.proc is not None and svc.log is not None
            if svc.proc.poll() is not None:
                print(
                    f"imgsearch up: {svc.name} exited with code {svc.proc.returncode} while "
                    f"starting; last lines of {svc.log}:\n{tail(svc.log)}",
                    file=sys.stderr,
                    flush=True,
                )
                return False
            if svc is waiting[0] and reach.healthy(svc):
                print(f"imgsearch up: {svc.name:8s} SERVING on {reach.where(svc)}", flush=True)
                waiting.remove(svc)
        if time.monotonic() - started > timeout:
            print(
                f"imgsearch up: {', '.join(s.name for s in waiting)} not healthy after "
                f"{timeout:.0f}s; see {logs}",
                file=sys.stderr,
                flush=True,
            )
            return False
        stop.wait(0.5)
    return not stop.is_set()


def supervise(services: Sequence[Service], stop: threading.Event, data: Path) -> None:
    """Until ``stop``: a service that dies is started again, with a pause that
    doubles while it keeps dying (up to RESTART_MAX_S) and resets once it has
    run for RESTART_RESET_S; the others keep serving."""
    while not stop.is_set():
        for svc in services:
            assert svc.proc is not None
            if svc.proc.poll() is None:
                if svc.restarts and time.monotonic() - svc.started > RESTART_RESET_S:
                    svc.restarts = 0
                continue
            if svc.due is None:
                pause = min(RESTART_MIN_S * 2**svc.restarts, RESTART_MAX_S)
                svc.due = time.monotonic() + pause
                print(
                    f"imgsearch up: {svc.name} exited with code {svc.proc.returncode}; "
                    f"restarting it in {pause:.0f}s (the others keep serving). Last lines "
                    f"of {svc.log}:\n{tail(svc.log) if svc.log else ''}",
                    file=sys.stderr,
                    flush=True,
                )
            elif time.monotonic() >= svc.due:
                svc.due = None
                svc.restarts += 1
                spawn(svc, data)
                print(f"imgsearch up: {svc.name} restarted (pid {svc.proc.pid})", flush=True)
        stop.wait(0.5)


def run(
    data_dir: str,
    gateway_port: int,
    embedder_port: int,
    index_port: int,
    host: str = "127.0.0.1",
    startup_timeout: float = 600,
    tls: bool = False,
    web_port: int | None = 8080,
    with_models: Sequence[str] = (),
    jobs_url: str = "",
) -> int:
    """``host``: where all services (and their metrics) listen; loopback
    unless told otherwise. ``tls``: every port over TLS (HTTPS for the web
    face), the gateway's calls to the embedder and index over mTLS.
    ``web_port``: the HTTP face's port (None: no web face). ``with_models``:
    more embedders, one per model (e.g. tirg_css), beside the default one.
    ``jobs_url``: jobs on that NATS server (empty: GATEWAY_JOBS_URL as the
    environment says, by default the local store)."""
    dial = dial_address(host)
    data = Path(data_dir).resolve()
    (data / "images").mkdir(parents=True, exist_ok=True)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    env = environment(data, host, dial, gateway_port, embedder_port, index_port, web_port)
    if jobs_url:
        env["GATEWAY_JOBS_URL"] = jobs_url
    reach = with_tls(data, host, dial, env) if tls else Reach(host, dial)
    extras = extra_embedders(with_models, env, dial, embedder_port)
    services = [
        Service(
            "embedder",
            "embedder_service",
            "EmbedderService",
            embedder_port,
            embedder_environment(env),
        ),
        *extras,
        Service("index", "index_service", "IndexService", index_port, env),
        Service("gateway", "gateway", "GatewayService", gateway_port, env),
    ]
    if web_port is not None:
        services.append(Service("web", "web_service", "", web_port, env))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"imgsearch up: data in {data}, logs in {logs}", flush=True)
    for svc in services:
        svc.log = logs / f"{svc.name}.log"
        spawn(svc, data)
    try:
        if not wait_healthy(services, reach, stop, startup_timeout, logs):
            return 0 if stop.is_set() else 1
        for port in [embedder_port, *(svc.port for svc in extras)]:
            describe_model(dial, port, reach.credentials)
        page = f", web page at {reach.scheme}://{dial}:{web_port}/" if web_port is not None else ""
        print(
            f"imgsearch up: ready. Gateway at {host}:{gateway_port}"
            f"{' (TLS)' if tls else ''}{page}. "
            f"Try: imgsearch index {data / 'images'}  (Ctrl-C stops everything)",
            flush=True,
        )
        supervise(services, stop, data)  # only Ctrl-C or SIGTERM stops everything
        return 0
    finally:
        shutdown(services)


def web_healthy(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def tls_env(pki: LocalPki) -> dict[str, str]:
    """Settings for TLS on every port, mTLS from the gateway inward; the web
    face serves HTTPS and verifies the gateway."""
    env = {}
    for prefix in ("EMBEDDER_", "INDEX_", "GATEWAY_"):
        env[f"{prefix}TLS_CERT"] = str(pki.server_cert)
        env[f"{prefix}TLS_KEY"] = str(pki.server_key)
    env["EMBEDDER_TLS_CLIENT_CA"] = env["INDEX_TLS_CLIENT_CA"] = str(pki.ca)
    # Only the gateway's certificate, not any other the CA signed.
    env["EMBEDDER_TLS_CLIENT_NAMES"] = env["INDEX_TLS_CLIENT_NAMES"] = GATEWAY_CLIENT_NAME
    env["GATEWAY_BACKEND_TLS_CA"] = str(pki.ca)
    env["GATEWAY_BACKEND_TLS_CERT"] = str(pki.client_cert)
    env["GATEWAY_BACKEND_TLS_KEY"] = str(pki.client_key)
    env["WEB_TLS_CERT"] = str(pki.server_cert)
    env["WEB_TLS_KEY"] = str(pki.server_key)
    env["WEB_GATEWAY_CA"] = str(pki.ca)
    return env


def describe_model(
    host: str, port: int, credentials: grpc.ChannelCredentials | None = None
) -> None:
    with plain_channel(f"{host}:{port}", credentials) as ch:
        info = embedder_pb2_grpc.EmbedderServiceStub(ch).GetModelInfo(
            embedder_pb2.EmbedderServiceGetModelInfoRequest(), timeout=10
        )
    print(
        f"imgsearch up: model {info.model} ({info.dim}-d, weights {info.weights}, "
        f"{info.device}, {info.dtype})",
        flush=True,
    )
    if info.note.startswith("FALLBACK"):
        print(
            "imgsearch up: NOTE: the default ResNet50 ImageNet weights could not be fetched, so "
            f"the embedder runs {info.model} with the bundled ImageNet weights instead. Put the "
            "ResNet50 weights in the torch cache or set EMBEDDER_WEIGHTS to use ResNet50.",
            flush=True,
        )
    elif not info.pretrained:
        print("imgsearch up: WARNING: random weights: results are meaningless.", flush=True)


def shutdown(services: list[Service], grace: float = 15.0) -> None:
    for svc in reversed(services):
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for svc in services:
        if svc.proc is None:
            continue
        try:
            svc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait()
    print("imgsearch up: stopped", flush=True)
