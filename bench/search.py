"""Search latency and throughput at 1, 8 and 32 concurrent clients, at 10k and
100k stored vectors (inserted directly, 2048-d like ResNet50), through:

  direct   pymilvus search on the same Milvus data (no service at all)
  index    Index.Search by vector over gRPC (Milvus search + SQL metadata)
  gateway  Gateway.Search by stored image id (gateway -> index -> Milvus/SQL)
  image    Gateway.Search by image bytes (embedder + index; ResNet50 random weights)

and the per-hop overhead at p50: index - direct, gateway - index(by id).

    .venv/bin/python bench/search.py [--sizes 10000,100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CLOTHING, machine, milvus_server, percentile, services

DIM = 2048
POOL = 16384  # query vectors; more than one run asks for


def fill(settings_kw: dict[str, object], n: int, model: str) -> None:
    """Inserts n random unit vectors with their SQL rows through the index's store."""
    from index_service.app import build_store
    from index_service.plan import Item
    from index_service.settings import IndexSettings

    store = build_store(IndexSettings(**settings_kw))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    chunk = 4000
    for start in range(0, n, chunk):
        vecs = rng.standard_normal((min(chunk, n - start), DIM)).astype(np.float32)
        items = [
            Item(
                hashlib.sha256(f"v{start + i}".encode()).digest(),
                f"/bench/{start + i}.jpg",
                1,
                1,
                1,
                v.tobytes(),
            )
            for i, v in enumerate(vecs)
        ]
        store.upsert("bench", model, DIM, items)
    store.vectors.close()
    store.meta.dispose()


def settle(client, collection: str) -> None:
    """Seals, compacts and indexes the collection on a Milvus server, so that
    no path is measured while the server is still busy with it."""
    client.flush(collection)
    job = client.compact(collection)
    deadline = time.monotonic() + 1800
    while client.get_compaction_state(job) != "Completed":
        if time.monotonic() > deadline:
            raise TimeoutError(f"Milvus did not finish compacting {collection}")
        time.sleep(1)
    while client.describe_index(collection, "vector").get("pending_index_rows", 0):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Milvus did not finish indexing {collection}")
        time.sleep(1)
    client.close()


def run_direct(
    uri: str, collection: str, clients_list: list[int], queries: int, next_query, size: int
) -> None:
    """pymilvus alone on the same data, before the services start (Milvus Lite
    lets only one process open its file)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    client.load_collection(collection)
    params = {"metric_type": "IP", "params": {"nprobe": 16}}
    for clients in clients_list:

        def direct(i: int) -> None:
            client.search(
                collection,
                data=[next_query().tolist()],
                limit=10,
                search_params=params,
                consistency_level="Session",
            )

        lat, qps = run_load(direct, clients, max(1, queries // clients))
        report("direct", size, clients, lat, qps)
    client.close()


def run_load(
    call: Callable[[int], None], clients: int, per_client: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        mine = []
        for i in range(per_client):
            t = time.perf_counter()
            call(offset * per_client + i)
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    for i in range(3):  # warm-up
        call(i)
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, len(latencies) / (time.perf_counter() - started)


def report(name: str, size: int, clients: int, lat: list[float], qps: float) -> float:
    p50, p95, p99 = (percentile(lat, q) * 1000 for q in (50, 95, 99))
    print(
        f"{size:>7} {name:<8} {clients:>3} clients  p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  p99 {p99:7.2f} ms  {qps:8.1f} q/s"
    )
    return p50


def load_through_services(
    data: Path,
    env: dict[str, str],
    size: int,
    clients_list: list[int],
    args: argparse.Namespace,
    next_query: Callable[[], np.ndarray],
    query_image: bytes,
) -> None:
    """The services on ``data``: searches by vector and by id on the index,
    by id and (unless --skip-image) by image through the gateway, at each
    concurrency."""
    import grpc

    from imagesearch.channels import make_channel
    from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc, index_pb2, index_pb2_grpc

    with services(data, env) as ports:
        index = index_pb2_grpc.IndexServiceStub(make_channel(f"127.0.0.1:{ports['index']}", []))
        gateway = gateway_pb2_grpc.GatewayServiceStub(
            make_channel(f"127.0.0.1:{ports['gateway']}", [])
        )
        ids = [
            h.image_id
            for h in index.Search(
                index_pb2.IndexServiceSearchRequest(
                    collection="bench",
                    vectors=[next_query().tobytes() for _ in range(512)],
                    top_k=1,
                ),
                timeout=60,
            ).results
            for h in h.hits
        ]
        for clients in clients_list:
            per = max(1, args.queries // clients)

            def by_vector(i: int) -> None:
                index.Search(
                    index_pb2.IndexServiceSearchRequest(
                        collection="bench", vectors=[next_query().tobytes()], top_k=10
                    ),
                    timeout=30,
                )

            def by_id(i: int) -> None:
                gateway.Search(
                    gateway_pb2.SearchRequest(
                        collection="bench", image_id=ids[i % len(ids)], top_k=10
                    ),
                    timeout=30,
                )

            def by_id_index(i: int) -> None:
                index.Search(
                    index_pb2.IndexServiceSearchRequest(
                        collection="bench", image_ids=[ids[i % len(ids)]], top_k=10
                    ),
                    timeout=30,
                )

            lat, qps = run_load(by_vector, clients, per)
            report("index", size, clients, lat, qps)
            lat, qps = run_load(by_id_index, clients, per)
            index_id_p50 = report("index-id", size, clients, lat, qps)
            lat, qps = run_load(by_id, clients, per)
            gw_p50 = report("gateway", size, clients, lat, qps)
            if clients == 1:
                print(
                    f"{'':>7} gateway hop overhead at p50 (gateway by id - index by id): {gw_p50 - index_id_p50:.2f} ms"
                )
            if not args.skip_image:

                def by_image(i: int) -> None:
                    try:
                        gateway.Search(
                            gateway_pb2.SearchRequest(
                                collection="bench", image=query_image, top_k=10
                            ),
                            timeout=60,
                        )
                    except grpc.RpcError as exc:
                        raise SystemExit(f"search by image failed: {exc.details()}") from None

                lat, qps = run_load(by_image, clients, max(1, per // 4))
                report("image", size, clients, lat, qps)


def parse_args() -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--queries", type=int, default=256, help="queries per (size, path, concurrency)")
    p.add_argument("--index-type", default="IVF_FLAT")
    p.add_argument(
        "--skip-image", action="store_true", help="skip search by image (needs the embedder)"
    )
    p.add_argument(
        "--milvus-server",
        action="store_true",
        help="use a standalone Milvus server (PyPI milvus==2.3.5) instead of Milvus Lite",
    )
    return p.parse_args()


def main() -> int:
    args = parse_args()

    from pymilvus import MilvusClient

    print(f"machine: {machine()}")
    backend = "Milvus 2.3.5 standalone server" if args.milvus_server else "Milvus Lite"
    print(
        f"vectors: {DIM}-d random unit vectors; index {args.index_type} (nlist 1024, nprobe 16), "
        f"metric IP; {backend} + SQLite; search consistency Session"
    )
    sizes = [int(s) for s in args.sizes.split(",")]
    clients_list = [int(c) for c in args.clients.split(",")]
    query_image = next(CLOTHING.rglob("*.jpg")).read_bytes()
    # Fresh query vectors for every call of a run (no query is asked twice, so
    # the index's row cache only helps where results overlap, as in real use).
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((POOL, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    fresh = itertools.count()

    def next_query() -> np.ndarray:
        return queries[next(fresh) % POOL]

    tmp = Path(tempfile.mkdtemp(prefix="imgsearch-bench-"))
    server = milvus_server(tmp / "milvus-server") if args.milvus_server else None
    server_uri = server.__enter__() if server else ""
    try:
        for size in sizes:
            data = tmp / f"s{size}"
            data.mkdir()
            milvus_uri = server_uri or str(data / "milvus.db")
            prefix = f"s{size}_"
            env = {
                "EMBEDDER_MODEL": "resnet50",
                "EMBEDDER_WEIGHTS": "random",
                "INDEX_MILVUS_INDEX_TYPE": args.index_type,
                "INDEX_MILVUS_URI": milvus_uri,
                "INDEX_MILVUS_PREFIX": prefix,
            }
            # The embedder's model id must match the collection for searches by image.
            from embedder_service.model import ModelInfo

            model_id = ModelInfo(
                "resnet50", DIM, "random", "random", False, "avg", "", "", 224, ""
            ).model_id
            t = time.perf_counter()
            fill(
                {
                    "milvus_uri": milvus_uri,
                    "database_url": f"sqlite:///{data / 'meta.db'}",
                    "milvus_index_type": args.index_type,
                    "reconcile_on_start": False,
                    "milvus_prefix": prefix,
                },
                size,
                model_id,
            )
            if server_uri:
                settle(MilvusClient(server_uri), prefix + "bench")
            print(
                f"\n{size} vectors inserted, compacted and indexed in "
                f"{time.perf_counter() - t:.1f} s"
            )
            run_direct(milvus_uri, prefix + "bench", clients_list, args.queries, next_query, size)
            load_through_services(data, env, size, clients_list, args, next_query, query_image)
    finally:
        if server:
            server.__exit__(None, None, None)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
