"""Index settings: env ``INDEX_*``, flags ``--name`` override."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from imagesearch.settings import (
    ServerSettings,
    SettingsError,
    check_client_tls,
    secret_field,
    server_field,
)

METRICS = ("IP", "COSINE", "L2")


def is_lite(uri: str) -> bool:
    """A Milvus Lite file, not a server's address."""
    return not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "DISKANN", "AUTOINDEX")
LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")
SEGMENT_MB = 512  # Milvus' default segment size: an IVF index is built per segment


def derived_nlist(dim: int) -> int:
    """IVF clusters for a segment of ``dim``-d float vectors: about 4 x the
    square root of the rows a full segment holds (Milvus builds the index
    per segment, so the collection's size does not change it)."""
    rows = SEGMENT_MB * 1024 * 1024 // (dim * 4)
    return max(16, min(65536, round(4 * rows**0.5)))


def derived_pq_m(dim: int) -> int:
    """IVF_PQ sub-vectors: 8 dimensions each (the largest divisor of ``dim``
    up to dim / 8 when 8 does not divide it)."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1


@dataclass(frozen=True)
class IndexSettings(ServerSettings):
    env_prefix: ClassVar[str] = "INDEX_"
    port: int = server_field("port", 50053)
    max_connection_age_s: float = server_field(
        "max_connection_age_s",
        0.0,
        "a client's connection is closed after this long (GOAWAY), and its calls still "
        "open SHUTDOWN_GRACE_S later are cut: off by default here, where a Reconcile of "
        "a large collection runs for minutes",
    )
    max_message_mb: int = server_field("max_message_mb", 128)
    rpc_workers: int = server_field(
        "rpc_workers",
        16,
        "threads that run unary calls (streams have their own); Search runs on the event "
        "loop instead, its SQL reads and re-ranks (INDEX_MILVUS_REFINE) on asyncio's own threads",
    )
    milvus_uri: str = field(
        default="./data/milvus.db",
        metadata={"help": "Milvus Lite file (*.db) or server URI (http://host:19530)"},
    )
    milvus_token: str = secret_field("", "Milvus token (user:password or API key)")
    milvus_user: str = field(default="", metadata={"help": "Milvus user (secured servers)"})
    milvus_password: str = secret_field("", "Milvus password")
    milvus_db_name: str = field(default="", metadata={"help": "Milvus database (server only)"})
    milvus_prefix: str = field(
        default="", metadata={"help": "prefix of the Milvus collection names we own"}
    )
    milvus_consistency: str = field(
        default="Session",
        metadata={
            "help": "consistency of searches and reads: Session (sees this service's own "
            "writes without waiting, the index being the only writer), Strong, Bounded, "
            "Eventually; Reconcile always reads Strong"
        },
    )
    milvus_timeout_s: float = field(default=30.0, metadata={"help": "timeout of one Milvus call"})
    milvus_tls_ca: str = field(
        default="",
        metadata={"help": "PEM CA of the Milvus server's certificate: talk TLS to Milvus"},
    )
    milvus_tls_cert: str = field(
        default="", metadata={"help": "PEM client certificate for Milvus (mTLS; with the CA)"}
    )
    milvus_tls_key: str = field(default="", metadata={"help": "PEM key of INDEX_MILVUS_TLS_CERT"})
    milvus_tls_server_name: str = field(
        default="", metadata={"help": "name in Milvus' certificate, if not the URI's host"}
    )
    database_url: str = secret_field(
        "sqlite:///./data/meta.db",
        "SQLAlchemy URL: sqlite:///file.db or mysql+pymysql://user:pw@host/db",
    )
    database_tls_ca: str = field(
        default="",
        metadata={"help": "PEM CA of the MySQL server's certificate: require TLS to MySQL"},
    )
    database_tls_cert: str = field(
        default="", metadata={"help": "PEM client certificate for MySQL (with its key)"}
    )
    database_tls_key: str = field(
        default="", metadata={"help": "PEM key of INDEX_DATABASE_TLS_CERT"}
    )
    row_cache: int = field(
        default=100_000,
        metadata={
            "help": "ready image rows kept in memory for searches (0: off); the writer "
            "drops a collection's rows when it writes to it, a reader once it sees the "
            "collection's write count change (within INDEX_READ_STALENESS_S)"
        },
    )
    row_cache_mb: int = field(
        default=256,
        metadata={
            "help": "memory the row cache may use, estimated (images with many or long "
            "paths cost more); whichever of this and INDEX_ROW_CACHE is reached first "
            "empties it"
        },
    )
    max_paths_per_hit: int = field(
        default=16,
        metadata={"help": "paths listed per search hit (oldest first); the rest are counted"},
    )
    table_prefix: str = field(default="imgsearch_", metadata={"help": "prefix of our SQL tables"})
    milvus_metric: str = field(
        default="IP",
        metadata={"was": "metric", "help": "IP, COSINE or L2 (vectors are unit length)"},
    )
    milvus_index_type: str = field(
        default="FLAT",
        metadata={
            "was": "index_type",
            "help": "FLAT, IVF_FLAT, IVF_SQ8, IVF_PQ, HNSW, DISKANN (the graph on the query "
            "nodes' disks, PQ codes in memory) or AUTOINDEX (Milvus Lite: FLAT, IVF_FLAT, "
            "AUTOINDEX)",
        },
    )
    milvus_nlist: int = field(
        default=1024,
        metadata={
            "was": "nlist",
            "help": "IVF: clusters per segment; 0: derived from the collection's dim (4 x "
            "the square root of the rows a 512 MiB segment holds: 1024 for 2048-d, 1295 for 1280-d)",
        },
    )
    milvus_pq_m: int = field(
        default=0,
        metadata={"was": "pq_m", "help": "IVF_PQ: sub-vectors per vector; 0: one per 8 dimensions"},
    )
    milvus_refine: int = field(
        default=0,
        metadata={
            "was": "refine",
            "help": "candidates re-ranked on their stored vectors, per hit asked for: a "
            "search takes N x top_k from Milvus and orders them by their exact distance to "
            "the query (one read of their vectors more); 0: 8 for IVF_PQ, 1 (none) for the "
            "others",
        },
    )
    milvus_shards: int = field(
        default=1,
        metadata={
            "help": "shards of each new collection (Milvus server, 1-16): its writes spread "
            "over that many channels and data nodes; fixed when the collection is made"
        },
    )
    milvus_nprobe: int = field(
        default=16, metadata={"was": "nprobe", "help": "IVF: clusters searched"}
    )
    milvus_hnsw_m: int = field(default=16, metadata={"was": "hnsw_m", "help": "HNSW: M"})
    milvus_hnsw_ef_construction: int = field(
        default=200, metadata={"was": "hnsw_ef_construction", "help": "HNSW: efConstruction"}
    )
    milvus_hnsw_ef: int = field(
        default=128, metadata={"was": "hnsw_ef", "help": "HNSW: ef at search (raised to top_k)"}
    )
    milvus_diskann_search_list: int = field(
        default=100,
        metadata={
            "was": "diskann_search_list",
            "help": "DISKANN: search_list at search (raised to top_k)",
        },
    )
    max_items_per_upsert: int = field(default=4096, metadata={"help": "most items in one Upsert"})
    reconcile_on_start: bool = field(default=True, metadata={"help": "repair both stores at start"})
    role: str = field(
        default="writer",
        metadata={
            "help": "writer (the one index that writes its stores; takes the writer lock, "
            "runs Reconcile) or reader (any number beside it, on the same Milvus server and "
            "database: serves Search, Get, Count, ListCollections and GetThumbnails, refuses "
            "writes)"
        },
    )
    read_staleness_s: float = field(
        default=1.0,
        metadata={
            "help": "reader: the writer's changes (new rows, deletes, drops) are seen within "
            "this long (its cached rows of a collection the writer changed are dropped within "
            "this long; its Milvus reads ask for data this old)"
        },
    )

    @property
    def reader(self) -> bool:
        return self.role == "reader"

    def milvus_tls(self) -> dict[str, object]:
        """pymilvus' TLS keyword arguments (none: plaintext)."""
        if not self.milvus_tls_ca:
            return {}
        tls: dict[str, object] = {"secure": True}
        if self.milvus_tls_cert:  # two-way: pymilvus takes the CA as ca_pem_path
            tls.update(
                client_pem_path=self.milvus_tls_cert,
                client_key_path=self.milvus_tls_key,
                ca_pem_path=self.milvus_tls_ca,
            )
        else:
            tls["server_pem_path"] = self.milvus_tls_ca
        if self.milvus_tls_server_name:
            tls["server_name"] = self.milvus_tls_server_name
        return tls

    def database_tls(self) -> dict[str, str] | None:
        """PyMySQL's ``ssl`` argument (None: no TLS). With a CA, the server's
        certificate and host name are verified."""
        if not self.database_tls_ca:
            return None
        tls = {"ca": self.database_tls_ca}
        if self.database_tls_cert:
            tls.update(cert=self.database_tls_cert, key=self.database_tls_key)
        return tls

    def validate(self) -> None:
        check_client_tls(
            "INDEX_MILVUS_TLS", self.milvus_tls_ca, self.milvus_tls_cert, self.milvus_tls_key
        )
        check_client_tls(
            "INDEX_DATABASE_TLS",
            self.database_tls_ca,
            self.database_tls_cert,
            self.database_tls_key,
        )
        if self.database_tls_ca and not self.database_url.startswith("mysql"):
            raise SettingsError("INDEX_DATABASE_TLS_* applies to MySQL URLs only")
        if self.milvus_metric.upper() not in METRICS:
            raise SettingsError(
                f"INDEX_MILVUS_METRIC={self.milvus_metric!r}: use one of {', '.join(METRICS)}"
            )
        if self.milvus_index_type.upper() not in INDEX_TYPES:
            raise SettingsError(
                f"INDEX_MILVUS_INDEX_TYPE={self.milvus_index_type!r}: use one of {', '.join(INDEX_TYPES)}"
            )
        if is_lite(self.milvus_uri) and self.milvus_index_type.upper() not in LITE_INDEX_TYPES:
            raise SettingsError(
                f"INDEX_MILVUS_INDEX_TYPE={self.milvus_index_type!r} needs a Milvus server; Milvus Lite "
                f"builds {', '.join(LITE_INDEX_TYPES)}"
            )
        if not 1 <= self.milvus_shards <= 16:
            raise SettingsError("INDEX_MILVUS_SHARDS must be between 1 and 16")
        if not 0 <= self.milvus_refine <= 64:
            raise SettingsError("INDEX_MILVUS_REFINE must be between 0 (derived) and 64")
        if self.milvus_nlist < 0 or self.milvus_pq_m < 0:
            raise SettingsError(
                "INDEX_MILVUS_NLIST and INDEX_MILVUS_PQ_M must be >= 0 (0: derived)"
            )
        if self.milvus_consistency not in ("Session", "Strong", "Bounded", "Eventually"):
            raise SettingsError(
                f"INDEX_MILVUS_CONSISTENCY={self.milvus_consistency!r}: use Session, Strong, "
                "Bounded or Eventually"
            )
        if self.role not in ("writer", "reader"):
            raise SettingsError(f"INDEX_ROLE={self.role!r}: use writer or reader")
        if self.reader and is_lite(self.milvus_uri):
            raise SettingsError(
                "INDEX_ROLE=reader needs a Milvus server (INDEX_MILVUS_URI=http://host:19530): "
                "a Milvus Lite file is opened by one process, the writer"
            )
        if self.read_staleness_s <= 0:
            raise SettingsError("INDEX_READ_STALENESS_S must be > 0")
        if not self.table_prefix.replace("_", "").isalnum() and self.table_prefix:
            raise SettingsError("INDEX_TABLE_PREFIX may hold only letters, digits and _")
