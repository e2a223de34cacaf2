"""The index's cache of ready image rows, for searches. ``RowCache`` holds
them by collection, within a count and an estimated memory bound, knowing
which collections it holds whole (every ready row), so that a hit missing
from those is known not to be ready without asking SQL (not thread-safe).
``CachedRows`` is the policy over the SQL store: when rows are current, when
a collection is loaded whole, when a reader drops what changed."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from imagesearch import logs
from index_service.rows import READY, CollectionRow, ImageRow

log = logging.getLogger(__name__)


def row_bytes(row: ImageRow) -> int:
    """A cached row's memory, roughly: the object and its strings."""
    return 400 + len(row.sha256) + len(row.model) + sum(80 + len(p) for p in row.paths)


class RowCache:
    def __init__(self, max_rows: int, max_bytes: int) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._rows: dict[str, dict[int, ImageRow]] = {}
        self._bytes: dict[str, int] = {}  # estimated size of each collection's rows
        self._whole: set[str] = set()  # collections held with every ready row

    @property
    def on(self) -> bool:
        return self.max_rows > 0

    def names(self) -> set[str]:
        return set(self._rows)

    def held(self) -> tuple[int, int]:
        """Rows held, and their estimated bytes."""
        return sum(len(r) for r in self._rows.values()), sum(self._bytes.values())

    def whole(self, name: str) -> bool:
        return name in self._whole

    def found(self, name: str, ids: Sequence[int]) -> dict[int, ImageRow]:
        """The cached rows of ``ids``."""
        cached = self._rows.get(name, {})
        return {i: cached[i] for i in ids if i in cached}

    def answer(self, name: str, ids: Sequence[int]) -> dict[int, ImageRow] | None:
        """The ready rows of ``ids`` if the cache knows them all (each is
        cached, or the collection is held whole), else None."""
        cached = self._rows.get(name)
        if cached is None:
            return None
        if name in self._whole:
            return {i: cached[i] for i in ids if i in cached}
        try:
            return {i: cached[i] for i in ids}
        except KeyError:
            return None

    def add(self, name: str, rows: Mapping[int, ImageRow]) -> None:
        """Rows read for a search; past either bound, everything cached is
        dropped first."""
        size = sum(row_bytes(r) for r in rows.values())
        count, held = self.held()
        if count + len(rows) > self.max_rows or held + size > self.max_bytes:
            self.clear()
        self._rows.setdefault(name, {}).update(rows)
        self._bytes[name] = self._bytes.get(name, 0) + size

    def room(self, name: str) -> int:
        """Rows the collection may have in place of its cached ones without
        dropping others'."""
        return self.max_rows - sum(len(r) for n, r in self._rows.items() if n != name)

    def fits(self, name: str, count: int, size: int) -> bool:
        """Whether ``count`` rows of ``size`` bytes would fit in place of the
        collection's cached ones without dropping others."""
        held = sum(b for n, b in self._bytes.items() if n != name)
        return count <= self.room(name) and held + size <= self.max_bytes

    def put_whole(self, name: str, rows: dict[int, ImageRow]) -> bool:
        """Every ready row of the collection, replacing what was cached of
        it, if they fit beside the other collections' rows."""
        size = sum(row_bytes(r) for r in rows.values())
        if not self.fits(name, len(rows), size):
            return False
        self._rows[name] = rows
        self._bytes[name] = size
        self._whole.add(name)
        return True

    def drop(self, name: str) -> None:
        self._rows.pop(name, None)
        self._bytes.pop(name, None)
        self._whole.discard(name)

    def clear(self) -> None:
        self._rows.clear()
        self._bytes.clear()
        self._whole.clear()


# A collection is loaded whole into the row cache once it has had no write
# for this long (and a search missed the cache), and for at least
# LOAD_QUIET_FACTOR times as long as its last load took: a collection written
# now and then is reloaded with at most a tenth of a core.
LOAD_QUIET_S = 2.0
LOAD_QUIET_FACTOR = 10.0


class RowSource(Protocol):
    """What the cache reads from: the SQL store."""

    def list_collections(self) -> list[CollectionRow]: ...

    def ready_at_most(self, name: str, limit: int) -> int: ...

    def id_pages(self, name: str, status: str) -> Iterator[list[int]]: ...

    def fetch_records(self, name: str, ids: list[int], ready_only: bool) -> dict[int, ImageRow]: ...

    def write_counts(self) -> dict[str, tuple[int, int]]:
        """Each collection's (created_at_ms, writes)."""
        ...


class CachedRows:
    """The row cache's policy, a layer over the SQL store: what a search may
    take from memory, when a collection is loaded whole (quiet for a while,
    on a thread), and when cached rows go (a writer's own writes; a reader's
    check of the collections' write counts, twice per ``max_age_s``, and
    everything once that check is ``max_age_s`` late). Collections' rows are
    cached here too. A read keeps what it fetched only if no write (or
    change seen) happened meanwhile: ``token`` before reading, ``keep`` after.
    ``clock``: seconds, for every timing rule (tests set it; the check's own
    period is real time)."""

    def __init__(
        self,
        source: RowSource,
        rows: RowCache,
        *,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.rows = rows
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._writes = 0
        self._collections: dict[str, CollectionRow] = {}
        self._changed_at: dict[str, float] = {}  # when a collection's rows were last dropped
        self._load_s: dict[str, float] = {}  # how long its last load took
        self._loads: set[str] = set()  # collections being loaded, or tried since a change
        self._loading = 0  # load threads running
        self._loads_ended = threading.Condition(self._lock)
        self._checked = self._clock()  # a reader's caches were current as of this
        self._seen: dict[str, tuple[int, int]] = {}  # collection -> (created_at_ms, writes)
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None
        self._start_load: threading.Thread | None = None

    # -- what reads and writes tell it -------------------------------------

    def token(self) -> int:
        """Taken before a read whose result may be kept (``keep``)."""
        with self._lock:
            return self._writes

    def changed(self, name: str) -> None:
        """A write to the collection's rows ended (committed or not)."""
        with self._lock:
            self._writes += 1
            self._dropped(name)

    def _dropped(self, name: str) -> None:
        """The collection changed: its cached rows go, and it may be loaded
        whole again once it has been quiet a while (under the lock)."""
        self.rows.drop(name)
        self._loads.discard(name)
        self._changed_at[name] = self._clock()

    # -- collections -------------------------------------------------------

    def collection(self, name: str) -> CollectionRow | None:
        self.expire()
        return self._collections.get(name)

    def keep_collection(self, row: CollectionRow, token: int) -> None:
        with self._lock:
            if token == self._writes:  # no write (or change seen by a reader) meanwhile
                self._collections[row.name] = row

    def forget_collection(self, name: str) -> None:
        self._collections.pop(name, None)

    # -- rows ----------------------------------------------------------------

    def answer(self, name: str, ids: Sequence[int]) -> dict[int, ImageRow] | None:
        """The ready rows of ``ids`` if the cache knows them all, else None."""
        self.expire()
        with self._lock:
            return self.rows.answer(name, ids)

    def records(self, name: str, wanted: list[int]) -> dict[int, ImageRow]:
        """Ready rows of ``wanted``: from memory where it can, the rest read
        (and kept if still current), and a load of the whole collection
        started when it has been quiet."""
        self.expire()
        with self._lock:
            known = self.rows.answer(name, wanted)
            if known is not None:
                return known
            out = self.rows.found(name, wanted)
            token = self._writes
        missing = [i for i in wanted if i not in out]
        if not missing:
            return out
        found = self.source.fetch_records(name, missing, ready_only=True)
        out.update(found)
        with self._lock:
            if token == self._writes:  # no write ran meanwhile: still current
                self.rows.add(name, found)
        self._load_soon(name)
        return out

    # -- a reader's check ----------------------------------------------------

    def expire(self) -> None:
        """A reader's: starts the check of the write counts (first use), and
        drops every cached collection and row when that check is late."""
        if self.max_age_s is None:
            return
        if self._watcher is None:
            self._start_watching(self.max_age_s)
        if self._clock() - self._checked < self.max_age_s:
            return
        with self._lock:
            self._writes += 1  # a read in flight keeps what it fetched to itself
            self.rows.clear()
            self._loads.clear()
            self._collections.clear()
            self._checked = self._clock()

    def _start_watching(self, max_age_s: float) -> None:
        with self._lock:
            if self._watcher is not None:
                return
            self._watcher = threading.Thread(
                target=self._watch, args=(max_age_s / 2,), name="row-cache-check", daemon=True
            )
        self._watcher.start()

    def _watch(self, period_s: float) -> None:
        """Every ``period_s``: ``check_writes``, until closed."""
        failing = False
        while not self._closing.wait(period_s):
            try:
                self.check_writes()
            except Exception as exc:  # the caches age out meanwhile (expire)
                if not failing:
                    logs.event(
                        log, "row_cache.check_failed", logging.WARNING, error=type(exc).__name__
                    )
                failing = True
                continue
            failing = False

    def check_writes(self) -> None:
        """Reads the collections' write counts once; the cached rows and row
        of each collection whose count changed (or that is gone or was made
        anew) are dropped. Raises what the database raised."""
        started = self._clock()
        seen = self.source.write_counts()
        with self._lock:
            cached = self.rows.names() | set(self._collections)
            changed = {
                n for n in cached | set(seen) | set(self._seen) if seen.get(n) != self._seen.get(n)
            }
            if changed:  # a read in flight keeps what it fetched to itself
                self._writes += 1
            for name in changed | (cached - set(seen)):
                self._dropped(name)
                self._collections.pop(name, None)
            self._seen = seen
            self._checked = started  # what the query saw is at least this recent

    # -- loading whole collections -------------------------------------------

    def _load_soon(self, name: str) -> None:
        """Starts loading every ready row of the collection (``_claim_load``)."""
        if self._claim_load(name):
            threading.Thread(
                target=self._load, args=(name,), name="row-cache-load", daemon=True
            ).start()

    def load_at_start(self) -> None:
        """Loads every collection whole, one after another on a thread, as far
        as they fit: an index that starts (a reader added under load, a writer
        restarted) serves its first searches without SQL."""
        if not self.rows.on:
            return

        def load_each() -> None:
            try:
                names = [row.name for row in self.source.list_collections()]
            except Exception as exc:  # searches load them later, one by one
                logs.event(log, "row_cache.load_failed", logging.WARNING, error=repr(exc))
                return
            for name in names:
                if self._closing.is_set():
                    return
                if self._claim_load(name):
                    self._load(name)

        self._start_load = threading.Thread(target=load_each, name="row-cache-load", daemon=True)
        self._start_load.start()

    def wait_at_start(self, timeout: float) -> bool:
        """Waits for ``load_at_start`` to have loaded (or passed over) every
        collection; False when it still runs after ``timeout`` seconds."""
        if self._start_load is not None:
            self._start_load.join(timeout)
            return not self._start_load.is_alive()
        return True

    def _claim_load(self, name: str) -> bool:
        """Whether to load the collection now: not while it is being loaded,
        once tried since its last change, or while it changed too recently
        (LOAD_QUIET_S; while a writer writes to it, its rows are read per
        search). True: it is counted as being loaded."""
        with self._lock:
            if (
                name in self._loads
                or self.rows.whole(name)
                or self._clock() - self._changed_at.get(name, -math.inf)
                < max(LOAD_QUIET_S, LOAD_QUIET_FACTOR * self._load_s.get(name, 0.0))
            ):
                return False
            self._loads.add(name)
            self._loading += 1
            return True

    def _load(self, name: str) -> None:
        """Loads the collection whole (``_load_whole``); if a write came
        first, the cache is closing or the load failed, it may be tried again
        once the collection has been quiet a while."""
        started = self._clock()
        try:
            tried = self._load_whole(name, started)
        except Exception as exc:  # searches read their rows per search, as before
            logs.event(
                log, "row_cache.load_failed", logging.WARNING, collection=name, error=repr(exc)
            )
            tried = False
        with self._lock:
            self._load_s[name] = self._clock() - started
            if not tried and name in self._loads:
                self._loads.discard(name)
                self._changed_at[name] = self._clock()
            self._loading -= 1
            self._loads_ended.notify_all()

    def wait_loads(self, timeout: float) -> bool:
        """Waits until no collection is being loaded whole; False when one
        still is after ``timeout`` seconds (real time)."""
        with self._lock:
            return self._loads_ended.wait_for(lambda: self._loading == 0, timeout)

    def _load_whole(self, name: str, started: float) -> bool:
        """Reads the collection's ready rows page by page, and caches them
        whole if they fit beside what else is cached and nothing was written
        (or seen to change) meanwhile. A collection with more rows than fit
        beside the others is counted, not read: its rows stay cached per
        search. False: stopped early (a write, or closing)."""
        with self._lock:
            token = self._writes
            room = self.rows.room(name)
        if self.source.ready_at_most(name, room + 1) > room:
            return True
        rows: dict[int, ImageRow] = {}
        for page in self.source.id_pages(name, READY):
            if token != self._writes or self._closing.is_set():
                return False
            rows.update(self.source.fetch_records(name, page, ready_only=True))
        with self._lock:
            if token != self._writes:
                return False
            if self.rows.put_whole(name, rows):
                logs.event(
                    log,
                    "row_cache.loaded",
                    collection=name,
                    rows=len(rows),
                    seconds=round(self._clock() - started, 3),
                )
            return True

    def close(self) -> None:
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
