"""Large collections: memory, recall and search time per Milvus index type.

One collection of N clustered, unit-length vectors on a Milvus server (PyPI
milvus==2.3.5, started here), indexed in turn with each index type at the
parameters the index service would choose (``INDEX_MILVUS_NLIST=0`` and
``INDEX_MILVUS_PQ_M=0``: derived from the dimension; HNSW and nprobe at their
defaults). For each type: the build time, the Milvus server's resident
memory with the collection loaded minus released, the index size per vector
that the type implies, recall@10 of Q held-out queries against the exact
top 10 (numpy, inner product: what FLAT returns), and the median time of one
search.

The vectors are synthetic: 2,000 Gaussian clusters in the unit sphere, so
that neighbourhoods exist as they do in CNN features (uniform random vectors
have none, and understate IVF and PQ recall). Real features differ; the
figures are for sizing, not a promise of recall.

    .venv/bin/python -m bench.index_scale [--vectors 1000000] [--dim 256]
        [--queries 1000] [--types HNSW,IVF_FLAT,IVF_SQ8,IVF_PQ]

A type written IVF_PQ:M builds IVF_PQ with M sub-vectors (``INDEX_MILVUS_PQ_M=M``)
instead of the derived number, e.g. ``--types IVF_PQ,IVF_PQ:64``.

--refine R,...: for IVF_PQ, also the recall and search time when R x 10
candidates are re-ranked on their stored vectors (``INDEX_MILVUS_REFINE=R``,
through the index's own vector store), and Milvus' resident memory after
those reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds_of, machine, milvus_server, settle

TOP_K = 10
CLUSTERS = 2000
BATCH = 10_000


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` unit vectors around CLUSTERS centres (same centres for every seed)."""
    centres = np.random.default_rng(0).standard_normal((CLUSTERS, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for first in range(0, n, 100_000):
        rows = min(100_000, n - first)
        picked = centres[rng.integers(0, CLUSTERS, rows)]
        out[first : first + rows] = picked + 0.6 * rng.standard_normal((rows, dim))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids (row numbers) of the exact top ``k`` by inner product, per query."""
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best = np.zeros((len(queries), 0), dtype=np.float32)
    for first in range(0, len(data), 200_000):
        scores = queries @ data[first : first + 200_000].T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        best = np.hstack([best, np.take_along_axis(scores, top, axis=1)])
        best_ids = np.hstack([best_ids, top + first])
        keep = np.argsort(-best, axis=1)[:, :k]
        best = np.take_along_axis(best, keep, axis=1)
        best_ids = np.take_along_axis(best_ids, keep, axis=1)
    return best_ids


def rss_mb(pattern: str, field: str = "VmRSS") -> float:
    """Resident memory of the processes whose command line holds ``pattern``
    (``field``: RssFile for the part that maps files, which the kernel can
    evict)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            if pattern.encode() not in cmdline:
                continue
            for line in status.read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def implied_bytes(index_type: str, dim: int, params: dict[str, int]) -> float:
    """Bytes per vector the index type holds in memory (vectors, codes and
    links; IVF centroids and PQ codebooks are per segment and left out)."""
    if index_type == "HNSW":
        return 4 * dim + 2 * params["M"] * 4 * 1.1 + 8  # level 0 links, a few upper ones, id
    if index_type == "IVF_SQ8":
        return dim + 8
    if index_type == "IVF_PQ":
        return params["m"] * params.get("nbits", 8) / 8 + 8
    return 4 * dim + 8  # FLAT, IVF_FLAT


def build(
    client: Any, name: str, index_type: str, dim: int, pq_m: int = 0
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Indexes the collection with ``index_type`` as the index service would;
    returns (build params, search params, seconds until every row is indexed)."""
    from index_service.milvus import MilvusVectors
    from index_service.settings import IndexSettings

    vectors = MilvusVectors(
        IndexSettings(
            milvus_uri="http://127.0.0.1:19530",
            milvus_index_type=index_type,
            milvus_nlist=0,
            milvus_pq_m=pq_m,
        )
    )
    params = vectors.index_params(dim)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=params)
    start = time.perf_counter()
    client.create_index(name, index)
    while True:
        info = client.describe_index(name, "vector")
        # (pending_index_rows can stay above 0 after a compaction on 2.3.5)
        if info.get("state") == "Finished" and info["indexed_rows"] >= info["total_rows"]:
            break
        time.sleep(2)
    seconds = time.perf_counter() - start
    return params, vectors.search_params(TOP_K)["params"], seconds


def measure(
    client: Any,
    name: str,
    queries: np.ndarray,
    truth: np.ndarray,
    search: dict[str, Any],
    index: Any = None,
) -> tuple[float, float]:
    """(recall@10, median ms of one search); with ``index`` (the index's
    MilvusVectors), its search, which re-ranks as INDEX_MILVUS_REFINE says."""
    found, times = 0, []
    for q, expected in zip(queries, truth, strict=True):
        start = time.perf_counter()
        if index is not None:
            ids = [iid for iid, _ in index.search(name, q[None, :], TOP_K)[0]]
        else:
            hits = client.search(
                name,
                data=[q],
                limit=TOP_K,
                search_params={"metric_type": "IP", "params": search},
                consistency_level="Eventually",  # nothing is written while it runs
            )[0]
            ids = [int(h["id"]) for h in hits]
        times.append(time.perf_counter() - start)
        found += len(set(ids) & set(expected.tolist()))
    return found / truth.size, float(np.median(times)) * 1000


def parse_args() -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--types", default="HNSW,IVF_FLAT,IVF_SQ8,IVF_PQ")
    parser.add_argument("--refine", default="", help="IVF_PQ re-rank factors, e.g. 4,8")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from pymilvus import DataType, MilvusClient

    from index_service import milvus_wire
    from index_service.milvus import MilvusVectors
    from index_service.settings import IndexSettings

    print(machine())
    data = clustered(args.vectors, args.dim, seed=1)
    queries = clustered(args.queries, args.dim, seed=2)
    start = time.perf_counter()
    truth = exact_top(data, queries, TOP_K)
    print(
        f"{args.vectors:,} x {args.dim}-d vectors; exact top {TOP_K} of {args.queries} queries in {time.perf_counter() - start:.1f} s"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp, milvus_server(Path(tmp) / "milvus") as uri:
        client = MilvusClient(uri=uri)
        name = f"scale_{uuid.uuid4().hex[:8]}"
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=args.dim)
        client.create_collection(name, schema=schema, consistency_level="Strong")
        start = time.perf_counter()
        for first in range(0, args.vectors, BATCH):
            ids = list(range(first, min(first + BATCH, args.vectors)))
            request = milvus_wire.write_request("insert", name, "id", ids, "vector", data[ids])
            milvus_wire.send(client, request, 600)
        client.flush(name)
        print(f"inserted and flushed in {time.perf_counter() - start:.0f} s")
        for spec in args.types.split(","):
            index_type, _, pq_m = spec.partition(":")
            params, search, seconds = build(client, name, index_type, args.dim, int(pq_m or 0))
            settle()
            released = rss_mb("milvus run")
            released_file = rss_mb("milvus run", "RssFile")
            client.load_collection(name)
            settle()
            loaded = rss_mb("milvus run")
            cpu = cpu_seconds_of("milvus run")
            recall, ms = measure(client, name, queries, truth, search)
            cpu_ms = (cpu_seconds_of("milvus run") - cpu) / len(queries) * 1000
            row = {
                "index": spec,
                "params": params,
                "search": search,
                "build_s": round(seconds),
                "loaded_mb": round(loaded - released),
                "implied_bytes_per_vector": round(implied_bytes(index_type, args.dim, params)),
                "recall_at_10": round(recall, 4),
                "search_ms": round(ms, 2),
                "milvus_cpu_ms_per_search": round(cpu_ms, 2),
            }
            rows.append(row)
            print(json.dumps(row))
            if index_type == "IVF_PQ":
                for factor in [int(f) for f in args.refine.split(",") if f]:
                    index = MilvusVectors(
                        IndexSettings(
                            milvus_uri=uri,
                            milvus_prefix="",
                            milvus_consistency="Eventually",
                            milvus_index_type="IVF_PQ",
                            milvus_refine=factor,
                        )
                    )
                    cpu = cpu_seconds_of("milvus run")
                    recall, ms = measure(client, name, queries, truth, search, index)
                    # (not closed: it shares pymilvus' connection with ``client``)
                    cpu_ms = (cpu_seconds_of("milvus run") - cpu) / len(queries) * 1000
                    settle()
                    row = {
                        **row,
                        "index": f"{spec} refine {factor}",
                        "loaded_mb": round(rss_mb("milvus run") - released),
                        "of_it_mapped_files_mb": round(
                            rss_mb("milvus run", "RssFile") - released_file
                        ),
                        "recall_at_10": round(recall, 4),
                        "search_ms": round(ms, 2),
                        "milvus_cpu_ms_per_search": round(cpu_ms, 2),
                    }
                    rows.append(row)
                    print(json.dumps(row))
            client.release_collection(name)
            client.drop_index(name, "vector")
        client.drop_collection(name)
        client.close()
    print(
        "\n| index | params | build s | loaded MiB | bytes/vector (implied) | recall@10 | search ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['index']} | {r['params']}, {r['search']} | {r['build_s']} | {r['loaded_mb']} "
            f"| {r['implied_bytes_per_vector']} | {r['recall_at_10']:.3f} | {r['search_ms']} |"
        )


if __name__ == "__main__":
    main()
