"""Milvus write requests built column-wise from numpy arrays.

pymilvus turns each row's vector into Python floats and appends them to the
request one by one: for 256 vectors of 2048 dimensions that is half a
million Python objects, most of the index writer's CPU per batch. A float
vector field is a packed ``repeated float`` on the wire, so the request can
be made from the array's bytes in one parse instead (the same message, byte
for byte; a unit test compares it with pymilvus' own).

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
from pymilvus.client.utils import check_status
from pymilvus.grpc_gen import milvus_pb2

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
