"""The row cache loads a quiet collection whole after a search misses it, so
later searches read no SQL, even for hits whose rows are not ready; a write
drops it, a collection larger than the cache is never held whole (SQLite
stores, no server). Time is a clock the tests move (tests/clock.py): they
set it past the quiet time instead of sleeping through it, and wait for a
load to end, never for time to pass."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from index_service import row_cache
from index_service.metadata import MetadataStore
from index_service.rows import CollectionRow, ImageRow, NewImage
from tests.clock import FakeClock

READY_IDS = list(range(1, 301))
PENDING_ID = 1000


def loaded(store: MetadataStore, check: Callable[[], bool]) -> bool:
    """Waits for the loads in flight to end, then ``check``."""
    assert store.wait_loads(timeout=60)
    return check()


@pytest.fixture
def quiet_s(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(row_cache, "LOAD_QUIET_S", 0.3)
    return 0.3


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "mariadb":
        return str(request.getfixturevalue("mariadb_url"))
    return f"sqlite:///{tmp_path / 'meta.db'}"


def filled(url: str, row_cache: int, clock: FakeClock) -> MetadataStore:
    """A store on its own tables: 300 ready rows and a pending one in "c"."""
    store = MetadataStore(url, f"rc{uuid.uuid4().hex[:8]}_", row_cache=row_cache, clock=clock)
    store.create_collection(CollectionRow("c", "m", 4, "IP", "FLAT"))
    images = [NewImage(n, f"{n:064x}", f"/p/{n}.jpg", 10, 4, 3) for n in READY_IDS]
    paths = [(f"/p/{n}.jpg", n) for n in READY_IDS]
    store.write_rows("c", "m", images, paths, [], vectors_stored=lambda: None)
    pending = NewImage(PENDING_ID, "f" * 64, f"/p/{PENDING_ID}.jpg", 10, 4, 3)
    store.write_pending("c", "m", [pending], [(pending.path, PENDING_ID)], [])
    return store


def test_a_quiet_collection_is_loaded_whole_and_dropped_on_a_write(
    url: str, quiet_s: float, clock: FakeClock
) -> None:
    store = filled(url, row_cache=1000, clock=clock)
    assert set(store.records("c", [1, 2])) == {1, 2}  # just written: not loaded yet
    assert loaded(store, lambda: store.cached_records("c", READY_IDS) is None)
    clock.advance(quiet_s * 0.9)
    assert set(store.records("c", [1, 2])) == {1, 2}  # still too soon
    assert loaded(store, lambda: store.cached_records("c", READY_IDS) is None)
    clock.advance(quiet_s * 0.2)
    assert set(store.records("c", [3])) == {3}  # a miss, after a quiet while: loads
    assert loaded(store, lambda: store.cached_records("c", READY_IDS) is not None)
    whole = store.cached_records("c", READY_IDS)
    assert whole is not None and sorted(whole) == READY_IDS
    assert whole[7].paths == ["/p/7.jpg"] and whole[7].sha256 == f"{7:064x}"
    # A pending row's hit is known not to be ready without asking SQL.
    assert store.cached_records("c", [5, PENDING_ID]) == {5: whole[5]}
    assert set(store.records("c", [5, PENDING_ID, 99_999])) == {5}

    assert store.delete_images("c", [2]) == [2]  # a write drops the collection
    assert store.cached_records("c", [1]) is None
    assert set(store.records("c", [1, 2])) == {1}  # read from SQL, not loaded yet
    assert store.cached_records("c", [1, 3]) is None
    clock.advance(quiet_s * 1.1)
    store.records("c", [4])
    assert loaded(store, lambda: store.cached_records("c", [1, 3]) is not None)
    assert sorted(store.cached_records("c", READY_IDS) or {}) == READY_IDS[:1] + READY_IDS[2:]
    store.md.drop_all(store.engine)
    store.dispose()


def test_a_collection_larger_than_the_cache_is_not_loaded(
    url: str, quiet_s: float, clock: FakeClock
) -> None:
    store = filled(url, row_cache=100, clock=clock)
    clock.advance(quiet_s * 1.1)
    for n in (1, 2, 3):
        assert set(store.records("c", [n])) == {n}
    assert store.wait_loads(timeout=60)  # the load tried, if any, has ended
    assert store.cached_records("c", [1, 2, 3]) is not None  # cached per search
    assert store.cached_records("c", [4]) is None  # not loaded
    assert store.row_cache.held()[0] <= 100
    store.md.drop_all(store.engine)
    store.dispose()


def test_a_reader_loads_too_and_drops_the_collection_when_it_changes(
    tmp_path: Path, quiet_s: float, clock: FakeClock
) -> None:
    writer = filled(f"sqlite:///{tmp_path / 'meta.db'}", row_cache=0, clock=clock)
    reader = MetadataStore(
        writer.url,
        writer.collections.name[: -len("collections")],
        row_cache=1000,
        read_only=True,
        max_age_s=100.0,  # its own check thread waits 50 s: the test runs the checks
        clock=clock,
    )
    reader.check_writes()
    clock.advance(quiet_s * 1.1)
    reader.records("c", [1])
    assert loaded(reader, lambda: reader.cached_records("c", READY_IDS) is not None)
    images = [NewImage(500, "e" * 64, "/p/500.jpg", 10, 4, 3)]
    writer.write_rows("c", "m", images, [("/p/500.jpg", 500)], [], vectors_stored=lambda: None)
    assert reader.records("c", [500]) == {}  # the whole collection held says: not there
    # The reader's next check sees the write count change and drops what it
    # held, so the new row is read.
    reader.check_writes()
    assert reader.cached_records("c", READY_IDS) is None
    assert 500 in reader.records("c", [500])
    reader.dispose()
    writer.dispose()


def test_an_index_that_starts_loads_its_collections_whole(url: str, clock: FakeClock) -> None:
    """A restarted writer or an added reader holds its collections whole
    before any search asks, as far as they fit."""
    store = filled(url, row_cache=0, clock=clock)
    prefix = store.collections.name[: -len("collections")]
    store.create_collection(CollectionRow("empty", "m", 4, "IP", "FLAT"))
    started = MetadataStore(url, prefix, row_cache=1000)
    started.load_at_start()
    assert started.wait_at_start(timeout=60)
    assert started.cached_records("c", READY_IDS) is not None
    assert started.cached_records("c", [PENDING_ID]) == {}  # known not ready, no SQL
    assert started.row_cache.whole("empty")
    small = MetadataStore(url, prefix, row_cache=100)  # "c" does not fit: read per search
    small.load_at_start()
    assert small.wait_at_start(timeout=60)
    assert small.row_cache.whole("empty")
    assert not small.row_cache.whole("c") and small.cached_records("c", [1]) is None
    for one in (small, started):
        one.dispose()
    store.md.drop_all(store.engine)
    store.dispose()


def test_a_load_stopped_by_the_store_closing_caches_nothing_as_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """A load is read page by page (500 rows); one stopped after its first
    page because the store closes must not hold those rows as the whole
    collection, which would answer that the others are not ready."""
    store = MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}", row_cache=10_000, clock=clock)
    store.create_collection(CollectionRow("c", "m", 4, "IP", "FLAT"))
    numbers = range(1, 1201)
    images = [NewImage(n, f"{n:064x}", f"/p/{n}.jpg", 10, 4, 3) for n in numbers]
    paths = [(f"/p/{n}.jpg", n) for n in numbers]
    store.write_rows("c", "m", images, paths, [], vectors_stored=lambda: None)
    read_page = store.fetch_records

    def then_close(name: str, ids: list[int], ready_only: bool) -> dict[int, ImageRow]:
        rows = read_page(name, ids, ready_only)
        store.cache._closing.set()  # the store closes while the load reads
        return rows

    monkeypatch.setattr(store, "fetch_records", then_close)
    clock.advance(row_cache.LOAD_QUIET_S + 1)
    assert store.cache._claim_load("c")
    store.cache._load("c")
    assert not store.row_cache.whole("c")
    assert store.cached_records("c", [1200]) is None  # not "known not ready"
    store.dispose()
