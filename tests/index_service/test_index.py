"""The index over gRPC against each real backend pairing: Milvus Lite +
SQLite, Milvus Lite + MariaDB, a Milvus standalone server + SQLite."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from imagesearch import errors, ids
from imagesearch.server import server_loop
from imagesearch.v1 import index_pb2, index_pb2_grpc
from tests.conftest import (
    ROOT,
    Server,
    TcpProxy,
    channel,
    drop_sql_tables,
    free_port,
    index_settings,
    start_index,
    unique_prefix,
)

DIM = 16
MODEL = "test-model/avg/0123456789ab"


def digest(n: int) -> bytes:
    return hashlib.sha256(f"image-{n}".encode()).digest()


def vector(n: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(n).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def item(n: int, path: str | None = None) -> index_pb2.UpsertItem:
    return index_pb2.UpsertItem(
        sha256=digest(n),
        path=path or f"/photos/{n % 3}/img{n}.jpg",
        size=1000 + n,
        width=640,
        height=480,
        vector=vector(n).tobytes(),
    )


def upsert(
    stub: index_pb2_grpc.IndexServiceStub,
    items: list[index_pb2.UpsertItem],
    collection: str = "photos",
    model: str = MODEL,
    dim: int = DIM,
) -> index_pb2.IndexServiceUpsertResponse:
    return stub.Upsert(
        index_pb2.IndexServiceUpsertRequest(
            collection=collection, model=model, dim=dim, items=items
        ),
        timeout=60,
    )


def count(stub: index_pb2_grpc.IndexServiceStub, collection: str = "photos") -> int:
    return stub.Count(index_pb2.IndexServiceCountRequest(collection=collection), timeout=30).count


def search(
    stub: index_pb2_grpc.IndexServiceStub, vec: np.ndarray, top_k: int = 5, **kw: Any
) -> list[index_pb2.IndexHit]:
    response = stub.Search(
        index_pb2.IndexServiceSearchRequest(
            collection="photos", vectors=[vec.tobytes()], top_k=top_k, **kw
        ),
        timeout=30,
    )
    return list(response.results[0].hits)


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


@pytest.fixture
def index(index_backend: dict[str, object], tmp_path: Path):
    server = start_index(tmp_path, **index_backend)
    stub = index_pb2_grpc.IndexServiceStub(channel(server.port))
    yield stub
    server.running.stop(1)


def test_round_trip(index: index_pb2_grpc.IndexServiceStub) -> None:
    response = upsert(index, [item(n) for n in range(30)])
    assert (response.indexed, response.duplicates) == (30, 0)
    assert [r.image_id for r in response.results] == [
        ids.image_id_from_sha256(digest(n)) for n in range(30)
    ]
    assert count(index) == 30

    hits = search(index, vector(7), top_k=5)
    assert len(hits) == 5
    assert hits[0].image_id == ids.image_id_from_sha256(digest(7))
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].path == "/photos/1/img7.jpg" and (hits[0].width, hits[0].height) == (640, 480)
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))

    got = index.Get(
        index_pb2.IndexServiceGetRequest(collection="photos", image_ids=[hits[0].image_id]),
        timeout=30,
    )
    (rec,) = got.records
    assert (
        rec.sha256 == digest(7).hex()
        and rec.size == 1007
        and rec.status == index_pb2.IMAGE_STATUS_READY
    )
    assert rec.model == MODEL

    listed = index.ListCollections(
        index_pb2.IndexServiceListCollectionsRequest(), timeout=30
    ).collections
    assert [(c.name, c.dim, c.count, c.model) for c in listed] == [("photos", DIM, 30, MODEL)]

    deleted = index.Delete(
        index_pb2.IndexServiceDeleteRequest(collection="photos", image_ids=[hits[0].image_id]),
        timeout=30,
    )
    assert deleted.deleted == 1 and count(index) == 29
    assert search(index, vector(7), top_k=1)[0].image_id != hits[0].image_id

    assert index.DropCollection(
        index_pb2.IndexServiceDropCollectionRequest(collection="photos"), timeout=60
    ).dropped
    assert code_of(lambda: count(index)) == grpc.StatusCode.NOT_FOUND
    assert (
        index.ListCollections(
            index_pb2.IndexServiceListCollectionsRequest(), timeout=30
        ).collections
        == []
    )


def test_duplicates_are_idempotent_and_keep_paths(index: index_pb2_grpc.IndexServiceStub) -> None:
    upsert(index, [item(n) for n in range(5)])
    again = upsert(index, [item(n) for n in range(5)])
    assert (again.indexed, again.duplicates) == (0, 5)
    assert count(index) == 5
    # The same bytes under a second path: still one image, both paths kept.
    second = upsert(index, [item(2, path="/elsewhere/copy.jpg")])
    assert second.duplicates == 1 and second.results[0].path_added
    assert count(index) == 5
    hit = search(index, vector(2), top_k=1)[0]
    assert list(hit.paths) == ["/photos/2/img2.jpg", "/elsewhere/copy.jpg"]
    # Within one request too.
    dup_in_request = upsert(index, [item(9), item(9)])
    assert (dup_in_request.indexed, dup_in_request.duplicates) == (1, 1)


def test_changed_file_at_same_path_replaces_the_old_image(
    index: index_pb2_grpc.IndexServiceStub,
) -> None:
    upsert(index, [item(1, path="/p/a.jpg")])
    upsert(index, [item(2, path="/p/a.jpg")])  # new bytes at the same path
    assert count(index) == 1
    assert search(index, vector(1), top_k=1)[0].image_id == ids.image_id_from_sha256(digest(2))


def test_searches_see_every_change_to_paths(index: index_pb2_grpc.IndexServiceStub) -> None:
    """Searches keep ready rows in memory (INDEX_ROW_CACHE): every change made
    through the index shows in the very next search."""
    upsert(index, [item(n) for n in range(6)])

    def top() -> index_pb2.IndexHit:
        return search(index, vector(2), top_k=1)[0]

    assert list(top().paths) == ["/photos/2/img2.jpg"]
    upsert(index, [item(2, path="/elsewhere/copy.jpg")])
    assert list(top().paths) == ["/photos/2/img2.jpg", "/elsewhere/copy.jpg"]
    index.Delete(
        index_pb2.IndexServiceDeleteRequest(collection="photos", paths=["/photos/2/img2.jpg"]),
        timeout=30,
    )
    assert list(top().paths) == ["/elsewhere/copy.jpg"]
    upsert(index, [item(7, path="/elsewhere/copy.jpg")])  # other bytes there: image 2 is gone
    assert top().image_id != ids.image_id_from_sha256(digest(2))
    index.DropCollection(
        index_pb2.IndexServiceDropCollectionRequest(collection="photos"), timeout=60
    )
    upsert(index, [item(2, path="/new/two.jpg")])
    assert list(top().paths) == ["/new/two.jpg"]


def test_top_k_and_prefix_filter(index: index_pb2_grpc.IndexServiceStub) -> None:
    upsert(index, [item(n) for n in range(40)])
    for k in (1, 7, 40):
        assert len(search(index, vector(0), top_k=k)) == k
    hits = search(index, vector(0), top_k=40, path_prefix="/photos/1/")
    assert len(hits) == len([n for n in range(40) if n % 3 == 1])
    assert all(h.path.startswith("/photos/1/") for h in hits)
    # LIKE wildcards in a prefix are literal.
    assert search(index, vector(0), top_k=5, path_prefix="/photos/%") == []
    high = search(index, vector(0), top_k=40, min_score=0.99)
    assert [h.image_id for h in high] == [ids.image_id_from_sha256(digest(0))]
    for bad in (0, 1001, -1):
        assert (
            code_of(lambda bad=bad: search(index, vector(0), top_k=bad))
            == grpc.StatusCode.INVALID_ARGUMENT
        )


def test_search_by_stored_image_id(index: index_pb2_grpc.IndexServiceStub) -> None:
    upsert(index, [item(n) for n in range(10)])
    iid = ids.image_id_from_sha256(digest(4))
    response = index.Search(
        index_pb2.IndexServiceSearchRequest(collection="photos", image_ids=[iid], top_k=3),
        timeout=30,
    )
    assert response.results[0].hits[0].image_id == iid
    missing = index_pb2.IndexServiceSearchRequest(collection="photos", image_ids=[12345], top_k=3)
    assert code_of(lambda: index.Search(missing, timeout=30)) == grpc.StatusCode.NOT_FOUND


def test_delete_by_paths_and_prefix(index: index_pb2_grpc.IndexServiceStub) -> None:
    upsert(index, [item(n) for n in range(12)])
    upsert(index, [item(0, path="/keep/zero.jpg")])
    by_path = index.Delete(
        index_pb2.IndexServiceDeleteRequest(collection="photos", paths=["/photos/0/img0.jpg"]),
        timeout=30,
    )
    assert by_path.deleted == 0 and by_path.paths_removed == 1  # still under /keep/
    assert count(index) == 12
    by_prefix = index.Delete(
        index_pb2.IndexServiceDeleteRequest(collection="photos", path_prefix="/photos/1/"),
        timeout=30,
    )
    assert by_prefix.deleted == 4 and count(index) == 8
    remaining = search(index, vector(1), top_k=12)
    assert not any(h.path.startswith("/photos/1/") for h in remaining)
    assert len(remaining) == 8


def test_model_and_dimension_mismatch_refused(index: index_pb2_grpc.IndexServiceStub) -> None:
    upsert(index, [item(1)])
    assert (
        code_of(lambda: upsert(index, [item(2)], model="other"))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    wide = index_pb2.UpsertItem(sha256=digest(3), path="/x.jpg", vector=vector(3, 32).tobytes())
    assert code_of(lambda: upsert(index, [wide], dim=32)) == grpc.StatusCode.FAILED_PRECONDITION
    query = index_pb2.IndexServiceSearchRequest(
        collection="photos", vectors=[vector(1).tobytes()], top_k=1, model="other"
    )
    assert code_of(lambda: index.Search(query, timeout=30)) == grpc.StatusCode.FAILED_PRECONDITION
    assert count(index) == 1


def test_an_upsert_of_no_items_makes_the_collection_or_checks_it(
    index: index_pb2_grpc.IndexServiceStub,
) -> None:
    """What a job sends while its first images are embedded."""
    assert upsert(index, []).results == []
    listed = index.ListCollections(index_pb2.IndexServiceListCollectionsRequest(), timeout=30)
    assert [(c.name, c.model, c.dim) for c in listed.collections] == [("photos", MODEL, DIM)]
    assert count(index) == 0
    assert upsert(index, []).results == []  # made already: checked only
    assert code_of(lambda: upsert(index, [], model="other")) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: upsert(index, [], dim=32)) == grpc.StatusCode.FAILED_PRECONDITION
    stored = upsert(index, [item(1)]).results[0]
    assert stored.outcome == index_pb2.UPSERT_OUTCOME_INDEXED
    assert count(index) == 1 and search(index, vector(1))[0].image_id == stored.image_id


# The rules themselves (every bad vector, every hostile name) are unit tests
# (tests/unit/test_checks.py); they refuse before any backend is touched, so
# the server checks below run on one backend: the status, the message, and
# that nothing stored changed.
BAD_VECTORS = [
    (b"", "empty"),
    (np.full(DIM, np.nan, dtype=np.float32).tobytes(), "NaN"),
    (np.ones(DIM - 1, dtype=np.float32).tobytes(), "bytes"),
    (np.zeros(DIM, dtype=np.float32).tobytes(), "zeros"),
]
HOSTILE_NAMES = ["", "x; DROP TABLE imgsearch_images", "../../etc", "a" * 64, "фото"]


@pytest.fixture
def lite_index(tmp_path: Path):
    """An index on Milvus Lite + SQLite alone."""
    server = start_index(tmp_path, table_prefix=unique_prefix())
    yield index_pb2_grpc.IndexServiceStub(channel(server.port))
    server.running.stop(1)


def test_bad_vectors_refused_and_data_unchanged(
    lite_index: index_pb2_grpc.IndexServiceStub,
) -> None:
    index = lite_index
    upsert(index, [item(n) for n in range(3)])
    for raw, what in BAD_VECTORS:
        bad = index_pb2.UpsertItem(sha256=digest(99), path="/bad.jpg", vector=raw)
        with pytest.raises(grpc.RpcError) as err:
            upsert(index, [item(50), bad])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
        assert what in str(err.value.details())
        assert count(index) == 3  # the good item in the same request was not half-written
        query = np.frombuffer(raw, dtype=np.float32) if raw else np.array([], dtype=np.float32)
        assert code_of(lambda q=query: search(index, q)) == grpc.StatusCode.INVALID_ARGUMENT


def test_hostile_collection_names(lite_index: index_pb2_grpc.IndexServiceStub) -> None:
    index = lite_index
    upsert(index, [item(1)])
    for name in HOSTILE_NAMES:
        assert (
            code_of(lambda n=name: upsert(index, [item(2)], collection=n))
            == grpc.StatusCode.INVALID_ARGUMENT
        ), name
        assert code_of(lambda n=name: count(index, n)) == grpc.StatusCode.INVALID_ARGUMENT
        drop = index_pb2.IndexServiceDropCollectionRequest(collection=name)
        assert (
            code_of(lambda d=drop: index.DropCollection(d, timeout=30))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    assert count(index) == 1


def test_unknown_collection_is_not_found(index: index_pb2_grpc.IndexServiceStub) -> None:
    assert code_of(lambda: count(index, "nope")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: search(index, vector(1))) == grpc.StatusCode.NOT_FOUND
    drop = index_pb2.IndexServiceDropCollectionRequest(collection="nope")
    assert code_of(lambda: index.DropCollection(drop, timeout=30)) == grpc.StatusCode.NOT_FOUND


def test_reconcile_repairs_a_crash_between_the_writes(
    index_backend: dict[str, object], tmp_path: Path
) -> None:
    """Crash after the SQL write (rows pending, no vectors), crash after the
    Milvus write (rows pending, vectors present), and a vector whose row is
    gone: Reconcile repairs all three with nothing lost or duplicated."""
    from index_service.app import build_store
    from index_service.plan import Item
    from index_service.rows import NewImage

    settings = index_settings(tmp_path, **index_backend)
    store = build_store(settings)
    items = [Item(digest(n), f"/c/{n}.jpg", 10, 2, 2, vector(n).tobytes()) for n in range(6)]
    store.upsert("photos", MODEL, DIM, items[:2])
    iid = [ids.image_id_from_sha256(digest(n)) for n in range(6)]
    # Crash 1: rows for 2 and 3 written as pending, no vectors.
    store.meta.write_pending(
        "photos",
        MODEL,
        [NewImage(iid[n], digest(n).hex(), f"/c/{n}.jpg", 10, 2, 2) for n in (2, 3)],
        [(f"/c/{n}.jpg", iid[n]) for n in (2, 3)],
        [],
    )
    # Crash 2: rows for 4 pending and its vector written, never marked ready.
    store.meta.write_pending(
        "photos",
        MODEL,
        [NewImage(iid[4], digest(4).hex(), "/c/4.jpg", 10, 2, 2)],
        [("/c/4.jpg", iid[4])],
        [],
    )
    store.vectors.upsert("photos", [iid[4]], np.stack([vector(4)]))
    # Crash 3: a vector with no row (a delete interrupted after SQL).
    store.vectors.upsert("photos", [iid[5]], np.stack([vector(5)]))
    assert store.count("photos") == (2, 3)
    # Searches only return ready rows, even before repair.
    found = {
        h.image_id
        for h in store.search("photos", [vector(5).tobytes(), vector(4).tobytes()], [], 6)[0]
    }
    assert found == {iid[0], iid[1]}
    store.vectors.close()
    store.meta.dispose()

    server = start_index(tmp_path, **index_backend)  # reconciles at start-up
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(server.port))
        counts = stub.Count(index_pb2.IndexServiceCountRequest(collection="photos"), timeout=30)
        assert (counts.count, counts.pending) == (3, 2)
        report = stub.Reconcile(
            index_pb2.IndexServiceReconcileRequest(collection="photos"), timeout=60
        )
        assert sorted(r.path for r in report.needs_reembedding) == ["/c/2.jpg", "/c/3.jpg"]
        assert report.marked_ready == 0 and report.orphan_vectors_deleted == 0  # done at start
        # Re-indexing the reported files completes the repair, nothing duplicated.
        again = upsert(
            stub,
            [
                index_pb2.UpsertItem(
                    sha256=digest(n),
                    path=f"/c/{n}.jpg",
                    size=10,
                    width=2,
                    height=2,
                    vector=vector(n).tobytes(),
                )
                for n in range(6)
            ],
        )
        assert (again.indexed, again.duplicates) == (3, 3)  # 2, 3 pending -> ready; 5 was an orphan
        counts = stub.Count(index_pb2.IndexServiceCountRequest(collection="photos"), timeout=30)
        assert (counts.count, counts.pending) == (6, 0)
        hits = stub.Search(
            index_pb2.IndexServiceSearchRequest(
                collection="photos", vectors=[vector(0).tobytes()], top_k=10
            ),
            timeout=30,
        )
        assert sorted(h.image_id for h in hits.results[0].hits) == sorted(iid)
    finally:
        server.running.stop(1)


def test_search_digs_past_many_unusable_hits(
    index_backend: dict[str, object], tmp_path: Path
) -> None:
    """40 vectors nearer to the query than any ready image, their rows pending
    (an ingest in flight) or gone: top_k still comes back full, from the
    ready rows, in score order."""
    from index_service.app import build_store
    from index_service.plan import Item
    from index_service.rows import NewImage

    store = build_store(index_settings(tmp_path, **index_backend))
    query = vector(0)
    ready = [Item(digest(n), f"/r/{n}.jpg", 1, 1, 1, vector(n).tobytes()) for n in range(1, 9)]
    store.upsert("photos", MODEL, DIM, ready)
    rng = np.random.default_rng(7)
    near = query + 0.01 * rng.standard_normal((40, DIM)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    near_ids = [ids.image_id_from_sha256(digest(100 + n)) for n in range(40)]
    store.meta.write_pending(  # half pending, half with no row at all
        "photos",
        MODEL,
        [
            NewImage(i, digest(100 + n).hex(), f"/p/{n}.jpg", 1, 1, 1)
            for n, i in enumerate(near_ids[:20])
        ],
        [(f"/p/{n}.jpg", i) for n, i in enumerate(near_ids[:20])],
        [],
    )
    store.vectors.upsert("photos", near_ids, near)
    try:
        hits = store.search("photos", [query.tobytes()], [], 5)[0]
        expected = sorted(range(1, 9), key=lambda n: -float(query @ vector(n)))[:5]
        assert [h.image_id for h in hits] == [ids.image_id_from_sha256(digest(n)) for n in expected]
    finally:
        store.vectors.close()
        store.meta.dispose()


def test_start_up_reconcile_deletes_orphan_vectors(
    index_backend: dict[str, object], tmp_path: Path
) -> None:
    from index_service.app import build_store

    store = build_store(index_settings(tmp_path, **index_backend))
    from index_service.plan import Item

    store.upsert("photos", MODEL, DIM, [Item(digest(1), "/a.jpg", 1, 1, 1, vector(1).tobytes())])
    orphan = ids.image_id_from_sha256(digest(2))
    store.vectors.upsert("photos", [orphan], np.stack([vector(2)]))
    report = store.reconcile()
    assert report.orphan_vectors_deleted == 1
    assert store.vectors.existing("photos", [orphan], strong=True) == set()
    assert store.count("photos") == (1, 0)
    store.vectors.close()
    store.meta.dispose()


def test_a_refused_row_write_withdraws_the_batchs_vectors(tmp_path: Path) -> None:
    """The vectors are sent while SQL writes the rows: when the database
    refuses the rows (here a trigger), nothing of the batch stays, in SQL or
    in Milvus, and the earlier batch is untouched."""
    from sqlalchemy import text

    from index_service.app import build_store
    from index_service.plan import Item

    store = build_store(index_settings(tmp_path))
    batch = [Item(digest(n), f"/a/{n}.jpg", 1, 1, 1, vector(n).tobytes()) for n in range(4)]
    store.upsert("photos", MODEL, DIM, batch[:2])
    with store.meta.engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TRIGGER refuse BEFORE INSERT ON {store.meta.paths.name} "
                "WHEN NEW.path = '/a/3.jpg' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    with pytest.raises(Exception, match="refused"):
        store.upsert("photos", MODEL, DIM, batch[2:])
    refused = [ids.image_id_from_sha256(digest(n)) for n in (2, 3)]
    kept = [ids.image_id_from_sha256(digest(n)) for n in (0, 1)]
    assert store.meta.known_ids("photos", refused + kept) == set(kept)
    assert store.vectors.existing("photos", refused + kept, strong=True) == set(kept)
    assert store.count("photos") == (2, 0)
    store.vectors.close()
    store.meta.dispose()


def test_a_refused_vector_write_commits_no_rows(tmp_path: Path) -> None:
    """Milvus refuses the vectors (its collection was dropped behind the
    index's back): the rows written beside them are not committed, so a
    retry is not taken for a duplicate."""
    from imagesearch import errors
    from index_service.app import build_store
    from index_service.plan import Item

    store = build_store(index_settings(tmp_path))
    batch = [Item(digest(n), f"/a/{n}.jpg", 1, 1, 1, vector(n).tobytes()) for n in range(4)]
    store.upsert("photos", MODEL, DIM, batch[:2])
    milvus = store.vectors._connect()  # type: ignore[attr-defined]
    milvus.drop_collection(store.vectors.milvus_name("photos"))  # type: ignore[attr-defined]
    with pytest.raises(errors.ServiceError):
        store.upsert("photos", MODEL, DIM, batch[2:])
    refused = [ids.image_id_from_sha256(digest(n)) for n in (2, 3)]
    assert store.meta.known_ids("photos", refused) == set()
    assert store.meta.path_owners("photos", ["/a/2.jpg", "/a/3.jpg"]) == {}
    store.vectors.close()
    store.meta.dispose()


@pytest.mark.mariadb
def test_database_outage_gives_unavailable_then_recovers(mariadb_url: str, tmp_path: Path) -> None:
    """MariaDB behind a proxy that we cut: UNAVAILABLE with a clear message,
    nothing half-written, and the service recovers by itself."""
    from sqlalchemy.engine import make_url

    url = make_url(mariadb_url)
    proxy = TcpProxy(url.port or 3306)
    prefix = unique_prefix()
    server: Server = start_index(
        tmp_path,
        database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        ),
        table_prefix=prefix,
    )
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(server.port))
        upsert(stub, [item(n) for n in range(3)])
        proxy.cut()
        for call in (lambda: upsert(stub, [item(7)]), lambda: count(stub)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "metadata database" in str(err.value.details()) and "retry" in str(
                err.value.details()
            )
        proxy.restore()
        assert count(stub) == 3  # nothing half-written during the outage
        assert upsert(stub, [item(7)]).indexed == 1
        assert count(stub) == 4
    finally:
        server.running.stop(1)
        proxy.close()
        drop_sql_tables(mariadb_url, prefix)


def test_unreachable_database_at_start_gives_unavailable(tmp_path: Path) -> None:
    server: Server = start_index(
        tmp_path, database_url=f"mysql+pymysql://root@127.0.0.1:{free_port()}/test"
    )
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(server.port))
        with pytest.raises(grpc.RpcError) as err:
            upsert(stub, [item(1)])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "metadata database" in str(err.value.details())
    finally:
        server.running.stop(1)


@pytest.mark.slow
def test_milvus_down_gives_unavailable_and_leaves_sql_untouched(tmp_path: Path) -> None:
    """No Milvus server at the URI: UNAVAILABLE naming Milvus, no SQL rows left behind."""
    from index_service.metadata import MetadataStore

    server: Server = start_index(
        tmp_path, milvus_uri=f"http://127.0.0.1:{free_port()}", milvus_timeout_s=3.0
    )
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(server.port))
        with pytest.raises(grpc.RpcError) as err:
            upsert(stub, [item(1)])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Milvus" in str(err.value.details()) and "retry" in str(err.value.details())
    finally:
        server.running.stop(1)
    meta = MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}")
    assert meta.list_collections() == []
    meta.dispose()


def test_a_hit_lists_the_first_paths_and_counts_the_rest(tmp_path: Path) -> None:
    server = start_index(tmp_path, max_paths_per_hit=2)
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(server.port))
        for n in range(5):  # the same bytes under five paths
            upsert(stub, [item(7, path=f"/copies/{n}/img7.jpg")])
        (hit,) = search(stub, vector(7), top_k=1)
        assert list(hit.paths) == ["/copies/0/img7.jpg", "/copies/1/img7.jpg"]
        assert hit.more_paths == 3 and hit.path == "/copies/0/img7.jpg"
    finally:
        server.running.stop(1)


def test_row_cache_stays_within_its_byte_bound(tmp_path: Path) -> None:
    from index_service.app import build_store, start

    settings = index_settings(tmp_path, row_cache_mb=1)
    store = build_store(settings)
    running = start(settings, store)
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(running.port))
        long = "/" + "x" * 600  # ~700 bytes a path: 1 MiB holds ~800 rows, not 2000
        upsert(stub, [item(n, path=f"{long}/{n}.jpg") for n in range(2000)])
        most = 0
        for n in range(0, 2000, 25):
            search(stub, vector(n), top_k=50)
            held = store.meta.row_cache.held()[1]
            most = max(most, held)
            assert held <= 1024 * 1024
        assert most > 512 * 1024  # it does cache, up to near the bound
    finally:
        running.stop(1)


def test_health_answers_while_the_start_up_reconcile_runs(tmp_path: Path) -> None:
    """Start-up Reconcile runs behind a served port: liveness SERVING, the
    IndexService NOT_SERVING until it ends, calls wait for it. The Reconcile
    is held up here by another connection's exclusive lock on the database."""
    import sqlite3

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    first = start_index(tmp_path)
    upsert(index_pb2_grpc.IndexServiceStub(channel(first.port)), [item(n) for n in range(4)])
    first.running.stop(1)

    lock = sqlite3.connect(tmp_path / "meta.db", timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    from index_service.app import start

    again = start(index_settings(tmp_path))  # returns while Reconcile waits for the lock
    try:
        health = health_pb2_grpc.HealthStub(channel(again.port))

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        assert status("") == health_pb2.HealthCheckResponse.SERVING
        assert status("imagesearch.v1.IndexService") == health_pb2.HealthCheckResponse.NOT_SERVING
        lock.rollback()
        lock.close()
        stub = index_pb2_grpc.IndexServiceStub(channel(again.port))
        assert count(stub) == 4  # waited for the Reconcile, then answered
        assert status("imagesearch.v1.IndexService") == health_pb2.HealthCheckResponse.SERVING
    finally:
        again.stop(1)


@pytest.mark.mariadb
def test_database_tls_is_required_when_asked_for(
    mariadb_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """This MariaDB offers no TLS: with INDEX_DATABASE_TLS_CA set, the store
    refuses to go on in plaintext; the client's message does not name the
    database's address, the log says why."""
    from imagesearch import errors
    from imagesearch.tls import local_pki
    from index_service.metadata import MetadataStore

    pki, _ = local_pki(tmp_path / "pki", [])
    prefix = unique_prefix()
    store = MetadataStore(mariadb_url, prefix, tls={"ca": str(pki.ca)})
    with pytest.raises(errors.ServiceError) as info:
        store.list_collections()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1" not in info.value.message
    logged = [
        getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "database.unavailable"
    ]
    assert "SSL is required" in logged[0]["error"] and "127.0.0.1" in logged[0]["url"]
    store.dispose()
    plain = MetadataStore(mariadb_url, prefix)  # the control: without TLS it connects
    assert plain.list_collections() == []
    plain.dispose()
    drop_sql_tables(mariadb_url, prefix)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_tables_from_before_path_origins_get_the_column(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An older version's tables (no `origin`, no `writes`, no record of
    migrations) are migrated at start-up, each migration once and recorded;
    the old paths count as streamed names, which a server job can take back."""
    from sqlalchemy import text

    from index_service.metadata import MetadataStore
    from index_service.rows import STREAM, CollectionRow

    url = (
        request.getfixturevalue("mariadb_url")
        if backend == "mariadb"
        else f"sqlite:///{tmp_path / 'old.db'}"
    )
    prefix = unique_prefix()
    old = MetadataStore(url, prefix)
    assert old.list_collections() == []  # creates the tables
    with old.engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {prefix}image_paths DROP COLUMN origin"))
        conn.execute(text(f"ALTER TABLE {prefix}collections DROP COLUMN writes"))
        conn.execute(text(f"ALTER TABLE {prefix}collections DROP COLUMN text_model"))
        conn.execute(text(f"ALTER TABLE {prefix}collections DROP COLUMN text_dim"))
        conn.execute(text(f"DROP TABLE {prefix}schema_migrations"))  # older than it too
        conn.execute(
            text(
                f"INSERT INTO {prefix}image_paths (collection, path, image_id, created_at_ms) "
                "VALUES ('c', '/old/a.jpg', 7, 1)"
            )
        )
    old.dispose()
    upgraded = MetadataStore(url, prefix)
    assert upgraded.path_owners("c", ["/old/a.jpg"]) == {"/old/a.jpg": (7, STREAM)}
    upgraded.create_collection(CollectionRow("c", "m", 4, "IP", "FLAT"))
    upgraded.delete_images("c", [7])  # a write, which counts itself for readers
    with upgraded.engine.connect() as conn:
        assert conn.execute(text(f"SELECT writes FROM {prefix}collections")).scalar() == 1
        # Each migration ran once and is recorded; opening again runs none.
        recorded = f"SELECT number FROM {prefix}schema_migrations ORDER BY number"
        assert conn.execute(text(recorded)).scalars().all() == [1, 2, 3]
    row = upgraded.get_collection("c")
    assert row is not None and (row.text_model, row.text_dim) == ("", 0)  # no text space yet
    upgraded.dispose()
    from index_service.schema import create_or_migrate

    again = MetadataStore(url, prefix)
    assert create_or_migrate(again.engine, again.md, again.tables) == []
    again.dispose()
    # A new database records the last migration and runs none.
    fresh_prefix = unique_prefix()
    fresh = MetadataStore(url, fresh_prefix)
    assert create_or_migrate(fresh.engine, fresh.md, fresh.tables) == []
    with fresh.engine.connect() as conn:
        got = conn.execute(text(f"SELECT number, what FROM {fresh_prefix}schema_migrations"))
        assert [tuple(r) for r in got] == [(3, "new database")]
    fresh.dispose()
    if backend == "mariadb":
        drop_sql_tables(url, fresh_prefix)
    if backend == "mariadb":
        drop_sql_tables(url, prefix)


def test_an_id_collision_never_merges_two_images(index: index_pb2_grpc.IndexServiceStub) -> None:
    """Ids are the first 8 bytes of SHA-256: bytes whose digest shares them
    with a stored image's (crafted here) are refused, not taken as a duplicate."""
    upsert(index, [item(1, path="/a.jpg")])
    twin = index_pb2.UpsertItem()
    twin.CopyFrom(item(2, path="/b.jpg"))
    twin.sha256 = digest(1)[:8] + digest(2)[8:]
    reply = upsert(index, [twin, item(3, path="/c.jpg")])
    refused, fine = reply.results
    assert refused.outcome == index_pb2.UPSERT_OUTCOME_REFUSED
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert digest(1).hex() in refused.error and twin.sha256.hex() in refused.error
    assert fine.outcome == index_pb2.UPSERT_OUTCOME_INDEXED and reply.indexed == 1
    (hit,) = search(index, vector(1), top_k=1)
    assert list(hit.paths) == ["/a.jpg"]  # /b.jpg was not attached to image 1
    assert count(index) == 2


def test_a_bad_path_fails_its_item_not_the_batch(index: index_pb2_grpc.IndexServiceStub) -> None:
    long = "/" + "x" * 760 + ".jpg"
    reply = upsert(index, [item(1, path=long), item(2, path="/ok.jpg")])
    bad, good = reply.results
    assert bad.outcome == index_pb2.UPSERT_OUTCOME_REFUSED
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "characters" in bad.error
    assert good.outcome == index_pb2.UPSERT_OUTCOME_INDEXED
    assert count(index) == 1


def test_prefix_filters_are_case_sensitive(index: index_pb2_grpc.IndexServiceStub) -> None:
    upsert(index, [item(1, path="/Photos/a.jpg"), item(2, path="/photos/b.jpg")])
    hits = search(index, vector(2), top_k=5, path_prefix="/Photos/")
    assert [h.path for h in hits] == ["/Photos/a.jpg"]
    gone = index.Delete(
        index_pb2.IndexServiceDeleteRequest(collection="photos", path_prefix="/Photos/"),
        timeout=30,
    )
    assert gone.deleted == 1
    assert [h.path for h in search(index, vector(2), top_k=5)] == ["/photos/b.jpg"]


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", marks=pytest.mark.processes),  # starts a second index as a process
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_a_second_index_on_the_same_store_refuses_to_start(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from index_service.app import start
    from index_service.writer import StoreLocked

    url = (
        request.getfixturevalue("mariadb_url")
        if backend == "mariadb"
        else f"sqlite:///{tmp_path / 'shared.db'}"
    )
    prefix, other_prefix = unique_prefix(), unique_prefix()
    first = start_index(tmp_path / "a", database_url=url, table_prefix=prefix)
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(first.port))
        upsert(stub, [item(1), item(2)])
        with pytest.raises(StoreLocked) as info:
            start(index_settings(tmp_path / "b", database_url=url, table_prefix=prefix))
        assert "another index already writes" in str(info.value)
        if backend == "sqlite":  # as a process: exit 3, saying who holds it
            env = {k: v for k, v in os.environ.items() if not k.startswith("INDEX_")}
            env.update(
                INDEX_DATABASE_URL=url,
                INDEX_TABLE_PREFIX=prefix,
                INDEX_MILVUS_URI=str(tmp_path / "c" / "milvus.db"),
                INDEX_PORT="0",
            )
            done = subprocess.run(
                [sys.executable, "-m", "index_service"], capture_output=True, text=True,
                env=env, cwd=ROOT, timeout=120,
            )  # fmt: skip
            assert done.returncode == 3, done.stderr
            assert f"pid {os.getpid()}" in done.stderr
        # Another prefix on the same database is another store.
        neighbour = start_index(tmp_path / "d", database_url=url, table_prefix=other_prefix)
        neighbour.running.stop(1)
        assert count(stub) == 2  # the first keeps serving its rows
    finally:
        first.running.stop(1)
    # Stopped, it lets the next one in.
    again = start_index(tmp_path / "a", database_url=url, table_prefix=prefix)
    assert count(index_pb2_grpc.IndexServiceStub(channel(again.port))) == 2
    again.running.stop(1)
    if backend == "mariadb":
        drop_sql_tables(url, prefix)
        drop_sql_tables(url, other_prefix)


def thumbnails(stub: index_pb2_grpc.IndexServiceStub, ids: list[int]) -> dict[int, bytes]:
    reply = stub.GetThumbnails(
        index_pb2.IndexServiceGetThumbnailsRequest(collection="photos", image_ids=ids), timeout=30
    )
    return {t.image_id: t.data for t in reply.thumbnails}


def test_thumbnails_are_kept_with_their_rows(index: index_pb2_grpc.IndexServiceStub) -> None:
    """Stored with the row (first one wins: an id is its content), filled in
    by a later duplicate when missing, listed by Reconcile when missing,
    deleted with the row. 100 KB is over MySQL's 64 KiB BLOB."""
    big = os.urandom(100 * 1024)
    with_thumb = [index_pb2.UpsertItem(**{**_fields(item(n)), "thumbnail": big}) for n in range(3)]
    without = [item(n) for n in range(3, 6)]
    results = upsert(index, with_thumb + without).results
    ids_ = [r.image_id for r in results]
    assert thumbnails(index, ids_) == {i: big for i in ids_[:3]}

    reconciled = index.Reconcile(
        index_pb2.IndexServiceReconcileRequest(collection="photos", thumbnails_limit=2), timeout=60
    )
    assert reconciled.thumbnails_missing == 3
    assert len(reconciled.needs_thumbnail) == 2
    assert {r.image_id for r in reconciled.needs_thumbnail} <= set(ids_[3:])
    assert all(r.paths and r.sha256 for r in reconciled.needs_thumbnail)

    # A duplicate brings the missing one; a thumbnail never changes once stored.
    late = index_pb2.UpsertItem(**{**_fields(item(3)), "thumbnail": b"late"})
    other = index_pb2.UpsertItem(**{**_fields(item(0)), "thumbnail": b"other"})
    upsert(index, [late, other])
    found = thumbnails(index, ids_)
    assert found[ids_[3]] == b"late" and found[ids_[0]] == big

    index.Delete(
        index_pb2.IndexServiceDeleteRequest(collection="photos", image_ids=ids_[:1]), timeout=30
    )
    index.Delete(
        index_pb2.IndexServiceDeleteRequest(collection="photos", paths=[item(3).path]), timeout=30
    )
    assert set(thumbnails(index, ids_)) == {ids_[1], ids_[2]}
    # Indexed again without a thumbnail: the old one is gone for good.
    upsert(index, [item(0), item(3)])
    assert set(thumbnails(index, ids_)) == {ids_[1], ids_[2]}
    index.DropCollection(
        index_pb2.IndexServiceDropCollectionRequest(collection="photos"), timeout=60
    )
    upsert(index, [item(1)])
    assert thumbnails(index, ids_) == {}


def _fields(msg: index_pb2.UpsertItem) -> dict[str, Any]:
    return {f.name: v for f, v in msg.ListFields()}


def test_a_model_mismatch_names_every_setting_of_the_stored_model() -> None:
    """The way back names exactly the settings that made the stored vectors,
    whatever parts the model id has (GeM's exponent, preprocessing sizes)."""
    from index_service.names import ways_back

    plain = ways_back("shoes", "mobilenet_v2/avg/2f518e773d44")
    assert "EMBEDDER_MODEL=mobilenet_v2 EMBEDDER_POOLING=avg," in plain
    assert "sha256 starts 2f518e773d44:" in plain and "imgsearch drop -c shoes --yes" in plain
    full = ways_back("shoes", "efficientnet_lite0/gem4/579344248a93/292-256")
    assert (
        "EMBEDDER_MODEL=efficientnet_lite0 EMBEDDER_POOLING=gem EMBEDDER_GEM_P=4 "
        "EMBEDDER_RESIZE=292 EMBEDDER_IMAGE_SIZE=256," in full
    )
    assert "sha256 starts 579344248a93:" in full


def test_searches_on_the_event_loop_answer_as_the_threaded_ones(
    index_backend: dict[str, object], tmp_path: Path
) -> None:
    """IndexStore.search_async (what Search serves, on the server's event
    loop) gives the hits of IndexStore.search for the same queries: by
    vectors (the asyncio channel to Milvus, rows from the cache or read on a
    thread), with min_score, by stored id and with a path prefix (both on a
    thread); and its errors are the same."""
    import asyncio

    from index_service.app import build_store
    from index_service.plan import Item

    store = build_store(index_settings(tmp_path, **index_backend))
    store.upsert(
        "photos",
        MODEL,
        DIM,
        [
            Item(digest(n), f"/photos/{n % 3}/{n}.jpg", 1, 1, 1, vector(n).tobytes())
            for n in range(30)
        ],
    )
    stored_id = ids.image_id_from_sha256(digest(4))
    cases: list[dict[str, Any]] = [
        {"query_vectors": [vector(n).tobytes() for n in (1, 2, 3)], "top_k": 5},
        {"query_vectors": [vector(7).tobytes()], "top_k": 10, "min_score": 0.3},
        {"query_vectors": [vector(8).tobytes()], "top_k": 4, "prefix": "/photos/1/"},
        {"query_vectors": [], "query_ids": [stored_id], "top_k": 3},
    ]

    def hits(found: list[list[Any]]) -> list[list[tuple[int, float]]]:
        return [[(h.image_id, round(h.score, 5)) for h in q] for q in found]

    async def on_the_loop() -> list[Any]:
        out: list[Any] = []
        for case in cases * 2:  # the second time, every row is cached
            out.append(hits(await store.search_async("photos", **{"query_ids": [], **case})))
        for bad in ({"top_k": 0}, {"top_k": 3, "model": "another-model"}):
            with pytest.raises(errors.ServiceError) as err:
                await store.search_async("photos", [vector(1).tobytes()], [], **bad)
            out.append(err.value.code)
        with pytest.raises(errors.ServiceError) as err:
            await store.search_async("nowhere", [vector(1).tobytes()], [], 3)
        out.append(err.value.code)
        return out

    try:
        threaded = [hits(store.search("photos", **{"query_ids": [], **case})) for case in cases]
        looped = asyncio.run(on_the_loop())
        assert looped[: 2 * len(cases)] == threaded * 2
        assert threaded[0][0][0][0] == ids.image_id_from_sha256(digest(1))  # itself first
        assert all(score >= 0.3 for _, score in threaded[1][0])
        assert looped[2 * len(cases) :] == [
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.NOT_FOUND,
        ]
        assert store.vectors._aio is not None  # type: ignore[attr-defined]  # the loop's channel served
    finally:
        store.vectors.close()
        store.meta.dispose()


@pytest.mark.milvus_server
def test_searches_on_the_loop_survive_a_milvus_outage(milvus_server: str, tmp_path: Path) -> None:
    """Milvus cut off while searches run on the asyncio channel: Search
    answers UNAVAILABLE naming Milvus; once it is back, searches answer
    again without a restart (the channel is opened anew)."""
    from urllib.parse import urlparse

    proxy = TcpProxy(urlparse(milvus_server).port or 19530)
    prefix = unique_prefix()
    server: Server = start_index(
        tmp_path,
        milvus_uri=f"http://127.0.0.1:{proxy.port}",
        milvus_prefix=prefix,
        table_prefix=prefix,
        milvus_timeout_s=3.0,
    )
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(server.port))
        upsert(stub, [item(n) for n in range(6)])
        first = ids.image_id_from_sha256(digest(2))
        assert search(stub, vector(2))[0].image_id == first
        proxy.cut()
        with pytest.raises(grpc.RpcError) as err:
            search(stub, vector(2))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Milvus" in str(err.value.details())
        proxy.restore()
        assert search(stub, vector(2))[0].image_id == first
    finally:
        server.running.stop(1)
        proxy.close()


def test_the_asyncio_channel_sends_milvus_credentials_as_pymilvus_does() -> None:
    """A secured Milvus reads the user (or token) and the database from each
    call's headers. A gRPC server here records what a search sends: through
    the searches' own channel, and through pymilvus' stub made with the same
    settings; the headers must be the same."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from pymilvus.client.grpc_handler import GrpcHandler
    from pymilvus.grpc_gen import milvus_pb2

    from index_service.milvus_aio import SEARCH, AioSearches
    from index_service.settings import IndexSettings

    seen: list[dict[str, str]] = []

    def record(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(
            {
                k: str(v)
                for k, v in context.invocation_metadata()
                if k in ("authorization", "dbname")
            }
        )
        return milvus_pb2.SearchResults().SerializeToString()

    server = grpc.server(ThreadPoolExecutor(2))
    method = grpc.unary_unary_rpc_method_handler(record)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SEARCH.split("/")[1], {"Search": method})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    request = milvus_pb2.SearchRequest(collection_name="photos")
    cases = [
        {},
        {"milvus_user": "root", "milvus_password": "Milvus", "milvus_db_name": "photos"},
        {"milvus_token": "root:Milvus"},
    ]
    try:
        for case in cases:
            pymilvus_kw = {k.removeprefix("milvus_"): v for k, v in case.items()}
            GrpcHandler(uri=f"http://{address}", **pymilvus_kw)._stub.Search(request, timeout=10)

            async def ours(settings: IndexSettings) -> None:
                searches = AioSearches(settings, address)
                await searches.search(request, 10)
                await searches.channel.close(None)

            asyncio.run(ours(IndexSettings(**case)))  # type: ignore[arg-type]
            assert seen[-1] == seen[-2], case
        assert seen[0] == {}
        assert seen[2]["dbname"] == "photos" and seen[2]["authorization"]
        assert seen[4]["authorization"]
    finally:
        server.stop(None)


def test_searches_on_the_loop_give_back_their_call_slot(tmp_path: Path) -> None:
    """Search runs on the event loop, not on a handler thread, within the
    same cap on calls: with INDEX_MAX_CALLS=2, forty searches in a row, half
    of them refused (a bad top_k), all answer as themselves, none with
    RESOURCE_EXHAUSTED (each gave its slot back, refused or not)."""
    server = start_index(tmp_path, max_calls=2)
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(server.port))
        upsert(stub, [item(n) for n in range(4)])
        for n in range(20):
            assert search(stub, vector(n % 4))[0].image_id == ids.image_id_from_sha256(
                digest(n % 4)
            )
            assert code_of(lambda: search(stub, vector(1), top_k=0)) == (
                grpc.StatusCode.INVALID_ARGUMENT
            )
    finally:
        server.running.stop(1)


def test_the_servers_loop_is_uvloop(tmp_path: Path) -> None:
    """uvloop is a dependency on Linux and the servers' loop is one (less
    CPU per call, bench/RESULTS.md); a search is answered on it."""
    server = start_index(tmp_path)
    try:
        stub = index_pb2_grpc.IndexServiceStub(channel(server.port))
        upsert(stub, [item(0)])
        assert search(stub, vector(0))[0].image_id == ids.image_id_from_sha256(digest(0))
        assert type(server_loop()).__module__.split(".")[0] == "uvloop"
    finally:
        server.running.stop(1)
