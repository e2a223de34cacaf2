"""The metadata database as a connection: its engine (pinged before use on
a server, SQLite's own options on a file, TLS to MySQL), and what its errors
mean to a client: an outage is UNAVAILABLE (retry), a privilege the server
refuses is PERMISSION_DENIED (a reader's SELECT-only user asked to write).
Where the database is and what it said go to the log, never to clients."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from imagesearch import errors, logs

log = logging.getLogger(__name__)

# MySQL/MariaDB errors that say the user lacks a privilege (not an outage).
ACCESS_DENIED = {1044, 1045, 1142, 1143, 1227, 1370}


def make_engine(url: str, tls: dict[str, str] | None = None) -> Engine:
    """``tls``: PyMySQL's ``ssl`` argument (CA, client certificate) for a
    MySQL URL; PyMySQL then refuses a server that does not offer TLS."""
    parsed = make_url(url)
    # A server connection may die between calls: ping it before use. A
    # SQLite file cannot, and the ping would cost a round trip per call.
    kwargs: dict[str, object] = {"pool_pre_ping": parsed.get_backend_name() != "sqlite"}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_recycle"] = 3600
        connect: dict[str, object] = {"connect_timeout": 5}
        if tls:
            connect["ssl"] = tls
        kwargs["connect_args"] = connect
    return create_engine(url, **kwargs)


def refusal(exc: OperationalError) -> str:
    """The server's words when it refused the user a privilege, else ''."""
    args: tuple[object, ...] = tuple(getattr(exc.orig, "args", ()))
    if len(args) >= 2 and args[0] in ACCESS_DENIED:
        return str(args[1])[:300]
    return ""


def log_outage(safe_url: str, exc: object) -> None:
    logs.event(log, "database.unavailable", logging.WARNING, url=safe_url, error=str(exc))


@contextmanager
def database_errors(safe_url: str) -> Iterator[None]:
    """Database errors inside become the ServiceError a client should see."""
    try:
        yield
    except OperationalError as exc:
        refused = refusal(exc)
        if refused:
            # Not an outage: this database user may not do that. Retrying will not help.
            raise errors.permission_denied(
                f"the metadata database refused this index's user: {refused}"
            ) from None
        log_outage(safe_url, exc.orig if exc.orig is not None else exc)
        raise errors.unavailable(
            "the metadata database is unavailable; retry later (the index's log has the details)"
        ) from None
    except DBAPIError as exc:
        if exc.connection_invalidated:
            log_outage(safe_url, exc)
            raise errors.unavailable(
                "lost the connection to the metadata database; retry"
            ) from None
        raise
