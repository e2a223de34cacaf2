"""The vector store on Milvus (index_service.vectors.VectorStore): one Milvus
collection per collection, primary key = image id, one float vector field.
Works with Milvus Lite (a local *.db file) and with a standalone or cluster
server (http://host:19530)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException
from pymilvus.client.utils import mkts_from_unixtime

from imagesearch import errors, logs
from index_service import milvus_wire
from index_service.milvus_aio import AioSearches
from index_service.settings import IndexSettings, derived_nlist, derived_pq_m, is_lite

log = logging.getLogger(__name__)

ID_FIELD = "id"
VECTOR_FIELD = "vector"
MAX_TOPK = 16384  # Milvus' limit on one search
CHUNK = 1000


def score_of(metric: str, raw: float) -> tuple[float, float]:
    """(distance reported, score in [0,1]) from Milvus' raw distance: for L2
    the squared distance between unit vectors, for IP/COSINE the similarity."""
    if metric == "L2":
        cos = 1.0 - raw / 2.0
        return raw, min(1.0, max(0.0, cos))
    return 1.0 - raw, min(1.0, max(0.0, raw))


# Milvus' own codes for "not now" rather than "no": a collection not (yet)
# loaded again after Milvus restarted, a node not ready.
MILVUS_NOT_READY_CODES = {101}
MILVUS_AWAY_WORDS = (
    "connect", "unavailable", "timeout", "deadline", "closed", "not loaded", "not ready",
)  # fmt: skip


def milvus_away(exc: MilvusException) -> bool:
    """Milvus is away or coming back (retry later), not refusing the call:
    found by the chaos run, where searches right after a Milvus restart
    failed INTERNAL ("its code 101", collection not loaded) for ~20 s."""
    text = str(exc).lower()
    return exc.code in MILVUS_NOT_READY_CODES or any(w in text for w in MILVUS_AWAY_WORDS)


class MilvusVectors:
    max_top_k = MAX_TOPK

    def __init__(self, settings: IndexSettings) -> None:
        self.settings = settings
        self.uri = settings.milvus_uri
        self.lite = is_lite(self.uri)
        self.metric = settings.milvus_metric.upper()
        self.index_type = settings.milvus_index_type.upper()
        self.consistency = settings.milvus_consistency
        # A reader asks for data at most this old (the writer's own writes are
        # not in its session): a guarantee timestamp of now minus the staleness.
        self.staleness_s = settings.read_staleness_s if settings.reader else None
        # Candidates re-ranked on their stored vectors per hit (INDEX_MILVUS_REFINE):
        # PQ codes order neighbours coarsely, the stored vectors exactly.
        self.refine = settings.milvus_refine or (8 if self.index_type == "IVF_PQ" else 1)
        self.max_top_k = MAX_TOPK // self.refine
        self._client: MilvusClient | None = None
        self._aio: AioSearches | None = None  # searches from the server's loop
        self._lock = threading.Lock()
        self._known: set[str] = set()

    # -- plumbing --------------------------------------------------------

    def _connect(self) -> MilvusClient:
        with self._lock:
            if self._client is None:
                kwargs: dict[str, Any] = {
                    "uri": self.uri,
                    "timeout": self.settings.milvus_timeout_s,
                }
                if self.lite:
                    Path(self.uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
                else:
                    for key in ("token", "user", "password", "db_name"):
                        value = getattr(self.settings, f"milvus_{key}")
                        if value:
                            kwargs[key] = value
                    kwargs.update(self.settings.milvus_tls())
                self._client = MilvusClient(**kwargs)
            return self._client

    @contextmanager
    def _calling(self, what: str) -> Iterator[MilvusClient]:
        try:
            yield self._connect()
        except Exception as exc:
            raise self._failure(what, exc) from None

    def _failure(self, what: str, exc: Exception) -> Exception:
        """What a client is told when a call to Milvus fails: UNAVAILABLE
        (and the connection dropped) when Milvus is away, INTERNAL when it
        refused; its words go to the log."""
        if isinstance(exc, errors.ServiceError):
            return exc
        if isinstance(exc, MilvusException):
            if milvus_away(exc):
                self._reset()
                self._log_outage(what, exc)
                return errors.unavailable(
                    f"Milvus is unavailable during {what}; retry later (the index's log has "
                    "the details)"
                )
            logs.event(
                log,
                "milvus.refused",
                logging.ERROR,
                during=what,
                error=f"{exc.code}: {exc.message}",
            )
            return errors.ServiceError(
                grpc.StatusCode.INTERNAL,
                f"Milvus refused {what} (its code {exc.code}); the index's log has its words",
            )
        # grpc errors, refused connections, ...
        self._reset()
        self._log_outage(what, exc)
        return errors.unavailable(
            f"Milvus is unavailable during {what} ({type(exc).__name__}); retry later "
            "(the index's log has the details)"
        )

    def _log_outage(self, what: str, exc: BaseException) -> None:
        """Where Milvus is and what it said go to the log, not to clients."""
        logs.event(
            log,
            "milvus.unavailable",
            logging.WARNING,
            uri=self.uri,
            during=what,
            error=f"{type(exc).__name__}: {exc}",
        )

    def _reset(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            aio, self._aio = self._aio, None
            self._known.clear()
        if aio is not None:
            aio.close()
        if client is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to close
                client.close()

    def close(self) -> None:
        self._reset()

    def score(self, raw: float) -> tuple[float, float]:
        return score_of(self.metric, raw)

    def milvus_name(self, name: str) -> str:
        return f"{self.settings.milvus_prefix}{name}"

    # -- collections -----------------------------------------------------

    def index_params(self, dim: int) -> dict[str, Any]:
        """Build parameters of a collection of ``dim``-d vectors (INDEX_MILVUS_NLIST
        and INDEX_MILVUS_PQ_M 0: derived from ``dim``)."""
        s = self.settings
        if self.index_type.startswith("IVF"):
            params: dict[str, Any] = {"nlist": s.milvus_nlist or derived_nlist(dim)}
            if self.index_type == "IVF_PQ":
                m = s.milvus_pq_m or derived_pq_m(dim)
                if dim % m:
                    raise errors.invalid_argument(
                        f"INDEX_MILVUS_PQ_M={m} does not divide the vectors' {dim} dimensions"
                    )
                params.update(m=m, nbits=8)
            return params
        if self.index_type == "HNSW":
            return {"M": s.milvus_hnsw_m, "efConstruction": s.milvus_hnsw_ef_construction}
        return {}

    def _reads(self) -> dict[str, Any]:
        """The consistency arguments of a search or read."""
        if self.staleness_s is None:
            return {"consistency_level": self.consistency}
        return {
            "consistency_level": "Customized",
            "guarantee_timestamp": mkts_from_unixtime(time.time() - self.staleness_s),
        }

    def search_params(self, top_k: int) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {}
        if self.index_type.startswith("IVF"):
            params = {"nprobe": s.milvus_nprobe}
        elif self.index_type == "HNSW":
            params = {"ef": max(s.milvus_hnsw_ef, top_k)}
        elif self.index_type == "DISKANN":
            params = {"search_list": max(s.milvus_diskann_search_list, top_k)}
        return {"metric_type": self.metric, "params": params}

    def exists(self, name: str) -> bool:
        with self._calling(f"has_collection({name})") as c:
            return bool(c.has_collection(self.milvus_name(name)))

    def create(self, name: str, dim: int, *, replace: bool = False) -> None:
        """Creates (and loads) the collection; with replace, drops a stale one first."""
        mname = self.milvus_name(name)
        with self._calling(f"create_collection({name})") as c:
            if c.has_collection(mname):
                if not replace:
                    self._known.add(mname)
                    return
                logs.event(log, "milvus.drop_stale", collection=mname)
                c.drop_collection(mname)
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
            schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
            index = c.prepare_index_params()
            index.add_index(
                field_name=VECTOR_FIELD,
                index_type=self.index_type,
                metric_type=self.metric,
                params=self.index_params(dim),
            )
            shards = {} if self.lite else {"num_shards": self.settings.milvus_shards}
            c.create_collection(
                mname, schema=schema, index_params=index, consistency_level="Strong", **shards
            )
            self._known.add(mname)
        logs.event(
            log,
            "milvus.created",
            collection=mname,
            dim=dim,
            index=self.index_type,
            metric=self.metric,
        )

    def ensure(self, name: str, dim: int) -> None:
        if self.milvus_name(name) not in self._known:
            self.create(name, dim)

    def drop(self, name: str) -> None:
        mname = self.milvus_name(name)
        with self._calling(f"drop_collection({name})") as c:
            if c.has_collection(mname):
                c.drop_collection(mname)
        self._known.discard(mname)

    # -- data ------------------------------------------------------------

    def upsert(self, name: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        mname = self.milvus_name(name)
        with self._calling(f"upsert into {name}") as c:
            for i in range(0, len(ids), CHUNK):
                request = milvus_wire.write_request(
                    "upsert",
                    mname,
                    ID_FIELD,
                    ids[i : i + CHUNK],
                    VECTOR_FIELD,
                    vectors[i : i + CHUNK],
                )
                milvus_wire.send(c, request, self.settings.milvus_timeout_s)

    def delete(self, name: str, ids: Sequence[int]) -> None:
        if not ids:
            return
        mname = self.milvus_name(name)
        with self._calling(f"delete from {name}") as c:
            for i in range(0, len(ids), CHUNK):
                c.delete(mname, ids=[int(x) for x in ids[i : i + CHUNK]])

    def existing(self, name: str, ids: Sequence[int], strong: bool = False) -> set[int]:
        found: set[int] = set()
        mname = self.milvus_name(name)
        with self._calling(f"query {name}") as c:
            for i in range(0, len(ids), CHUNK):
                chunk = [int(x) for x in ids[i : i + CHUNK]]
                rows = c.query(
                    mname,
                    filter=f"{ID_FIELD} in {chunk}",
                    output_fields=[ID_FIELD],
                    **({"consistency_level": "Strong"} if strong else self._reads()),
                )
                found.update(int(r[ID_FIELD]) for r in rows)
        return found

    def get_vectors(
        self, name: str, ids: Sequence[int], strong: bool = False
    ) -> dict[int, np.ndarray]:
        mname = self.milvus_name(name)
        out: dict[int, np.ndarray] = {}
        with self._calling(f"get from {name}") as c:
            for i in range(0, len(ids), CHUNK):
                rows = c.get(
                    mname,
                    ids=[int(x) for x in ids[i : i + CHUNK]],
                    output_fields=[VECTOR_FIELD],
                    **({"consistency_level": "Strong"} if strong else self._reads()),
                )
                out.update(
                    (int(r[ID_FIELD]), np.asarray(r[VECTOR_FIELD], dtype=np.float32)) for r in rows
                )
        return out

    def all_ids(self, name: str) -> Iterator[int]:
        mname = self.milvus_name(name)
        with self._calling(f"scan {name}") as c:
            it = c.query_iterator(
                mname,
                batch_size=CHUNK,
                filter="",
                output_fields=[ID_FIELD],
                consistency_level="Strong",  # used by Reconcile only
            )
            try:
                while True:
                    batch = it.next()
                    if not batch:
                        return
                    for r in batch:
                        yield int(r[ID_FIELD])
            finally:
                it.close()

    def _search_request(
        self, name: str, vectors: np.ndarray, limit: int, only_ids: Sequence[int] | None
    ) -> Any:
        expr = f"{ID_FIELD} in {[int(x) for x in only_ids]}" if only_ids is not None else ""
        return milvus_wire.search_request(
            self.milvus_name(name),
            vectors,
            min(limit, MAX_TOPK),
            self.search_params(limit),
            expr,
            self._reads(),
        )

    @staticmethod
    def _hits(results: list[tuple[np.ndarray, np.ndarray]]) -> list[list[tuple[int, float]]]:
        return [
            list(zip(ids.tolist(), distances.tolist(), strict=True)) for ids, distances in results
        ]

    def search(
        self,
        name: str,
        vectors: np.ndarray,
        limit: int,
        only_ids: Sequence[int] | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Per query, (id, raw distance) best first. No output fields are asked
        for: hits carry their primary key, and on a server any output field
        costs a second retrieval phase inside Milvus."""
        request = self._search_request(name, vectors, limit * self.refine, only_ids)
        with self._calling(f"search {name}") as c:
            results = milvus_wire.search(c, request, self.settings.milvus_timeout_s)
        hits = self._hits(results)
        return self._reranked(name, vectors, hits, limit) if self.refine > 1 else hits

    def _reranked(
        self, name: str, vectors: np.ndarray, hits: list[list[tuple[int, float]]], limit: int
    ) -> list[list[tuple[int, float]]]:
        """Each query's candidates ordered by their exact distance to it, on
        the vectors Milvus stores, the best ``limit`` kept (a candidate whose
        vector is gone by now is left out)."""
        stored = self.get_vectors(name, sorted({iid for found in hits for iid, _ in found}))
        out: list[list[tuple[int, float]]] = []
        for query, found in zip(vectors, hits, strict=True):
            ids = [iid for iid, _ in found if iid in stored]
            if not ids:
                out.append([])
                continue
            candidates = np.stack([stored[iid] for iid in ids])
            if self.metric == "L2":  # Milvus' L2 distance is the squared one
                raw = ((candidates - query) ** 2).sum(axis=1)
                order = np.argsort(raw, kind="stable")
            else:  # IP, and COSINE on unit vectors
                raw = candidates @ query
                order = np.argsort(-raw, kind="stable")
            out.append([(ids[i], float(raw[i])) for i in order[:limit]])
        return out

    def _aio_searches(self) -> AioSearches | None:
        """The asyncio channel of the running loop, opened on first use once
        pymilvus is connected (None before that, or from another loop)."""
        with self._lock:
            client, aio = self._client, self._aio
            if client is not None and aio is None:
                aio = self._aio = AioSearches(
                    self.settings, client._get_connection().server_address
                )
        return aio if aio is not None and aio.bound_here() else None

    async def search_async(
        self,
        name: str,
        vectors: np.ndarray,
        limit: int,
        only_ids: Sequence[int] | None = None,
    ) -> list[list[tuple[int, float]]]:
        """``search`` from the server's event loop, awaited on an asyncio
        channel (index_service.milvus_aio). Until pymilvus has connected (at
        start, after an outage), on a thread through ``search``, so that
        connecting never blocks the loop."""
        aio = self._aio_searches()
        if aio is None or self.refine > 1:  # (the vectors are read through pymilvus)
            return await asyncio.to_thread(self.search, name, vectors, limit, only_ids)
        request = self._search_request(name, vectors, limit, only_ids)
        try:
            response = await aio.search(request, self.settings.milvus_timeout_s)
            results = milvus_wire.search_results(response, request)
        except Exception as exc:
            raise self._failure(f"search {name}", exc) from None
        return self._hits(results)
