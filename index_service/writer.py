"""One writer per store: the index takes an advisory lock named after its
database and table prefix before it serves, so a second index on the same
store refuses to start (its cache would go stale and its start-up Reconcile
would delete the first one's in-flight vectors).

- MySQL/MariaDB: ``GET_LOCK`` on a connection held for the process's life
  (lock names are server-wide, so the name covers database and prefix);
  a lost connection is noticed within PING_S and the lock taken again.
- SQLite: ``flock`` on a file beside the database, naming the holder.
- An in-memory SQLite database has nothing to share: no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from imagesearch import errors, logs

log = logging.getLogger(__name__)

PING_S = 30.0


class StoreLocked(RuntimeError):
    """Another index holds this store; the message says which."""


def holder() -> str:
    return f"{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


class WriterLock:
    def __init__(self, database_url: str, table_prefix: str) -> None:
        self.url = make_url(database_url)
        self.prefix = table_prefix
        self.safe_url = self.url.render_as_string(hide_password=True)
        self._fd: int | None = None
        self._conn: Any = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._keeping = False

    @property
    def held(self) -> bool:
        database = self.url.database or ""
        if self.url.get_backend_name() == "sqlite" and database in ("", ":memory:"):
            return True
        return self._fd is not None or self._conn is not None

    @property
    def name(self) -> str:
        """The MySQL lock name (at most 64 characters, server-wide)."""
        scope = f"{self.url.host}:{self.url.port}/{self.url.database}/{self.prefix}"
        return "imagesearch-writer-" + hashlib.sha256(scope.encode()).hexdigest()[:40]

    def acquire(self) -> None:
        """Takes the lock. StoreLocked if another index holds it; UNAVAILABLE
        (errors.ServiceError) if the database cannot be reached."""
        with self._lock:
            if self.url.get_backend_name() == "sqlite":
                self._flock()
                return
            self._get_lock()
            if not self._keeping:
                self._keeping = True
                threading.Thread(target=self._keep, name="writer-lock", daemon=True).start()

    def release(self) -> None:
        self._stop.set()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # releases the flock
                self._fd = None
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.name})
                    self._conn.close()
                except DBAPIError:
                    pass
                self._conn = None

    # -- SQLite ------------------------------------------------------------

    def _flock(self) -> None:
        database = self.url.database or ""
        if database in ("", ":memory:") or self._fd is not None:
            return
        path = Path(database).with_name(f"{Path(database).name}.{self.prefix}writer.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreLocked(
                f"another index already writes to {self.safe_url} (tables {self.prefix}*): "
                f"{who}. Stop it, or give this one its own INDEX_DATABASE_URL or "
                "INDEX_TABLE_PREFIX"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, holder().encode())
        self._fd = fd

    # -- MySQL -------------------------------------------------------------

    def _get_lock(self) -> None:
        if self._conn is not None:
            return
        engine = create_engine(self.url, poolclass=NullPool, connect_args={"connect_timeout": 5})
        try:
            conn = engine.connect()
            got = conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": self.name}).scalar()
        except DBAPIError as exc:
            logs.event(log, "writer_lock.unreachable", logging.WARNING, error=str(exc.orig))
            raise errors.unavailable("the metadata database is unreachable") from None
        if got != 1:
            who = conn.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": self.name}).scalar()
            conn.close()
            raise StoreLocked(
                f"another index already writes to {self.safe_url} (tables {self.prefix}*): "
                f"it holds the lock {self.name} on MySQL connection {who}. Stop it, or give "
                "this one its own database or INDEX_TABLE_PREFIX"
            )
        conn.commit()
        self._conn = conn

    def _keep(self) -> None:
        """Pings the lock's connection; a lost one (the server restarted, an
        idle timeout) is replaced and the lock taken again."""
        while not self._stop.wait(PING_S):
            with self._lock:
                conn, mine = self._conn, None
                if conn is not None:
                    try:
                        mine = conn.execute(
                            text("SELECT IS_USED_LOCK(:n) = CONNECTION_ID()"), {"n": self.name}
                        ).scalar()
                        conn.commit()
                    except DBAPIError:
                        mine = None
                if mine == 1:
                    continue
                self._conn = None
                if conn is not None:
                    with contextlib.suppress(DBAPIError):
                        conn.close()
            try:
                with self._lock:
                    self._get_lock()
                logs.event(log, "writer_lock.retaken", lock=self.name)
            except StoreLocked as exc:
                # Writes now fail FAILED_PRECONDITION (IndexStore asks for the
                # lock before each), so nothing is written by two.
                logs.event(log, "writer_lock.lost", logging.ERROR, reason=str(exc))
            except errors.ServiceError:
                continue  # the database is still away: try again at the next ping
