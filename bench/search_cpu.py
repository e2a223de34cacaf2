"""Where a search's CPU goes: the index process's CPU time per Index.Search.

10,000 2048-d vectors (with their rows, through the index's store) on a
Milvus server (PyPI milvus==2.3.5, started here) + SQLite, IVF_FLAT; the
index as a process; N serial Index.Search calls over gRPC, top_k 10, each
with a fresh random query (no query twice, so the row cache helps only where
results overlap). CPU seconds of each process from /proc before and after:
the index, Milvus, and this client. In the same run, the same searches
straight through pymilvus (no index) as the baseline.

    .venv/bin/python -m bench.search_cpu [--vectors 10000] [--searches 600]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds_of, index_process, machine, milvus_server, settle
from bench.search import DIM, fill

MODEL = "bench-model"


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def probe(
    calls: int, search: Callable[[np.ndarray], None], queries: np.ndarray
) -> dict[str, float]:
    """ms per search: wall, and the CPU of the index, Milvus and this client."""
    before = {"index": cpu_seconds_of("-m index_service"), "milvus": cpu_seconds_of("milvus run")}
    mine, start = own_cpu(), time.perf_counter()
    for q in queries[:calls]:
        search(q)
    wall = time.perf_counter() - start
    out = {
        "wall": wall,
        "index": cpu_seconds_of("-m index_service") - before["index"],
        "milvus": cpu_seconds_of("milvus run") - before["milvus"],
        "client": own_cpu() - mine,
    }
    return {k: v / calls * 1000 for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=600)
    args = parser.parse_args()
    import grpc
    from pymilvus import MilvusClient

    from imagesearch.v1 import index_pb2, index_pb2_grpc

    print(machine())
    rng = np.random.default_rng(7)
    queries = rng.standard_normal((2 * args.searches, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp, milvus_server(Path(tmp) / "milvus") as uri:
        data = Path(tmp)
        settings = {
            "milvus_uri": uri,
            "database_url": f"sqlite:///{data / 'meta.db'}",
            "index_type": "IVF_FLAT",
            "reconcile_on_start": False,
        }
        fill(settings, args.vectors, MODEL)
        client = MilvusClient(uri=uri)
        client.flush("bench")
        settle()
        params = {"metric_type": "IP", "params": {"nprobe": 16}}

        def direct(q: np.ndarray) -> None:
            client.search(
                "bench", data=[q], limit=14, search_params=params, consistency_level="Session"
            )

        env = {
            "INDEX_MILVUS_URI": uri,
            "INDEX_DATABASE_URL": f"sqlite:///{data / 'meta.db'}",
            "INDEX_RECONCILE_ON_START": "false",
        }
        with (
            index_process(data / "index", env) as port,
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = index_pb2_grpc.IndexServiceStub(channel)

            def through_index(q: np.ndarray) -> None:
                stub.Search(
                    index_pb2.IndexServiceSearchRequest(
                        collection="bench", vectors=[q.tobytes()], top_k=10
                    ),
                    timeout=30,
                )

            for q in queries[-20:]:  # warm both paths
                direct(q)
                through_index(q)
            a = probe(args.searches, direct, queries[: args.searches])
            b = probe(args.searches, through_index, queries[args.searches :])
        client.close()
    print(f"{args.vectors} vectors, {args.searches} serial searches each, ms per search:")
    print("| path | wall | index CPU | Milvus CPU | client CPU |")
    print("|---|---|---|---|---|")
    for name, r in (("pymilvus direct (top 14)", a), ("Index.Search (top 10)", b)):
        print(
            f"| {name} | {r['wall']:.2f} | {r['index']:.2f} | {r['milvus']:.2f} | "
            f"{r['client']:.2f} |"
        )


if __name__ == "__main__":
    main()
