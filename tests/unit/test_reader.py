"""An index reader's rules that need no server: what it refuses, and how
long its caches last (two stores on one SQLite file stand for a writer and a
reader on one database). Time is a clock the tests move (tests/clock.py);
the readers' own check threads wait 50 s, so the tests run each check
themselves (``check_writes``) where the thread would have."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from imagesearch.errors import ServiceError
from imagesearch.settings import SettingsError, load_settings
from index_service.metadata import MetadataStore
from index_service.rows import CollectionRow, NewImage
from index_service.settings import IndexSettings
from tests.clock import FakeClock

AGE_S = 100.0  # a reader's bound in the clock's seconds; its check thread waits AGE_S / 2


def test_a_reader_needs_a_milvus_server() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(IndexSettings, "INDEX_", env={"INDEX_ROLE": "reader"})
    assert "Milvus server" in str(err.value)
    server = {"INDEX_ROLE": "reader", "INDEX_MILVUS_URI": "http://milvus:19530"}
    assert load_settings(IndexSettings, "INDEX_", env=server).reader
    with pytest.raises(SettingsError):
        load_settings(IndexSettings, "INDEX_", env={"INDEX_ROLE": "follower"})


def test_a_reader_store_refuses_every_write(tmp_path: Path) -> None:
    from index_service.app import build_store

    settings = IndexSettings(
        role="reader",
        milvus_uri="http://127.0.0.1:1",  # never reached: refused before
        database_url=f"sqlite:///{tmp_path / 'meta.db'}",
    )
    store = build_store(settings)
    writes = [
        lambda: store.upsert("c", "m", 4, []),
        lambda: store.delete("c", [1], [], ""),
        lambda: store.drop("c"),
        lambda: store.reconcile(),
    ]
    for write in writes:
        with pytest.raises(ServiceError) as err:
            write()
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "INDEX_ROLE=reader" in err.value.message
    store.meta.dispose()


def test_a_reader_creates_no_tables_and_sees_changes_within_its_age(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    clock = FakeClock()
    reader = MetadataStore(url, read_only=True, max_age_s=AGE_S, clock=clock)
    with pytest.raises(ServiceError) as err:
        reader.get_collection("c")
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "writer" in err.value.message
    writer = MetadataStore(url)
    writer.create_collection(CollectionRow("c", "m", 4, "IP", "FLAT"))
    assert reader.get_collection("c") is not None  # cached from now on
    assert writer.drop_collection("c")
    clock.advance(AGE_S * 0.9)
    assert reader.get_collection("c") is not None  # within its age: the cached row
    clock.advance(AGE_S * 0.2)
    assert reader.get_collection("c") is None  # the cache has aged out
    writer.dispose()
    reader.dispose()


def test_a_reader_keeps_a_quiet_collections_rows_and_drops_changed_ones(tmp_path: Path) -> None:
    """A reader's cached rows outlive its staleness bound while the writer
    leaves their collection alone, and are dropped within the bound once it
    writes there (its write count changes); another collection's rows stay.
    With the check failing (its table unreadable), everything ages out."""
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    writer = MetadataStore(url)
    for name in ("quiet", "busy"):
        writer.create_collection(CollectionRow(name, "m", 4, "IP", "FLAT"))
        images = [NewImage(n, f"{n:064x}", f"/p/{n}.jpg", 10, 4, 3) for n in (1, 2)]
        writer.write_rows(name, "m", images, [], [], vectors_stored=lambda: None)
    clock = FakeClock()
    reader = MetadataStore(url, row_cache=100, read_only=True, max_age_s=AGE_S, clock=clock)
    for name in ("quiet", "busy"):
        assert reader.get_collection(name) is not None
    reader.check_writes()  # the first check drops what was cached before it
    assert reader.cached_collection("quiet") is None
    for name in ("quiet", "busy"):
        assert set(reader.records(name, [1, 2])) == {1, 2}
        assert reader.get_collection(name) is not None
    for _ in range(5):  # 2.5 bounds, checked twice per bound: nothing was written
        clock.advance(AGE_S / 2)
        reader.check_writes()
    for name in ("quiet", "busy"):
        assert reader.cached_records(name, [1, 2]) is not None
        assert reader.cached_collection(name) is not None
    assert writer.delete_images("busy", [2]) == [2]
    clock.advance(AGE_S / 2)
    reader.check_writes()
    assert reader.cached_records("busy", [1, 2]) is None  # dropped: it changed
    assert set(reader.records("busy", [1, 2])) == {1}
    assert reader.cached_records("quiet", [1, 2]) is not None  # kept

    with writer.engine.begin() as conn:  # the check fails from now on
        conn.exec_driver_sql("ALTER TABLE imgsearch_collections RENAME TO moved")
    clock.advance(AGE_S / 2)
    with pytest.raises(Exception):  # noqa: B017 (whatever the driver raises)
        reader.check_writes()
    assert reader.cached_records("quiet", [1, 2]) is not None  # within its age still
    clock.advance(AGE_S / 2 + 1)
    assert reader.cached_records("quiet", [1, 2]) is None  # aged out
    reader.dispose()
    writer.dispose()


def test_large_collection_settings_are_checked_and_derived() -> None:
    from index_service.settings import derived_nlist, derived_pq_m

    # 4 x sqrt(rows of a 512 MiB segment): 65,536 rows of 2048-d, 104,857 of 1280-d.
    assert (derived_nlist(2048), derived_nlist(1280), derived_nlist(256)) == (1024, 1295, 2896)
    assert (derived_pq_m(2048), derived_pq_m(1280), derived_pq_m(100)) == (256, 160, 10)
    server = {"INDEX_MILVUS_URI": "http://milvus:19530"}
    for bad in (
        {"INDEX_MILVUS_INDEX_TYPE": "IVF_PQ"},  # Milvus Lite builds no PQ index
        {**server, "INDEX_MILVUS_SHARDS": "17"},
        {**server, "INDEX_MILVUS_NLIST": "-1"},
        {**server, "INDEX_MILVUS_REFINE": "65"},
    ):
        with pytest.raises(SettingsError):
            load_settings(IndexSettings, "INDEX_", env=bad)
    pq = {
        **server,
        "INDEX_MILVUS_INDEX_TYPE": "IVF_PQ",
        "INDEX_MILVUS_NLIST": "0",
        "INDEX_MILVUS_SHARDS": "4",
    }
    settings = load_settings(IndexSettings, "INDEX_", env=pq)
    from index_service.milvus import MilvusVectors

    pq_vectors = MilvusVectors(settings)
    assert pq_vectors.index_params(2048) == {"nlist": 1024, "m": 256, "nbits": 8}
    # IVF_PQ re-ranks 8 x its hits on the stored vectors unless told otherwise; the others none.
    assert (pq_vectors.refine, pq_vectors.max_top_k) == (8, 2048)
    flat = MilvusVectors(load_settings(IndexSettings, "INDEX_", env=server))
    told = MilvusVectors(
        load_settings(IndexSettings, "INDEX_", env={**pq, "INDEX_MILVUS_REFINE": "1"})
    )
    assert (flat.refine, told.refine, flat.max_top_k) == (1, 1, 16384)
