"""Where a search's CPU goes: the index process's CPU time per Index.Search.

10,000 2048-d vectors (with their rows, through the index's store) on a
Milvus server (PyPI milvus==2.3.5, started here) + SQLite, IVF_FLAT; the
index as a process; N serial Index.Search calls over gRPC, top_k 10, each
with a fresh random query (no query twice, so the row cache helps only where
results overlap). CPU seconds of each process from /proc before and after:
the index, Milvus, and this client. In the same run, the same searches
straight through pymilvus (no index) as the baseline.

--against REF: a second index runs the code of git revision REF (a
temporary worktree) on the same Milvus and database, and the two are probed
in turn, ROUNDS times each, so that a change is measured against what it
changes in one run (this box's speed drifts by a third between runs). Both
are readers (the only way two share a store), with a staleness bound of an
hour (--staleness) so that their row caches hold through the run as a
writer's do, whatever the code compared.

--row-cache 0: every search reads its hits' rows from SQL (the cost of a
collection larger than the row cache, or of one whose rows were just
dropped by a write).

--clients N: N callers at once, each on its own connection (the searches
are shared out among them), with the latencies' p50 and p99; the pymilvus
baseline stays serial.

    .venv/bin/python -m bench.search_cpu [--vectors 10000] [--searches 600]
    .venv/bin/python -m bench.search_cpu --against HEAD~1 [--rounds 5] [--clients 8]
        [--row-cache 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    cpu_seconds,
    cpu_seconds_of,
    index_process_pid,
    machine,
    milvus_server,
    settle,
    worktree,
)
from bench.search import DIM, fill

MODEL = "bench-model"


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def probe(
    calls: int,
    search: Callable[[np.ndarray], None] | list[Callable[[np.ndarray], None]],
    queries: np.ndarray,
    index_pid: int = 0,
) -> dict[str, float]:
    """ms per search: wall, and the CPU of the index, Milvus and this client;
    with a list of searches (one connection each), as many clients at once,
    each taking the next query, and their latencies' p50 and p99."""
    searches = search if isinstance(search, list) else [search]
    index_cpu = (lambda: cpu_seconds(index_pid)) if index_pid else (lambda: 0.0)
    before = {"index": index_cpu(), "milvus": cpu_seconds_of("milvus run")}
    todo = iter(queries[:calls])
    take = threading.Lock()
    latencies: list[float] = []

    def client(one: Callable[[np.ndarray], None]) -> None:
        while True:
            with take:
                q = next(todo, None)
            if q is None:
                return
            started = time.perf_counter()
            one(q)
            latencies.append(time.perf_counter() - started)

    mine, start = own_cpu(), time.perf_counter()
    threads = [threading.Thread(target=client, args=(one,)) for one in searches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    out = {
        "wall": wall,
        "index": index_cpu() - before["index"],
        "milvus": cpu_seconds_of("milvus run") - before["milvus"],
        "client": own_cpu() - mine,
    }
    per_call = {k: v / calls * 1000 for k, v in out.items()}
    latencies.sort()
    per_call["p50"] = latencies[len(latencies) // 2] * 1000
    per_call["p99"] = latencies[int(len(latencies) * 0.99)] * 1000
    return per_call


def index_search(port: int, channels: ExitStack) -> Callable[[np.ndarray], None]:
    import grpc

    from imagesearch.v1 import index_pb2, index_pb2_grpc

    channel = channels.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
    stub = index_pb2_grpc.IndexServiceStub(channel)

    def search(q: np.ndarray) -> None:
        stub.Search(
            index_pb2.IndexServiceSearchRequest(
                collection="bench", vectors=[q.tobytes()], top_k=10
            ),
            timeout=30,
        )

    return search


def parse_args() -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=600)
    parser.add_argument("--against", default="", help="a git revision to compare with")
    parser.add_argument("--rounds", type=int, default=5, help="probes of each with --against")
    parser.add_argument(
        "--clients", type=int, default=1, help="Index.Search callers at once (default serial)"
    )
    parser.add_argument(
        "--staleness", type=float, default=3600.0, help="with --against: INDEX_READ_STALENESS_S"
    )
    parser.add_argument(
        "--row-cache",
        type=int,
        default=None,
        help="INDEX_ROW_CACHE of every index (0: each search reads its hits' rows from SQL)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from pymilvus import MilvusClient

    print(machine())
    rng = np.random.default_rng(7)
    rounds = args.rounds if args.against else 1
    queries = rng.standard_normal(((1 + 2 * rounds) * args.searches + 20, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    fresh = iter(range(0, len(queries) - 20, args.searches))  # no query asked twice

    def batch() -> np.ndarray:
        start = next(fresh)
        return queries[start : start + args.searches]

    with (
        tempfile.TemporaryDirectory() as tmp,
        milvus_server(Path(tmp) / "milvus") as uri,
        ExitStack() as stack,
    ):
        data = Path(tmp)
        settings = {
            "milvus_uri": uri,
            "database_url": f"sqlite:///{data / 'meta.db'}",
            "milvus_index_type": "IVF_FLAT",
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
            "INDEX_ROLE": "reader" if args.against else "writer",  # two on one store
        }
        if args.against:  # readers whose row caches last the run, as a writer's do
            env["INDEX_READ_STALENESS_S"] = str(args.staleness)
        if args.row_cache is not None:
            env["INDEX_ROW_CACHE"] = str(args.row_cache)
        checkouts = {"this checkout": ROOT}
        if args.against:
            checkouts[args.against] = stack.enter_context(worktree(args.against))
        indexes = {}
        for n, (name, cwd) in enumerate(checkouts.items()):
            port, pid = stack.enter_context(index_process_pid(data / f"index{n}", env, cwd))
            indexes[name] = ([index_search(port, stack) for _ in range(args.clients)], pid)
        for q in queries[-20:]:  # warm every path
            direct(q)
            for searches, _ in indexes.values():
                searches[0](q)
        a = probe(args.searches, direct, batch())  # one client: pymilvus' own cost
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in indexes}
        for _ in range(rounds):
            for name, (searches, pid) in indexes.items():
                runs[name].append(probe(args.searches, searches, batch(), pid))
        client.close()
    print(
        f"{args.vectors} vectors, {args.searches} searches each, Index.Search from "
        f"{args.clients} client(s) at once; ms per search (wall: the run's time / searches):"
    )
    print("| path | wall | p50 | p99 | index CPU | Milvus CPU | client CPU |")
    print("|---|---|---|---|---|---|---|")
    rows = [("pymilvus direct (top 14)", a)]
    for name, probes in runs.items():
        label = "Index.Search (top 10)" if not args.against else f"Index.Search, {name}"
        rows.append((label, {k: statistics.median(p[k] for p in probes) for k in probes[0]}))
    for label, r in rows:
        print(
            f"| {label} | {r['wall']:.2f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['index']:.2f} | "
            f"{r['milvus']:.2f} | "
            f"{r['client']:.2f} |"
        )
    if args.against:
        ours, theirs = (statistics.median(p["index"] for p in runs[n]) for n in runs)
        each = ", ".join(
            f"{x['index']:.2f}/{y['index']:.2f}" for x, y in zip(*runs.values(), strict=True)
        )
        print(f"medians of {rounds} rounds; index CPU per round (this/{args.against}): {each}")
        print(f"index CPU, this checkout / {args.against}: {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
