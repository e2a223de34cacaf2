"""Index writes: how many vectors per second the index writer stores.

Upsert over gRPC, as the gateway sends it: 2048-d float32 vectors with their
rows (a new image and path each), batches of 256, 20,480 vectors, one call
after another, into an index started as a process:

1. Milvus Lite + SQLite (the embedded default);
2. a Milvus server (PyPI milvus==2.3.5, started here) + the local MariaDB.

On the server, two baselines in the same run write the same vectors straight
into Milvus, with no rows, no SQL and no gRPC hop before it: with pymilvus'
row API (as the writer did before) and with the column-wise requests the
writer sends (index_service.milvus_wire): the most the writer could reach.

Prints vectors/s for each, then a JSON line for the server run:
{"backend": "milvus-server+mariadb", "vectors_per_s": ...}.

    .venv/bin/python -m bench.index_write [--vectors 20480] [--batch 256] [--lite-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import index_process, machine, milvus_server, settle
from imagesearch.v1 import index_pb2

MARIADB = "mysql+pymysql://root@127.0.0.1:3306/test"
DIM = 2048


def requests(n: int, batch: int, seed: int) -> list[index_pb2.IndexServiceUpsertRequest]:
    """Upsert requests of ``batch`` new images each, made before the clock starts."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n, batch):
        vectors = rng.standard_normal((min(batch, n - start), DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = [
            index_pb2.UpsertItem(
                sha256=rng.bytes(32),
                path=f"/bench/{start + k:07d}.jpg",
                size=100_000,
                width=640,
                height=480,
                vector=v.tobytes(),
            )
            for k, v in enumerate(vectors)
        ]
        out.append(
            index_pb2.IndexServiceUpsertRequest(
                collection="bench", model="bench-model", dim=DIM, items=items
            )
        )
    return out


def write_rate(port: int, n: int, batch: int) -> float:
    import grpc

    from imagesearch.v1 import index_pb2_grpc

    calls = requests(n, batch, seed=port)
    options = [("grpc.max_send_message_length", 256 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = index_pb2_grpc.IndexServiceStub(channel)
        stub.Upsert(requests(batch, batch, seed=port + 1)[0], timeout=600)  # collection made
        start = time.perf_counter()
        for request in calls:
            response = stub.Upsert(request, timeout=600)
            assert response.indexed == len(request.items), response
        return n / (time.perf_counter() - start)


def milvus_alone(uri: str, n: int, batch: int, columnar: bool) -> float:
    """Vectors/s of upserts straight into a new Milvus collection."""
    from pymilvus import DataType, MilvusClient

    from index_service import milvus_wire

    client = MilvusClient(uri=uri)
    name = f"alone_{uuid.uuid4().hex[:8]}"
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index(
        field_name="vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": 1024}
    )
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    vectors = np.random.default_rng(n).standard_normal((n, DIM)).astype(np.float32)
    try:
        start = time.perf_counter()
        for first in range(0, n, batch):
            ids = list(range(first, min(first + batch, n)))
            if columnar:
                request = milvus_wire.write_request(
                    "upsert", name, "id", ids, "vector", vectors[ids]
                )
                milvus_wire.send(client, request, 600)
            else:
                client.upsert(name, [{"id": i, "vector": vectors[i].tolist()} for i in ids])
        return n / (time.perf_counter() - start)
    finally:
        client.drop_collection(name)
        client.close()


def drop_tables(prefix: str) -> None:
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(MARIADB)
    md = MetaData()
    md.reflect(engine, only=lambda name, _md: name.startswith(prefix))
    md.drop_all(engine)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=20_480)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lite-only", action="store_true", help="skip the server run")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        lite = {
            "INDEX_MILVUS_URI": str(Path(tmp) / "lite" / "milvus.db"),
            "INDEX_DATABASE_URL": f"sqlite:///{Path(tmp) / 'lite' / 'meta.db'}",
        }
        with index_process(Path(tmp) / "lite", lite) as port:
            rate = write_rate(port, args.vectors, args.batch)
        print(f"Milvus Lite + SQLite:         {rate:8.0f} vectors/s")
        if args.lite_only:
            return
        prefix = f"b{uuid.uuid4().hex[:8]}_"
        with milvus_server(Path(tmp) / "milvus") as uri:
            server = {
                "INDEX_MILVUS_URI": uri,
                "INDEX_DATABASE_URL": MARIADB,
                "INDEX_TABLE_PREFIX": prefix,
                "INDEX_MILVUS_PREFIX": prefix,
            }
            try:
                with index_process(Path(tmp) / "server", server) as port:
                    settle()
                    server_rate = write_rate(port, args.vectors, args.batch)
            finally:
                drop_tables(prefix)
            settle()
            rows = milvus_alone(uri, args.vectors, args.batch, columnar=False)
            settle()
            columns = milvus_alone(uri, args.vectors, args.batch, columnar=True)
        print(f"Milvus server + MariaDB:      {server_rate:8.0f} vectors/s")
        print(
            f"  Milvus alone, pymilvus rows: {rows:8.0f} vectors/s "
            f"(the writer: {server_rate / rows:.2f}x)"
        )
        print(
            f"  Milvus alone, column-wise:   {columns:8.0f} vectors/s "
            f"(the writer: {server_rate / columns:.2f}x of it)"
        )
        print(json.dumps({"backend": "milvus-server+mariadb", "vectors_per_s": round(server_rate)}))


if __name__ == "__main__":
    main()
