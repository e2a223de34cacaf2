"""The SQL side: collections, image rows and their paths (SQLAlchemy Core,
bound parameters only). This is the system of record; Milvus holds vectors.
The tables and their migrations are in schema.py, the row types in rows.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    MetaData,
    Table,
    and_,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.sql.elements import ColumnElement

from imagesearch import errors
from index_service.database import database_errors, make_engine
from index_service.row_cache import CachedRows, RowCache
from index_service.rows import (
    PENDING,
    READY,
    SERVER,
    STREAM,
    CollectionRow,
    ImageRow,
    NewImage,
    now_ms,
)
from index_service.schema import create_or_migrate, define_tables

log = logging.getLogger(__name__)

CHUNK = 500  # ids per IN (...) clause


def starts_with(column: Any, prefix: str) -> ColumnElement[bool]:
    """Case-sensitive prefix match on every backend: LIKE (which an index can
    serve, but ignores case on SQLite) narrowed by an exact comparison."""
    return and_(
        column.startswith(prefix, autoescape=True),
        func.substr(column, 1, len(prefix)) == prefix,
    )


def _chunks(values: Sequence[int], size: int = CHUNK) -> Iterator[Sequence[int]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


RECORD_COLUMNS = (
    "image_id",
    "sha256",
    "size",
    "width",
    "height",
    "model",
    "status",
    "created_at_ms",
    "updated_at_ms",
)


def records_sql(engine: Engine, img: Table, pt: Table, n: int) -> str:
    """The rows of ``n`` ids of a collection, joined with their paths (oldest
    first), as the driver's own SQL: the collection's name, then the ids, as
    positional parameters. Every search without cached rows runs it, and
    through ``exec_driver_sql`` it costs about 0.58x the CPU of the same
    select compiled by SQLAlchemy with an expanding IN list (which is
    processed anew on every call). The status is checked by the caller, not
    in SQL: with it in the WHERE clause SQLite prefers the (collection,
    status) index and scans every ready row of the collection instead of the
    few ids asked."""
    q = engine.dialect.identifier_preparer
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"  # SQLite; PyMySQL
    cols = ", ".join(f"i.{q.quote(c)}" for c in RECORD_COLUMNS)
    return (
        f"SELECT {cols}, p.{q.quote('path')}, p.{q.quote('origin')} "
        f"FROM {q.format_table(img)} i LEFT OUTER JOIN {q.format_table(pt)} p "
        f"ON p.{q.quote('collection')} = i.{q.quote('collection')} "
        f"AND p.{q.quote('image_id')} = i.{q.quote('image_id')} "
        f"WHERE i.{q.quote('collection')} = {mark} "
        f"AND i.{q.quote('image_id')} IN ({', '.join([mark] * n)}) "
        f"ORDER BY p.{q.quote('created_at_ms')}, p.{q.quote('path')}"
    )


class MetadataStore:
    def __init__(
        self,
        url: str,
        table_prefix: str = "imgsearch_",
        row_cache: int = 0,
        row_cache_bytes: int = 256 * 1024 * 1024,
        tls: dict[str, str] | None = None,
        read_only: bool = False,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``tls``: PyMySQL's ``ssl`` argument (CA, client certificate) for a
        MySQL URL; PyMySQL then refuses a server that does not offer TLS.
        ``read_only``: a reader's store, which creates no tables. ``max_age_s``
        (a reader: the writer changes the tables without telling it): a
        thread reads every collection's write count (which the writer bumps
        in each of its write transactions) twice per ``max_age_s`` and drops
        the cached rows of those that changed, so a quiet collection keeps
        its rows; whatever was cached is dropped anyway once that check is
        ``max_age_s`` late (the database down, say). ``clock``: seconds, for
        every timing rule here (tests set it; the check's own period is real
        time)."""
        self.url = url
        self.read_only = read_only
        self.safe_url = make_url(url).render_as_string(hide_password=True)
        self.engine: Engine = make_engine(url, tls)
        md = MetaData()
        self.tables = define_tables(md, table_prefix)
        self.collections, self.images, self.paths, self.thumbnails = self.tables.data
        self.md = md
        self._records_sql: dict[int, str] = {}  # records_sql by number of ids
        self._created = False
        # Ready rows and collections' rows, for searches: the cache and its
        # policy (a writer's every write drops its collection's rows; a
        # reader's check drops those of collections that changed).
        self.cache = CachedRows(
            self, RowCache(row_cache, row_cache_bytes), max_age_s=max_age_s, clock=clock
        )

    @property
    def row_cache(self) -> RowCache:
        return self.cache.rows

    # -- plumbing --------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One transaction; database outages become UNAVAILABLE, a refused
        privilege PERMISSION_DENIED (database.py)."""
        with database_errors(self.safe_url):
            if not self._created:
                self._create()
            with self.engine.begin() as conn:
                yield conn

    def _create(self) -> None:
        """The tables, made when missing (a reader only checks they exist)."""
        if self.read_only:
            have = set(inspect(self.engine).get_table_names())
            if not {t.name for t in self.tables.data} <= have:
                raise errors.unavailable(
                    "the index writer has not created its tables in the database yet; "
                    "start it (INDEX_ROLE=writer), then retry"
                )
        else:
            create_or_migrate(self.engine, self.md, self.tables)
        self._created = True

    def check_writes(self) -> None:
        """A reader's check of the collections' write counts, now (its thread
        runs it twice per ``max_age_s``; tests call it)."""
        self.cache.check_writes()

    def write_counts(self) -> dict[str, tuple[int, int]]:
        """Each collection's (created_at_ms, writes): what a reader's check reads."""
        c = self.collections
        with self.engine.connect() as conn:
            query = select(c.c.name, c.c.created_at_ms, c.c.writes)
            return {r.name: (r.created_at_ms, r.writes) for r in conn.execute(query)}

    @contextmanager
    def _write(self, name: str) -> Iterator[Connection]:
        """A transaction that changes the collection's rows. Cached rows of
        the collection are dropped after it, committed or not (a failed
        commit may still have landed)."""
        c = self.collections
        try:
            with self._tx() as conn:
                # Readers drop their cached rows of the collection. First, so
                # that it runs while an upsert's vectors are being stored.
                conn.execute(update(c).where(c.c.name == name).values(writes=c.c.writes + 1))
                yield conn
        finally:
            self.cache.changed(name)

    def dispose(self) -> None:
        self.cache.close()
        self.engine.dispose()

    # -- collections -----------------------------------------------------

    def cached_collection(self, name: str) -> CollectionRow | None:
        """The collection's row if it is cached (no I/O; None: ask ``get_collection``)."""
        return self.cache.collection(name)

    def get_collection(self, name: str) -> CollectionRow | None:
        """The collection's row; cached, since every search asks (this service
        is the only writer of the table, and invalidates on create and drop)."""
        cached = self.cache.collection(name)
        if cached is not None:
            return cached
        token = self.cache.token()
        with self._tx() as conn:
            row = conn.execute(
                select(self.collections).where(self.collections.c.name == name)
            ).first()
        if row is None:
            return None
        found = CollectionRow(row.name, row.model, row.dim, row.metric, row.index_type)
        self.cache.keep_collection(found, token)
        return found

    def create_collection(self, row: CollectionRow) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(self.collections).values(
                    name=row.name,
                    model=row.model,
                    dim=row.dim,
                    metric=row.metric,
                    index_type=row.index_type,
                    created_at_ms=now_ms(),
                )
            )

    def list_collections(self) -> list[CollectionRow]:
        with self._tx() as conn:
            rows = conn.execute(select(self.collections).order_by(self.collections.c.name)).all()
        return [CollectionRow(r.name, r.model, r.dim, r.metric, r.index_type) for r in rows]

    def drop_collection(self, name: str) -> bool:
        self.cache.forget_collection(name)
        with self._write(name) as conn:
            conn.execute(delete(self.paths).where(self.paths.c.collection == name))
            conn.execute(delete(self.thumbnails).where(self.thumbnails.c.collection == name))
            conn.execute(delete(self.images).where(self.images.c.collection == name))
            result = conn.execute(delete(self.collections).where(self.collections.c.name == name))
        return bool(result.rowcount)

    def counts(self, name: str) -> tuple[int, int]:
        """(ready, pending) image counts."""
        img = self.images
        with self._tx() as conn:
            rows = conn.execute(
                select(img.c.status, func.count())
                .where(img.c.collection == name)
                .group_by(img.c.status)
            ).all()
        by_status = {status: count for status, count in rows}
        return by_status.get(READY, 0), by_status.get(PENDING, 0)

    # -- images ----------------------------------------------------------

    def statuses(self, name: str, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """(status, sha256 hex) of each stored image of ``ids``."""
        img = self.images
        out: dict[int, tuple[str, str]] = {}
        with self._tx() as conn:
            for chunk in _chunks(list(ids)):
                rows = conn.execute(
                    select(img.c.image_id, img.c.status, img.c.sha256).where(
                        and_(img.c.collection == name, img.c.image_id.in_(chunk))
                    )
                )
                out.update({r.image_id: (r.status, r.sha256) for r in rows})
        return out

    def path_owners(self, name: str, paths: Sequence[str]) -> dict[str, tuple[int, str]]:
        """(image id, origin) of each of ``paths`` that is stored."""
        pt = self.paths
        out: dict[str, tuple[int, str]] = {}
        with self._tx() as conn:
            for i in range(0, len(paths), CHUNK):
                rows = conn.execute(
                    select(pt.c.path, pt.c.image_id, pt.c.origin).where(
                        and_(pt.c.collection == name, pt.c.path.in_(paths[i : i + CHUNK]))
                    )
                )
                out.update({r.path: (r.image_id, r.origin) for r in rows})
        return out

    def write_rows(
        self,
        name: str,
        model: str,
        new_images: Sequence[NewImage],
        new_paths: Sequence[tuple[str, int]],
        moved_paths: Sequence[tuple[str, int]],
        origins: Mapping[str, str] | None = None,
        thumbnails: Mapping[int, bytes] | None = None,
        vectors_stored: Callable[[], None] | None = None,
        ready: Sequence[int] = (),
    ) -> list[int]:
        """In one transaction: inserts new image rows, adds paths, re-points
        paths whose file now has other bytes (or that a server job takes back
        from a stream; ``origins``: each path's origin, default STREAM), and
        stores the ``thumbnails`` of images that have none. Returns the ids
        of images left with no path (their rows and thumbnails are deleted
        here; the caller deletes their vectors).

        The new rows are pending, unless ``vectors_stored`` is given: it is
        called last, before the commit, and waits until the batch's vectors
        are stored (raising if they were not: nothing is committed); the new
        rows and the ``ready`` ids are then written ready."""
        status = PENDING if vectors_stored is None else READY
        with self._write(name) as conn:
            ts = now_ms()
            if new_images:
                conn.execute(
                    insert(self.images),
                    [
                        {
                            "collection": name,
                            "image_id": n.image_id,
                            "sha256": n.sha256,
                            "size": n.size,
                            "width": n.width,
                            "height": n.height,
                            "model": model,
                            "status": status,
                            "created_at_ms": ts,
                            "updated_at_ms": ts,
                        }
                        for n in new_images
                    ],
                )
            origin = (origins or {}).get
            if new_paths:
                conn.execute(
                    insert(self.paths),
                    [
                        {
                            "collection": name,
                            "path": path,
                            "image_id": iid,
                            "created_at_ms": ts,
                            "origin": origin(path, STREAM),
                        }
                        for path, iid in new_paths
                    ],
                )
            previous = self._move_paths(conn, name, moved_paths, origins or {}, ts)
            orphaned = self._delete_pathless(conn, name, previous)
            gone = set(orphaned)
            kept = {i: data for i, data in (thumbnails or {}).items() if data and i not in gone}
            self._put_thumbnails(conn, name, kept)
            if vectors_stored is not None:
                vectors_stored()
                self._update_status(conn, name, ready, READY, ts)
            return orphaned

    def write_pending(
        self,
        name: str,
        model: str,
        new_images: Sequence[NewImage],
        new_paths: Sequence[tuple[str, int]],
        moved_paths: Sequence[tuple[str, int]] = (),
    ) -> list[int]:
        """write_rows with the new rows pending (their vectors not stored yet)."""
        return self.write_rows(name, model, new_images, new_paths, moved_paths)

    def _move_paths(
        self,
        conn: Connection,
        name: str,
        moved_paths: Sequence[tuple[str, int]],
        origins: Mapping[str, str],
        ts: int,
    ) -> set[int]:
        """Re-points each path to its new image; returns the images they named."""
        pt = self.paths
        previous: set[int] = set()
        for path, iid in moved_paths:
            here = and_(pt.c.collection == name, pt.c.path == path)
            previous.add(conn.execute(select(pt.c.image_id).where(here)).scalar_one())
            conn.execute(
                update(pt)
                .where(here)
                .values(image_id=iid, created_at_ms=ts, origin=origins.get(path, STREAM))
            )
        return previous

    def _delete_pathless(self, conn: Connection, name: str, candidates: Iterable[int]) -> list[int]:
        img, pt = self.images, self.paths
        gone: list[int] = []
        for chunk in _chunks(sorted(set(candidates))):
            still = {
                r.image_id
                for r in conn.execute(
                    select(pt.c.image_id)
                    .where(and_(pt.c.collection == name, pt.c.image_id.in_(chunk)))
                    .distinct()
                )
            }
            orphans = [i for i in chunk if i not in still]
            if orphans:
                conn.execute(
                    delete(img).where(and_(img.c.collection == name, img.c.image_id.in_(orphans)))
                )
                self._delete_thumbnails(conn, name, orphans)
                gone += orphans
        return gone

    def mark_ready(self, name: str, ids: Sequence[int]) -> None:
        self._set_status(name, ids, READY)

    def mark_pending(self, name: str, ids: Sequence[int]) -> None:
        """Rows whose vector was lost: searches skip them, re-indexing repairs them."""
        self._set_status(name, ids, PENDING)

    def _set_status(self, name: str, ids: Sequence[int], status: str) -> None:
        with self._write(name) as conn:
            self._update_status(conn, name, ids, status, now_ms())

    def _update_status(
        self, conn: Connection, name: str, ids: Sequence[int], status: str, ts: int
    ) -> None:
        img = self.images
        for chunk in _chunks(list(ids)):
            conn.execute(
                update(img)
                .where(and_(img.c.collection == name, img.c.image_id.in_(chunk)))
                .values(status=status, updated_at_ms=ts)
            )

    def records(
        self, name: str, ids: Sequence[int], *, ready_only: bool = True
    ) -> dict[int, ImageRow]:
        """Rows with their paths (oldest first) for the given ids, as every
        search needs them. Ready rows come from the row cache where they can
        (INDEX_ROW_CACHE); the rows it returns must not be modified."""
        wanted = list(dict.fromkeys(ids))
        self.cache.expire()
        if not ready_only or not self.cache.rows.on:
            return self.fetch_records(name, wanted, ready_only)
        return self.cache.records(name, wanted)

    def cached_records(self, name: str, ids: Sequence[int]) -> dict[int, ImageRow] | None:
        """``records(name, ids)`` when the row cache knows every one of them
        (no I/O), else None."""
        return self.cache.answer(name, ids)

    def wait_at_start(self, timeout: float) -> bool:
        return self.cache.wait_at_start(timeout)

    def wait_loads(self, timeout: float) -> bool:
        return self.cache.wait_loads(timeout)

    def load_at_start(self) -> None:
        """Loads every collection whole into the row cache, on a thread (an
        index that starts serves its first searches without SQL)."""
        self.cache.load_at_start()

    def ready_at_most(self, name: str, limit: int) -> int:
        """The collection's ready rows, counted up to ``limit`` (so that the
        count of a huge collection costs no more than ``limit`` index entries)."""
        img = self.images
        first = (
            select(img.c.image_id)
            .where(and_(img.c.collection == name, img.c.status == READY))
            .limit(limit)
            .subquery()
        )
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).select_from(first)).scalar_one())

    def fetch_records(self, name: str, ids: list[int], ready_only: bool) -> dict[int, ImageRow]:
        """One query per chunk of ids: rows joined with their paths."""
        out: dict[int, ImageRow] = {}
        with self._tx() as conn:
            for chunk in _chunks(ids):
                sql = self._records_sql.get(len(chunk))
                if sql is None:
                    sql = records_sql(self.engine, self.images, self.paths, len(chunk))
                    self._records_sql[len(chunk)] = sql
                for iid, sha, size, w, h, model, status, c, u, path, origin in conn.exec_driver_sql(
                    sql, (name, *chunk)
                ):
                    if ready_only and status != READY:
                        continue
                    row = out.get(iid)
                    if row is None:
                        row = out[iid] = ImageRow(iid, sha, size, w, h, model, status, c, u)
                    if path is not None:
                        row.paths.append(path)
                        if origin == SERVER:
                            row.server_paths.append(path)
        return out

    def ids_for_paths(self, name: str, paths: Sequence[str]) -> list[int]:
        return list(dict.fromkeys(iid for iid, _ in self.path_owners(name, paths).values()))

    def ids_with_prefix(self, name: str, prefix: str, limit: int) -> list[int]:
        pt = self.paths
        with self._tx() as conn:
            rows = conn.execute(
                select(pt.c.image_id)
                .where(and_(pt.c.collection == name, starts_with(pt.c.path, prefix)))
                .distinct()
                .limit(limit)
            )
            return [r.image_id for r in rows]

    def id_pages(self, name: str, status: str, size: int = CHUNK) -> Iterator[list[int]]:
        """The ids of the collection's rows with ``status``, in pages of up
        to ``size`` in id order (each page read after the last id of the one
        before, so memory does not grow with the collection, and rows whose
        status changes meanwhile are neither skipped nor read twice)."""
        img = self.images
        after: int | None = None
        while True:
            where = and_(img.c.collection == name, img.c.status == status)
            if after is not None:
                where = and_(where, img.c.image_id > after)
            with self._tx() as conn:
                page = [
                    r.image_id
                    for r in conn.execute(
                        select(img.c.image_id).where(where).order_by(img.c.image_id).limit(size)
                    )
                ]
            if page:
                yield page
            if len(page) < size:
                return
            after = page[-1]

    def known_ids(self, name: str, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` have a row in the collection."""
        img = self.images
        found: set[int] = set()
        with self._tx() as conn:
            for chunk in _chunks(list(ids)):
                found.update(
                    r.image_id
                    for r in conn.execute(
                        select(img.c.image_id).where(
                            and_(img.c.collection == name, img.c.image_id.in_(chunk))
                        )
                    )
                )
        return found

    def delete_images(self, name: str, ids: Sequence[int]) -> list[int]:
        """Deletes rows and all their paths; returns the ids that existed."""
        img, pt = self.images, self.paths
        existed: list[int] = []
        with self._write(name) as conn:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                existed += [
                    r.image_id
                    for r in conn.execute(
                        select(img.c.image_id).where(
                            and_(img.c.collection == name, img.c.image_id.in_(chunk))
                        )
                    )
                ]
                conn.execute(
                    delete(pt).where(and_(pt.c.collection == name, pt.c.image_id.in_(chunk)))
                )
                conn.execute(
                    delete(img).where(and_(img.c.collection == name, img.c.image_id.in_(chunk)))
                )
                self._delete_thumbnails(conn, name, chunk)
        return existed

    # -- thumbnails ------------------------------------------------------

    def _delete_thumbnails(self, conn: Connection, name: str, ids: Sequence[int]) -> None:
        th = self.thumbnails
        conn.execute(delete(th).where(and_(th.c.collection == name, th.c.image_id.in_(ids))))

    def put_thumbnails(self, name: str, items: Mapping[int, bytes]) -> int:
        """Stores the thumbnails of images that have none yet (a thumbnail
        never changes: the image id is the content); returns how many."""
        with self._tx() as conn:
            return self._put_thumbnails(conn, name, items)

    def _put_thumbnails(self, conn: Connection, name: str, items: Mapping[int, bytes]) -> int:
        th = self.thumbnails
        added = 0
        for chunk in _chunks(sorted(i for i, data in items.items() if data)):
            have = {
                r.image_id
                for r in conn.execute(
                    select(th.c.image_id).where(
                        and_(th.c.collection == name, th.c.image_id.in_(chunk))
                    )
                )
            }
            rows = [
                {"collection": name, "image_id": i, "data": items[i]}
                for i in chunk
                if i not in have
            ]
            if rows:
                conn.execute(insert(th), rows)
                added += len(rows)
        return added

    def get_thumbnails(self, name: str, ids: Sequence[int]) -> dict[int, bytes]:
        th = self.thumbnails
        found: dict[int, bytes] = {}
        with self._tx() as conn:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                for r in conn.execute(
                    select(th.c.image_id, th.c.data).where(
                        and_(th.c.collection == name, th.c.image_id.in_(chunk))
                    )
                ):
                    found[r.image_id] = bytes(r.data)
        return found

    def ready_without_thumbnail(self, name: str, limit: int) -> tuple[int, list[int]]:
        """(how many ready images have no thumbnail, the first ``limit`` ids)."""
        img, th = self.images, self.thumbnails
        lacking = (
            select(img.c.image_id)
            .select_from(
                img.outerjoin(
                    th, and_(th.c.collection == img.c.collection, th.c.image_id == img.c.image_id)
                )
            )
            .where(and_(img.c.collection == name, img.c.status == READY, th.c.image_id.is_(None)))
        )
        with self._tx() as conn:
            total = conn.execute(select(func.count()).select_from(lacking.subquery())).scalar_one()
            first = [
                r.image_id
                for r in conn.execute(lacking.order_by(img.c.image_id).limit(max(limit, 0)))
            ]
        return int(total), first if limit > 0 else []

    def delete_paths(
        self, name: str, paths: Sequence[str] = (), prefix: str | None = None
    ) -> tuple[int, list[int]]:
        """Removes paths; images left without a path are deleted too.
        Returns (paths removed, ids of images deleted)."""
        pt = self.paths
        removed = 0
        touched: set[int] = set()
        with self._write(name) as conn:
            conditions: list[ColumnElement[bool]] = []
            for i in range(0, len(paths), CHUNK):
                conditions.append(pt.c.path.in_(paths[i : i + CHUNK]))
            if prefix is not None:
                conditions.append(starts_with(pt.c.path, prefix))
            for cond in conditions:
                where = and_(pt.c.collection == name, cond)
                touched.update(r.image_id for r in conn.execute(select(pt.c.image_id).where(where)))
                removed += conn.execute(delete(pt).where(where)).rowcount or 0
            gone = self._delete_pathless(conn, name, touched)
        return removed, gone

    def pending_rows(self, name: str, ids: Sequence[int]) -> list[ImageRow]:
        rows = self.records(name, ids, ready_only=False)
        return [r for r in rows.values() if r.status == PENDING]
