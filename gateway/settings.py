"""Gateway settings: env ``GATEWAY_*``, flags ``--name`` override."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from imagesearch.settings import (
    ServerSettings,
    SettingsError,
    check_client_tls,
    secret_field,
    server_field,
)
from imagesearch.tls import ClientTls


@dataclass(frozen=True)
class GatewaySettings(ServerSettings):
    env_prefix: ClassVar[str] = "GATEWAY_"
    port: int = server_field("port", 50051)
    rpc_workers: int = server_field("rpc_workers", 32)
    max_message_mb: int = server_field(
        "max_message_mb", 4, "largest gRPC message from clients (stream chunks)"
    )
    max_connection_age_s: float = server_field(
        "max_connection_age_s",
        0.0,
        "a client's connection is closed after this long (GOAWAY), and its calls still "
        "open SHUTDOWN_GRACE_S later are cut: off by default here, where uploads and "
        "job watches run for minutes",
    )
    embedder_addr: str = field(
        default="localhost:50052",
        metadata={
            "help": "embedder target; dns:///embedder:50052 or ipv4:h1:p1,h2:p2 for "
            "several replicas (round_robin)"
        },
    )
    embedders: str = field(
        default="",
        metadata={
            "help": "more embedders, one per model: 'tirg_css=host:port;resnet50=dns:///"
            "embedder:50052' (';' between pairs, so a target may list replicas). Each "
            "collection is embedded by the one serving its model; a new collection by the "
            "one its IndexImages/StartIndexJob `model` names, else GATEWAY_EMBEDDER_ADDR's"
        },
    )
    index_addr: str = field(
        default="localhost:50053",
        metadata={"help": "index target: the index writer (every write and Reconcile)"},
    )
    index_read_addr: str = field(
        default="",
        metadata={
            "help": "index readers (INDEX_ROLE=reader; dns:///index-reader:50053 for several) "
            "for Search, Count, ListCollections, GetThumbnail and GetImage; empty: "
            "GATEWAY_INDEX_ADDR. They see writes within their INDEX_READ_STALENESS_S"
        },
    )
    data_dir: str = field(default="./data", metadata={"help": "where job state is kept"})
    allowed_roots: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "comma-separated folders that StartIndexJob and Search by path may "
            "read (default: <data_dir>/images and the current directory)"
        },
    )
    default_collection: str = field(
        default="images", metadata={"help": "collection used when a request names none"}
    )
    default_top_k: int = field(default=10, metadata={"help": "top_k when a request says 0"})
    embed_batch: int = field(default=32, metadata={"help": "images per Embed call"})
    job_concurrency: int = field(
        default=3,
        metadata={
            "help": "job chunks this gateway indexes at once, of any jobs (embedding one "
            "overlaps storing another); a chunk is GATEWAY_EMBED_BATCH files"
        },
    )
    max_walks: int = field(
        default=2,
        metadata={"was": "max_jobs", "help": "folder walks this gateway runs at once; others wait"},
    )
    max_active_jobs: int = field(
        default=100,
        metadata={
            "was": "max_queued_jobs",
            "help": "jobs running or waiting at once, in the whole job store; "
            "StartIndexJob past it is refused RESOURCE_EXHAUSTED",
        },
    )
    max_image_mb: int = field(default=32, metadata={"help": "largest image accepted"})
    thumbnail_px: int = field(
        default=256,
        metadata={
            "help": "longer side of the JPEG thumbnail stored with every indexed image "
            "(GetThumbnail; about 10 KB each); 0: none"
        },
    )
    max_inflight_mb: int = field(
        default=64,
        metadata={
            "help": "bytes of images one stream or one job holds at once; more waits for "
            "earlier ones"
        },
    )
    max_total_inflight_mb: int = field(
        default=128,
        metadata={
            "help": "bytes of images all streams and jobs hold at once; more waits. The "
            "gateway's memory peaks at several times this (each image exists as Python "
            "bytes, a protobuf message and gRPC buffers): 128 fits a 1 GiB pod"
        },
    )
    embed_call_mb: int = field(
        default=32,
        metadata={
            "help": "largest Embed call the gateway sends (also within the embedder's own "
            "limit, learned from GetModelInfo): smaller calls overlap transfer and decoding "
            "and hold less memory on both sides"
        },
    )
    max_queries: int = field(
        default=64, metadata={"help": "most queries in one Search (refused before any is read)"}
    )
    text_expand: int = field(
        default=3,
        metadata={
            "help": "search by words: the first text hits whose images expand the query "
            "(their look ranks the first 100 text hits again); 0: none, at most 20"
        },
    )
    # The deadline and retry policy (docs/concepts.md, "Deadlines and retries").
    backend_wait_s: float = field(
        default=60.0,
        metadata={
            "help": "longest a call waits for an embedder or index that is starting or "
            "down (gRPC wait-for-ready); then UNAVAILABLE naming it"
        },
    )
    call_timeout_s: float = field(
        default=300.0,
        metadata={
            "help": "longest one downstream call may run when the caller set no deadline "
            "(a caller's shorter deadline flows downstream as it is)"
        },
    )
    job_chunk_timeout_s: float = field(
        default=300.0,
        metadata={
            "was": "job_batch_timeout_s",
            "help": "deadline of each embed-and-store call of a job's chunk (a chunk over the "
            "byte budget goes in several); jobs have no caller",
        },
    )
    job_outage_s: float = field(
        default=300.0,
        metadata={
            "help": "how long a job retries a chunk, with backoff, while a backend is "
            "UNAVAILABLE or too slow, before the job ends FAILED (ResumeJob continues it)"
        },
    )
    max_errors_kept: int = field(
        default=1000,
        metadata={"help": "file errors kept per job, and listed per IndexImages answer"},
    )
    job_retention_h: float = field(
        default=168.0,
        metadata={
            "help": "hours a finished job is kept (state, file list) after its last change; "
            "older ones are forgotten at start-up and as new jobs start or are listed"
        },
    )
    max_finished_jobs: int = field(
        default=10_000,
        metadata={
            "help": "finished jobs kept at most, whatever their age (the least recently "
            "changed are forgotten first), so that listing and starting jobs stay cheap"
        },
    )
    resume_jobs: bool = field(
        default=True,
        metadata={
            "help": "local job store: queue again at start what interrupted jobs left "
            "(false: they end FAILED; ResumeJob continues them). With NATS the queue keeps it"
        },
    )
    jobs_url: str = secret_field(
        "",
        "where jobs live: empty for files under GATEWAY_DATA_DIR (one gateway), "
        "or nats://host:4222 for NATS JetStream (nats://user:password@host:4222 with a "
        "password), shared by every gateway with the same URL and GATEWAY_JOBS_PREFIX: all "
        "of them work on every job's chunks, and any of them lists, watches, cancels and "
        "resumes any job",
    )
    jobs_prefix: str = field(
        default="imagesearch",
        metadata={
            "help": "names the NATS stream and buckets (<prefix>_work, <prefix>_jobs, "
            "<prefix>_chunks), so deployments can share one NATS"
        },
    )
    jobs_ack_wait_s: float = field(
        default=60.0,
        metadata={
            "help": "with NATS: a walk or chunk whose gateway stopped (no word from it for "
            "this long; a working gateway speaks every third of it) goes to another"
        },
    )
    jobs_max_deliver: int = field(
        default=20,
        metadata={
            "help": "a walk or chunk given out this often without being done (its gateways "
            "kept dying on it, or its store calls kept failing; with NATS each try waits "
            "longer, 1 s growing to 60 s) is given up: a chunk's files become errors on the "
            "job, a walk fails it, and the job ends"
        },
    )
    jobs_replicas: int = field(
        default=1,
        metadata={"help": "with NATS: copies of the job stream and buckets (1, 3 or 5)"},
    )
    jobs_creds: str = field(
        default="", metadata={"help": "with NATS: a .creds file (user JWT and NKey seed)"}
    )
    jobs_user: str = field(
        default="", metadata={"help": "with NATS: the user of GATEWAY_JOBS_PASSWORD"}
    )
    jobs_password: str = secret_field(
        "", "with NATS: the password of GATEWAY_JOBS_USER (instead of one in the URL)"
    )
    jobs_tls_ca: str = field(
        default="", metadata={"help": "with NATS: PEM CA that signed the server's certificate"}
    )
    jobs_tls_cert: str = field(
        default="", metadata={"help": "with NATS: this gateway's PEM client certificate"}
    )
    jobs_tls_key: str = field(
        default="", metadata={"help": "with NATS: the key of GATEWAY_JOBS_TLS_CERT"}
    )
    # Security (docs/security.md).
    tokens_file: str = field(
        default="",
        metadata={
            "help": "file of ROLE:TOKEN lines (roles read, write, admin): every call needs "
            "'authorization: Bearer TOKEN' with a role that allows it; re-read on SIGHUP. "
            "Empty: no authentication (said at start-up)"
        },
    )
    backend_tls_ca: str = field(
        default="",
        metadata={
            "help": "PEM CA that signed the embedder's and index's certificates: "
            "talk TLS to them (empty: plaintext)"
        },
    )
    backend_tls_cert: str = field(
        default="",
        metadata={"help": "PEM client certificate the gateway shows the embedder and index (mTLS)"},
    )
    backend_tls_key: str = field(
        default="", metadata={"help": "PEM private key of GATEWAY_BACKEND_TLS_CERT"}
    )
    backend_tls_server_name: str = field(
        default="",
        metadata={
            "help": "host name expected in the backends' certificates when it differs from "
            "the address dialled (e.g. an IP address)"
        },
    )

    @property
    def backend_tls(self) -> ClientTls | None:
        """How the gateway talks to the embedder and index: TLS when a CA is set."""
        if not self.backend_tls_ca:
            return None
        return ClientTls(self.backend_tls_ca, self.backend_tls_cert, self.backend_tls_key)

    @property
    def embedder_routes(self) -> dict[str, str]:
        """GATEWAY_EMBEDDERS as {model name: target}."""
        routes: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in self.embedders.split(";"))):
            name, sep, target = pair.partition("=")
            name, target = name.strip(), target.strip()
            if not sep or not name or not target:
                raise SettingsError(
                    f"GATEWAY_EMBEDDERS: {pair!r} is not MODEL=TARGET "
                    "(e.g. tirg_css=localhost:50055)"
                )
            if name in routes:
                raise SettingsError(f"GATEWAY_EMBEDDERS names {name} twice")
            routes[name] = target
        return routes

    @property
    def jobs_dir(self) -> Path:
        return Path(self.data_dir) / "jobs"

    @property
    def roots(self) -> list[Path]:
        raw = self.allowed_roots or (str(Path(self.data_dir) / "images"), os.getcwd())
        return [Path(r).expanduser().resolve() for r in raw]

    @property
    def max_image_bytes(self) -> int:
        return self.max_image_mb * 1024 * 1024

    @property
    def max_inflight_bytes(self) -> int:
        return self.max_inflight_mb * 1024 * 1024

    @property
    def max_total_inflight_bytes(self) -> int:
        return self.max_total_inflight_mb * 1024 * 1024

    def validate(self) -> None:
        self.embedder_routes  # noqa: B018 -- raises on a malformed GATEWAY_EMBEDDERS
        if bool(self.jobs_user) != bool(self.jobs_password):
            raise SettingsError("GATEWAY_JOBS_USER and GATEWAY_JOBS_PASSWORD go together")
        check_client_tls(
            "GATEWAY_BACKEND_TLS", self.backend_tls_ca, self.backend_tls_cert, self.backend_tls_key
        )
        if self.embed_batch < 1 or self.job_concurrency < 1 or self.max_walks < 1:
            raise SettingsError("GATEWAY_EMBED_BATCH, _JOB_CONCURRENCY and _MAX_WALKS must be >= 1")
        if self.max_active_jobs < self.max_walks:
            raise SettingsError("GATEWAY_MAX_ACTIVE_JOBS must be at least GATEWAY_MAX_WALKS")
        if not 0 <= self.text_expand <= 20:
            raise SettingsError("GATEWAY_TEXT_EXPAND must be between 0 and 20")
        if not 1 <= self.default_top_k <= 1000:
            raise SettingsError("GATEWAY_DEFAULT_TOP_K must be between 1 and 1000")
        for name in ("backend_wait_s", "call_timeout_s", "job_chunk_timeout_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"GATEWAY_{name.upper()} must be > 0")
        if not 1 <= self.max_inflight_mb <= self.max_total_inflight_mb:
            raise SettingsError(
                "GATEWAY_MAX_INFLIGHT_MB must be >= 1 and at most GATEWAY_MAX_TOTAL_INFLIGHT_MB"
            )
        if self.max_queries < 1:
            raise SettingsError("GATEWAY_MAX_QUERIES must be >= 1")
        if self.job_outage_s < 0:
            raise SettingsError("GATEWAY_JOB_OUTAGE_S must be >= 0")
        if self.jobs_url and not self.jobs_url.startswith(("nats://", "tls://")):
            raise SettingsError(
                f"GATEWAY_JOBS_URL={self.jobs_url!r}: use nats://host:port (or tls://), "
                "or leave it empty for jobs in GATEWAY_DATA_DIR"
            )
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.jobs_prefix):
            raise SettingsError("GATEWAY_JOBS_PREFIX must be 1-64 letters, digits, _ or -")
        if self.max_finished_jobs < 1:
            raise SettingsError("GATEWAY_MAX_FINISHED_JOBS must be >= 1")
        if self.jobs_ack_wait_s < 1 or self.jobs_max_deliver < 1:
            raise SettingsError("GATEWAY_JOBS_ACK_WAIT_S and _MAX_DELIVER must be >= 1")
        if self.jobs_replicas not in (1, 3, 5):
            raise SettingsError("GATEWAY_JOBS_REPLICAS must be 1, 3 or 5")
        check_client_tls(
            "GATEWAY_JOBS_TLS", self.jobs_tls_ca, self.jobs_tls_cert, self.jobs_tls_key
        )
