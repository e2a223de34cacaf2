"""Index writes: how many vectors per second the index writer stores.

Upsert over gRPC, as the gateway sends it: 2048-d float32 vectors with their
rows (a new image and path each), batches of 256, 20,480 vectors, one call
after another, into an index started as a process:

1. Milvus Lite + SQLite (the embedded default);
2. a Milvus server (PyPI milvus==2.3.5, started here) + the local MariaDB.

Prints vectors/s for each, then a JSON line for the server run:
{"backend": "milvus-server+mariadb", "vectors_per_s": ...}.

    .venv/bin/python -m bench.index_write [--vectors 20480] [--batch 256] [--lite-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, free_port, machine, milvus_server, wait_healthy
from imagesearch.v1 import index_pb2

MARIADB = "mysql+pymysql://root@127.0.0.1:3306/test"
DIM = 2048


@contextmanager
def index_process(data: Path, env_extra: dict[str, str]) -> Iterator[int]:
    """The index as a process with ``env_extra``; yields its port once SERVING."""
    port = free_port()
    env = {
        **os.environ,
        "INDEX_HOST": "127.0.0.1",
        "INDEX_PORT": str(port),
        "INDEX_LOG_LEVEL": "WARNING",
        **env_extra,
    }
    data.mkdir(parents=True, exist_ok=True)
    with (data / "index.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "index_service"], env=env, stdout=log, stderr=log, cwd=ROOT
        )
    try:
        wait_healthy(port, "imagesearch.v1.IndexService")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=60)


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
                    server_rate = write_rate(port, args.vectors, args.batch)
            finally:
                drop_tables(prefix)
        print(f"Milvus server + MariaDB:      {server_rate:8.0f} vectors/s")
        print(json.dumps({"backend": "milvus-server+mariadb", "vectors_per_s": round(server_rate)}))


if __name__ == "__main__":
    main()
