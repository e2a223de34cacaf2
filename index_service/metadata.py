"""The SQL side: collections, image rows and their paths (SQLAlchemy Core,
bound parameters only). This is the system of record; Milvus holds vectors.
The tables and their migrations are in schema.py, the row types in rows.py,
the statements a transaction runs in statements.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from sqlalchemy import (
    Connection,
    MetaData,
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
from index_service import statements as sql
from index_service.database import database_errors, make_engine
from index_service.row_cache import CachedRows, RowCache
from index_service.rows import (
    PENDING,
    READY,
    SERVER,
    CollectionRow,
    ImageRow,
    NewImage,
    now_ms,
)
from index_service.schema import create_or_migrate, define_tables
from index_service.statements import CHUNK, chunks, records_sql, starts_with

log = logging.getLogger(__name__)


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
        found = CollectionRow.from_sql(row)
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
        return [CollectionRow.from_sql(r) for r in rows]

    def set_text(self, name: str, text_model: str, text_dim: int) -> None:
        """The collection's text space, from now on (search by words)."""
        c = self.collections
        self.cache.forget_collection(name)
        with self._write(name) as conn:
            conn.execute(
                update(c).where(c.c.name == name).values(text_model=text_model, text_dim=text_dim)
            )
        self.cache.forget_collection(name)

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
            for chunk in chunks(list(ids)):
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
            sql.insert_images(conn, self.tables, name, model, new_images, status, ts)
            sql.insert_paths(conn, self.tables, name, new_paths, origins or {}, ts)
            previous = sql.move_paths(conn, self.tables, name, moved_paths, origins or {}, ts)
            orphaned = sql.delete_pathless(conn, self.tables, name, previous)
            gone = set(orphaned)
            kept = {i: data for i, data in (thumbnails or {}).items() if data and i not in gone}
            sql.put_thumbnails(conn, self.tables, name, kept)
            if vectors_stored is not None:
                vectors_stored()
                sql.update_status(conn, self.tables, name, ready, READY, ts)
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

    def mark_ready(self, name: str, ids: Sequence[int]) -> None:
        self._set_status(name, ids, READY)

    def mark_pending(self, name: str, ids: Sequence[int]) -> None:
        """Rows whose vector was lost: searches skip them, re-indexing repairs them."""
        self._set_status(name, ids, PENDING)

    def _set_status(self, name: str, ids: Sequence[int], status: str) -> None:
        with self._write(name) as conn:
            sql.update_status(conn, self.tables, name, ids, status, now_ms())

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
            for chunk in chunks(ids):
                text = self._records_sql.get(len(chunk))
                if text is None:
                    text = records_sql(self.engine, self.images, self.paths, len(chunk))
                    self._records_sql[len(chunk)] = text
                for iid, sha, size, w, h, model, status, c, u, path, origin in conn.exec_driver_sql(
                    text, (name, *chunk)
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
            for chunk in chunks(list(ids)):
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
            for chunk in chunks(list(dict.fromkeys(ids))):
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
                sql.delete_thumbnails(conn, self.tables, name, chunk)
        return existed

    # -- thumbnails ------------------------------------------------------

    def put_thumbnails(self, name: str, items: Mapping[int, bytes]) -> int:
        """Stores the thumbnails of images that have none yet; returns how many."""
        with self._tx() as conn:
            return sql.put_thumbnails(conn, self.tables, name, items)

    def get_thumbnails(self, name: str, ids: Sequence[int]) -> dict[int, bytes]:
        with self._tx() as conn:
            return sql.get_thumbnails(conn, self.tables, name, ids)

    def ready_without_thumbnail(self, name: str, limit: int) -> tuple[int, list[int]]:
        """(how many ready images have no thumbnail, the first ``limit`` ids)."""
        img = self.images
        lacking = sql.without_thumbnail(self.tables, name)
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
            gone = sql.delete_pathless(conn, self.tables, name, touched)
        return removed, gone

    def pending_rows(self, name: str, ids: Sequence[int]) -> list[ImageRow]:
        rows = self.records(name, ids, ready_only=False)
        return [r for r in rows.values() if r.status == PENDING]
