"""The index writer's Milvus requests, built from array bytes, are the
messages pymilvus builds from Python floats, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from pymilvus import DataType
from pymilvus.grpc_gen import milvus_pb2

from index_service import milvus_wire


def pymilvus_request(ids: list[int], vectors: np.ndarray) -> milvus_pb2.UpsertRequest:
    """The request as pymilvus' own column path makes it (one float at a time)."""
    request = milvus_pb2.UpsertRequest(collection_name="c", num_rows=len(ids))
    keys = request.fields_data.add(field_name="id", type=DataType.INT64)
    keys.scalars.long_data.data.extend(ids)
    column = request.fields_data.add(field_name="vector", type=DataType.FLOAT_VECTOR)
    column.vectors.dim = vectors.shape[1]
    column.vectors.float_vector.data.extend(vectors.ravel().tolist())
    return request


@pytest.mark.parametrize(("rows", "dim"), [(1, 1), (3, 16), (256, 2048), (1000, 1280)])
def test_the_request_is_pymilvus_own_byte_for_byte(rows: int, dim: int) -> None:
    rng = np.random.default_rng(rows)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    ids = [int(i) for i in rng.integers(-(2**63), 2**63 - 1, rows)]
    ours = milvus_wire.write_request("upsert", "c", "id", ids, "vector", vectors)
    assert ours.SerializeToString() == pymilvus_request(ids, vectors).SerializeToString()
    got = np.asarray(ours.fields_data[1].vectors.float_vector.data, dtype=np.float32)
    assert np.array_equal(got.reshape(rows, dim), vectors)


def test_insert_and_upsert_differ_only_in_their_message() -> None:
    vectors = np.ones((2, 4), dtype=np.float32)
    insert = milvus_wire.write_request("insert", "c", "id", [1, 2], "vector", vectors)
    upsert = milvus_wire.write_request("upsert", "c", "id", [1, 2], "vector", vectors)
    assert isinstance(insert, milvus_pb2.InsertRequest)
    assert isinstance(upsert, milvus_pb2.UpsertRequest)
    assert insert.SerializeToString() == upsert.SerializeToString()


def test_float64_and_strided_vectors_are_sent_as_float32() -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    strided = base[::2, ::2]  # not contiguous
    request = milvus_wire.write_request("upsert", "c", "id", [1, 2], "vector", strided)
    sent = np.asarray(request.fields_data[1].vectors.float_vector.data, dtype=np.float32)
    assert np.array_equal(sent.reshape(2, 3), strided.astype(np.float32))


def test_ids_and_vectors_must_match() -> None:
    with pytest.raises(ValueError, match="3 ids"):
        milvus_wire.write_request("upsert", "c", "id", [1, 2, 3], "vector", np.ones((2, 4)))


def pymilvus_search(
    vectors: np.ndarray, limit: int, params: dict, expr: str, reads: dict
) -> milvus_pb2.SearchRequest:
    """The request pymilvus' MilvusClient.search builds (Python floats)."""
    from pymilvus.client.prepare import Prepare

    return Prepare.search_requests_with_expr(
        "c", [v.tolist() for v in vectors], "", params, limit, expr, None, None, -1, **reads
    )


SEARCH_CASES = [
    ({"metric_type": "IP", "params": {"nprobe": 16}}, "", {"consistency_level": "Session"}),
    ({"metric_type": "L2", "params": {"ef": 64}}, "id in [1, 2]", {"consistency_level": "Strong"}),
    ({"metric_type": "COSINE", "params": {}}, "", {"consistency_level": "Bounded"}),
    (
        {"metric_type": "IP", "params": {"nprobe": 8}},
        "",
        {"consistency_level": "Customized", "guarantee_timestamp": 449_000_000_000_000_000},
    ),
]


@pytest.mark.parametrize(("params", "expr", "reads"), SEARCH_CASES)
@pytest.mark.parametrize(("queries", "dim"), [(1, 2048), (3, 16)])
def test_the_search_is_pymilvus_own_byte_for_byte(
    params: dict, expr: str, reads: dict, queries: int, dim: int
) -> None:
    rng = np.random.default_rng(dim)
    vectors = rng.standard_normal((queries, dim)).astype(np.float32)
    ours = milvus_wire.search_request("c", vectors, 14, params, expr, reads)
    theirs = pymilvus_search(vectors, 14, params, expr, dict(reads))
    assert ours.SerializeToString() == theirs.SerializeToString()


def test_a_search_does_not_change_the_callers_consistency_arguments() -> None:
    reads = {"consistency_level": "Session"}
    milvus_wire.search_request("c", np.ones((1, 4)), 5, {"metric_type": "IP"}, "", reads)
    assert reads == {"consistency_level": "Session"}
