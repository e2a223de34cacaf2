"""The whole stack once against a real Milvus server and the local MariaDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagesearch.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import (
    CLOTHING,
    Server,
    channel,
    clothing_images,
    drop_sql_tables,
    start_gateway,
    start_index,
    start_job,
    unique_prefix,
    wait_job,
)


@pytest.mark.mariadb
@pytest.mark.milvus_server
def test_stack_on_milvus_server_and_mariadb(
    embedder: Server, milvus_server: str, mariadb_url: str, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    index = start_index(
        tmp_path,
        milvus_uri=milvus_server,
        database_url=mariadb_url,
        table_prefix=prefix,
        milvus_prefix=prefix,
        milvus_index_type="HNSW",
    )
    gateway = start_gateway(tmp_path, embedder.addr, index.addr)
    try:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel(gateway.port))
        job = wait_job(
            stub,
            start_job(stub, "real", CLOTHING).job_id,
        )
        assert (job.state, job.indexed, job.failed) == (gateway_pb2.JOB_STATE_SUCCEEDED, 64, 0)
        assert stub.Count(gateway_pb2.CountRequest(collection="real"), timeout=30).count == 64
        for rel, _ in clothing_images()[::8]:
            hits = stub.Search(
                gateway_pb2.SearchRequest(
                    collection="real", image=(CLOTHING / rel).read_bytes(), top_k=5
                ),
                timeout=60,
            ).hits
            assert len(hits) == 5 and hits[0].path == str(CLOTHING / rel) and hits[0].score > 0.98
        rerun = wait_job(
            stub,
            start_job(stub, "real", CLOTHING).job_id,
        )
        assert (rerun.indexed, rerun.duplicates) == (0, 64)
        gone = stub.Delete(
            gateway_pb2.DeleteRequest(collection="real", path_prefix=str(CLOTHING / "Pants") + "/"),
            timeout=60,
        )
        assert (
            gone.deleted == 8
            and stub.Count(gateway_pb2.CountRequest(collection="real"), timeout=30).count == 56
        )
        assert stub.DropCollection(
            gateway_pb2.DropCollectionRequest(collection="real"), timeout=60
        ).dropped
    finally:
        gateway.running.stop(1)
        index.running.stop(1)
        drop_sql_tables(mariadb_url, prefix)
