"""The index's SQL tables, and the migrations that bring a database made by
an older version to them: a numbered list, each applied once and recorded
in ``<prefix>schema_migrations`` (a new database records the last number
and runs none).

Tables (names carry INDEX_TABLE_PREFIX):
  collections  name, model, dim, metric, index_type, created_at_ms, writes
  images       (collection, image_id) -> sha256, size, width, height, model,
               status ('pending' until the vector is in Milvus, then 'ready'),
               created_at_ms, updated_at_ms
  image_paths  (collection, path) -> image_id, origin; one image may have many paths
  thumbnails   (collection, image_id) -> data (a small JPEG the embedder made),
               deleted with the image's row
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.mysql import MEDIUMBLOB
from sqlalchemy.engine import Engine

from imagesearch import logs
from index_service.rows import STREAM, now_ms

log = logging.getLogger(__name__)


class Tables(NamedTuple):
    collections: Table
    images: Table
    paths: Table
    thumbnails: Table
    migrations: Table

    @property
    def data(self) -> tuple[Table, ...]:
        """The tables that hold the index's data (not its bookkeeping)."""
        return self.collections, self.images, self.paths, self.thumbnails


def define_tables(md: MetaData, p: str) -> Tables:
    """The collections, images, image_paths, thumbnails and schema_migrations
    tables, named with the prefix ``p``."""
    opts: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
    collections = Table(
        f"{p}collections",
        md,
        Column("name", String(64), primary_key=True),
        Column("model", String(255), nullable=False),
        Column("dim", Integer, nullable=False),
        Column("metric", String(16), nullable=False),
        Column("index_type", String(32), nullable=False),
        Column("created_at_ms", BigInteger, nullable=False),
        # Write transactions on the collection's rows: readers drop their
        # cached rows of a collection when this (or created_at_ms) changes.
        Column("writes", BigInteger, nullable=False, server_default="0"),
        # Search by words: the text space of its images' text vectors ("":
        # none), which live in a vector set of their own (text_space.py).
        Column("text_model", String(255), nullable=False, server_default=""),
        Column("text_dim", Integer, nullable=False, server_default="0"),
        **opts,
    )
    images = Table(
        f"{p}images",
        md,
        Column("collection", String(64), primary_key=True),
        Column("image_id", BigInteger, primary_key=True, autoincrement=False),
        Column("sha256", String(64), nullable=False),
        Column("size", BigInteger, nullable=False),
        Column("width", Integer, nullable=False),
        Column("height", Integer, nullable=False),
        Column("model", String(255), nullable=False),
        Column("status", String(8), nullable=False),
        Column("created_at_ms", BigInteger, nullable=False),
        Column("updated_at_ms", BigInteger, nullable=False),
        Index(f"{p}ix_images_status", "collection", "status"),
        **opts,
    )
    paths = Table(
        f"{p}image_paths",
        md,
        Column("collection", String(64), primary_key=True),
        Column("path", String(700), primary_key=True),
        Column("image_id", BigInteger, nullable=False),
        Column("created_at_ms", BigInteger, nullable=False),
        Column("origin", String(8), nullable=False, server_default=STREAM),
        Index(f"{p}ix_paths_image", "collection", "image_id"),
        **opts,
    )
    thumbnails = Table(
        f"{p}thumbnails",
        md,
        Column("collection", String(64), primary_key=True),
        Column("image_id", BigInteger, primary_key=True, autoincrement=False),
        # BLOB is 64 KiB on MySQL; a thumbnail may be larger (up to 1024 px).
        Column("data", LargeBinary().with_variant(MEDIUMBLOB(), "mysql"), nullable=False),
        **opts,
    )
    migrations = Table(
        f"{p}schema_migrations",
        md,
        Column("number", Integer, primary_key=True, autoincrement=False),
        Column("what", String(200), nullable=False),
        Column("applied_at_ms", BigInteger, nullable=False),
        **opts,
    )
    return Tables(collections, images, paths, thumbnails, migrations)


@dataclass(frozen=True)
class Migration:
    number: int
    what: str
    apply: Callable[[Connection, Tables], None]


def _add_column(conn: Connection, table: Table, column: str, ddl: str) -> None:
    """ALTER TABLE ... ADD COLUMN, unless the column is there (a database an
    older version migrated before migrations were recorded)."""
    if column not in {c["name"] for c in inspect(conn).get_columns(table.name)}:
        conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column} {ddl}"))


def _add_text_columns(conn: Connection, collections: Table) -> None:
    _add_column(conn, collections, "text_model", "VARCHAR(255) NOT NULL DEFAULT ''")
    _add_column(conn, collections, "text_dim", "INTEGER NOT NULL DEFAULT 0")


MIGRATIONS = (
    Migration(
        1,
        "collections.writes: readers drop cached rows of a collection written since",
        lambda conn, t: _add_column(conn, t.collections, "writes", "BIGINT NOT NULL DEFAULT 0"),
    ),
    Migration(
        2,
        "image_paths.origin: a server job's file or a streamed name",
        lambda conn, t: _add_column(
            conn, t.paths, "origin", f"VARCHAR(8) NOT NULL DEFAULT '{STREAM}'"
        ),
    ),
    Migration(
        3,
        "collections.text_model, text_dim: search by words",
        lambda conn, t: _add_text_columns(conn, t.collections),
    ),
)
LATEST = MIGRATIONS[-1].number


def _record(conn: Connection, migrations: Table, number: int, what: str) -> None:
    conn.execute(insert(migrations).values(number=number, what=what, applied_at_ms=now_ms()))


def create_or_migrate(engine: Engine, md: MetaData, tables: Tables) -> list[int]:
    """Makes what tables are missing; a database that had data tables before
    gets each migration past the last one recorded, in order, each recorded
    as it ends. The numbers applied (none for a new database)."""
    had = set(inspect(engine).get_table_names())
    fresh = not ({t.name for t in tables.data} & had)
    md.create_all(engine)
    m = tables.migrations
    with engine.begin() as conn:
        done = conn.execute(select(func.max(m.c.number))).scalar()
        if done is None and fresh:
            _record(conn, m, LATEST, "new database")
            return []
    applied = []
    for migration in MIGRATIONS:
        if migration.number <= (done or 0):
            continue
        with engine.begin() as conn:
            migration.apply(conn, tables)
            _record(conn, m, migration.number, migration.what)
        logs.event(log, "schema.migrated", number=migration.number, what=migration.what)
        applied.append(migration.number)
    return applied
