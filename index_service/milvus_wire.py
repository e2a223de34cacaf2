"""Milvus requests built from numpy arrays, and search results read back.

pymilvus turns each row's vector into Python floats and appends them to the
request one by one: for 256 vectors of 2048 dimensions that is half a
million Python objects, most of the index writer's CPU per batch. A float
vector field is a packed ``repeated float`` on the wire, so the request can
be made from the array's bytes in one parse instead (the same message, byte
for byte; a unit test compares it with pymilvus' own).

A search is built the same way: pymilvus' path (a Python list per query,
packed one float at a time, then its decorators and a ``Hit`` object per
result) cost a quarter of the index's CPU per search; here the query's bytes
go into the request as they are and the answer is read as two arrays.

The request is sent on the stub of the client's own connection (pymilvus is
pinned, and every Milvus test goes through here), so authentication, TLS and
the database name apply as for every other call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.client import ts_utils
from pymilvus.client.utils import check_status, dumps, get_params
from pymilvus.grpc_gen import common_pb2, milvus_pb2

_PACKED_FLOATS_TAG = b"\x0a"  # FloatArray.data: field 1, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _packed_floats(vectors: np.ndarray) -> bytes:
    """A FloatArray message holding ``vectors`` (rows x dim), serialised."""
    raw = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    return b"".join((_PACKED_FLOATS_TAG, _varint(len(raw)), raw))


def write_request(
    kind: str,
    collection: str,
    id_field: str,
    ids: Sequence[int],
    vector_field: str,
    vectors: np.ndarray,
) -> Any:
    """An InsertRequest (``kind`` "insert") or UpsertRequest ("upsert") of
    int64 primary keys ``ids`` and their float ``vectors`` (rows x dim)."""
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"{len(ids)} ids and vectors of shape {vectors.shape}")
    message = {"insert": milvus_pb2.InsertRequest, "upsert": milvus_pb2.UpsertRequest}[kind]
    request = message(collection_name=collection, num_rows=len(ids))
    keys = request.fields_data.add(field_name=id_field, type=DataType.INT64)
    keys.scalars.long_data.data.extend(int(v) for v in ids)
    column = request.fields_data.add(field_name=vector_field, type=DataType.FLOAT_VECTOR)
    column.vectors.dim = int(vectors.shape[1])
    column.vectors.float_vector.MergeFromString(_packed_floats(vectors))
    return request


def send(client: MilvusClient, request: Any, timeout: float | None) -> int:
    """Sends an Insert or Upsert request; MilvusException if Milvus refuses
    it. Returns the rows Milvus wrote. Reads in this client's session see
    the write, as after pymilvus' own insert."""
    stub = client._get_connection()._stub
    call = stub.Insert if isinstance(request, milvus_pb2.InsertRequest) else stub.Upsert
    response = call(request, timeout=timeout)
    check_status(response.status)
    ts_utils.update_collection_ts(request.collection_name, response.timestamp)
    return int(response.insert_cnt or response.upsert_cnt)


def search_request(
    collection: str,
    vectors: np.ndarray,
    limit: int,
    search_params: dict[str, Any],
    expr: str,
    reads: dict[str, Any],
) -> Any:
    """A SearchRequest for ``vectors`` (queries x dim), the message pymilvus'
    ``MilvusClient.search`` sends for the same arguments; ``search_params``
    is its ``{"metric_type": ..., "params": {...}}`` and ``reads`` its
    consistency arguments (``consistency_level``, ``guarantee_timestamp``)."""
    if vectors.ndim != 2:
        raise ValueError(f"queries of shape {vectors.shape}")
    consistency = dict(reads)
    use_default = ts_utils.construct_guarantee_ts(collection, consistency)
    queries = np.ascontiguousarray(vectors, dtype="<f4")
    group = common_pb2.PlaceholderGroup(
        placeholders=[
            common_pb2.PlaceholderValue(
                tag="$0",
                type=common_pb2.PlaceholderType.FloatVector,
                values=[q.tobytes() for q in queries],
            )
        ]
    )
    params: dict[str, Any] = {"topk": limit, "round_decimal": -1, "ignore_growing": False}
    if search_params.get("metric_type") is not None:
        params["metric_type"] = search_params["metric_type"]
    params["params"] = get_params(search_params)
    return milvus_pb2.SearchRequest(
        collection_name=collection,
        guarantee_timestamp=consistency.get("guarantee_timestamp", 0),
        use_default_consistency=use_default,
        consistency_level=consistency.get("consistency_level", 0),
        nq=len(queries),
        placeholder_group=group.SerializeToString(),
        dsl_type=common_pb2.DslType.BoolExprV1,
        search_params=[
            common_pb2.KeyValuePair(key=key, value=dumps(value)) for key, value in params.items()
        ],
        dsl=expr,
    )


def search(
    client: MilvusClient, request: Any, timeout: float | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sends a SearchRequest on the client's blocking stub; see ``search_results``."""
    return search_results(client._get_connection()._stub.Search(request, timeout=timeout), request)


def search_results(response: Any, request: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query of ``request``, its hits' int64 ids and raw distances, best
    first, from Milvus' SearchResults. MilvusException if Milvus refused it."""
    check_status(response.status)
    result = response.results
    ids = np.asarray(result.ids.int_id.data, dtype=np.int64)
    scores = np.asarray(result.scores, dtype=np.float64)
    counts = list(result.topks) or [0] * request.nq
    out, start = [], 0
    for count in counts:
        out.append((ids[start : start + count], scores[start : start + count]))
        start += count
    return out
