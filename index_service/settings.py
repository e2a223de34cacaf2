"""Index settings: env ``INDEX_*``, flags ``--name`` override."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from imagesearch.settings import ServerSettings, SettingsError, check_client_tls, server_field

METRICS = ("IP", "COSINE", "L2")


def is_lite(uri: str) -> bool:
    """A Milvus Lite file, not a server's address."""
    return not uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "AUTOINDEX")


@dataclass(frozen=True)
class IndexSettings(ServerSettings):
    env_prefix: ClassVar[str] = "INDEX_"
    port: int = server_field("port", 50053)
    max_message_mb: int = server_field("max_message_mb", 128)
    milvus_uri: str = field(
        default="./data/milvus.db",
        metadata={"help": "Milvus Lite file (*.db) or server URI (http://host:19530)"},
    )
    milvus_token: str = field(
        default="", metadata={"help": "Milvus token (user:password or API key)"}
    )
    milvus_user: str = field(default="", metadata={"help": "Milvus user (secured servers)"})
    milvus_password: str = field(default="", metadata={"help": "Milvus password"})
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
    milvus_tls_key: str = field(default="", metadata={"help": "PEM key of MILVUS_TLS_CERT"})
    milvus_tls_server_name: str = field(
        default="", metadata={"help": "name in Milvus' certificate, if not the URI's host"}
    )
    database_url: str = field(
        default="sqlite:///./data/meta.db",
        metadata={"help": "SQLAlchemy URL: sqlite:///file.db or mysql+pymysql://user:pw@host/db"},
    )
    database_tls_ca: str = field(
        default="",
        metadata={"help": "PEM CA of the MySQL server's certificate: require TLS to MySQL"},
    )
    database_tls_cert: str = field(
        default="", metadata={"help": "PEM client certificate for MySQL (with its key)"}
    )
    database_tls_key: str = field(default="", metadata={"help": "PEM key of DATABASE_TLS_CERT"})
    row_cache: int = field(
        default=100_000,
        metadata={
            "help": "ready image rows kept in memory for searches (0: off); safe because "
            "this service is the only writer of its tables"
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
    metric: str = field(
        default="IP", metadata={"help": "IP, COSINE or L2 (vectors are unit length)"}
    )
    index_type: str = field(
        default="FLAT",
        metadata={
            "help": "FLAT, IVF_FLAT, IVF_SQ8, HNSW or AUTOINDEX (Milvus Lite: FLAT, "
            "IVF_FLAT, AUTOINDEX)"
        },
    )
    nlist: int = field(default=1024, metadata={"help": "IVF: clusters"})
    nprobe: int = field(default=16, metadata={"help": "IVF: clusters searched"})
    hnsw_m: int = field(default=16, metadata={"help": "HNSW: M"})
    hnsw_ef_construction: int = field(default=200, metadata={"help": "HNSW: efConstruction"})
    hnsw_ef: int = field(default=128, metadata={"help": "HNSW: ef at search (raised to top_k)"})
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
            "this long (its caches last this long; its Milvus reads ask for data this old)"
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
        if self.metric.upper() not in METRICS:
            raise SettingsError(f"INDEX_METRIC={self.metric!r}: use one of {', '.join(METRICS)}")
        if self.index_type.upper() not in INDEX_TYPES:
            raise SettingsError(
                f"INDEX_INDEX_TYPE={self.index_type!r}: use one of {', '.join(INDEX_TYPES)}"
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
