"""Transactional enqueue: Celery messages written through the application's own database
connection, so that they commit or roll back with its data (docs/transactions.md).

    with enqueue_in(connection):
        order_confirmation.delay(order.id)

Inside the block, every queuectl database of this thread that lives where `connection` points
(the same SQLite file, or a file ATTACHed to it; the same PostgreSQL database) reads and writes
through that connection: a publish is a savepoint inside the application's transaction, never a
commit of its own. The application commits (or rolls back) as it always does; workers see the
messages, and are woken, only when it commits. The engine modules (db.py, postgres.py) ask
`current` (and `lent_to_file`) for the connection; this module knows nothing of their SQL.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .exceptions import InvalidInput

#: The tables by which unqualified statements must reach the queue (an ATTACHed queue file must
#: not be shadowed by tables of the same names in the application's own file).
QUEUE_TABLES = ("jobs", "results", "queues", "consumers", "bindings", "exchanges", "stats", "config")


@dataclass
class Loan:
    """The application's connection lent to queuectl for the length of an `enqueue_in` block."""

    engine: str  # "sqlite" or "postgresql"
    raw: Any  # sqlite3.Connection or psycopg.Connection
    #: SQLite: the real paths of the files the connection has open (main and ATTACHed ones).
    files: frozenset[str] = frozenset()
    #: PostgreSQL: (host, port, dbname) of the server session, for messages.
    server: tuple[str, int, str] | None = None
    #: kombu connections whose declarations (queues, exchanges, bindings) were written through
    #: this loan: their cache of declared entities is forgotten when the block ends, since the
    #: application may roll the declarations back (the next publish declares again).
    declared_by: list[Any] = field(default_factory=list)
    #: Engine-specific wrappers made for this loan (one per queuectl Database).
    wrappers: dict[int, Any] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)
    #: The thread that entered the block: a thread the context was copied into (asyncio.to_thread,
    #: contextvars.copy_context().run) must not use the connection.
    thread: int = field(default_factory=threading.get_ident)


_loan: contextvars.ContextVar[Loan | None] = contextvars.ContextVar("queuectl_loan", default=None)


def current() -> Loan | None:
    """The loan of the calling thread (or asyncio task), if it is inside `enqueue_in`."""
    loan = _loan.get()
    if loan is not None and (loan.pid != os.getpid() or loan.thread != threading.get_ident()):
        return None  # a fork, or another thread: neither has any business with the application's connection
    return loan


def lent_to_file(path: str) -> Loan | None:
    """The current loan if its SQLite connection reaches the queue file `path` (PostgreSQL asks
    the server instead: postgres.Database._lent_connection)."""
    loan = current()
    if loan is None or loan.engine != "sqlite":
        return None
    return loan if os.path.realpath(path) in loan.files else None


def elsewhere(where: str) -> InvalidInput:
    """The error of a publish inside enqueue_in to a database the lent connection is not on: it
    would commit on its own, outside the application's transaction."""
    loan = current()
    lent = ", ".join(sorted(loan.files)) if loan is not None and loan.files else (
        f"database {loan.server[2]!r} (port {loan.server[1]})" if loan is not None and loan.server else "?")
    return InvalidInput(
        f"enqueue_in: this publish goes to {where}, but the connection given is to {lent}: the message "
        f"would not be part of the application's transaction (the queue must be in the application's database)"
    )


def dbapi_connection(connection: Any) -> Any:
    """The DB-API connection under what an application holds: a sqlite3 or psycopg connection as
    it is; a SQLAlchemy Session (its connection in the current transaction: begun if need be),
    scoped_session (Flask-SQLAlchemy's db.session), Connection or pooled connection; a Django
    connection (django.db.connection or connections[alias]). Subclasses count: the classes are
    those of the modules the application imported."""
    if isinstance(connection, sqlite3.Connection):
        return connection
    psycopg2 = sys.modules.get("psycopg2.extensions")
    if psycopg2 is not None and isinstance(connection, psycopg2.connection):
        raise InvalidInput("enqueue_in needs a psycopg 3 connection, not psycopg2's: "
                           "install psycopg and use it (SQLAlchemy: postgresql+psycopg://)")
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(connection, psycopg.Connection):
        return connection
    orm = sys.modules.get("sqlalchemy.orm")
    engine = sys.modules.get("sqlalchemy.engine")
    pool = sys.modules.get("sqlalchemy.pool")
    if orm is not None and isinstance(connection, orm.scoped_session):
        connection = connection()
    if orm is not None and isinstance(connection, orm.Session):
        connection = connection.connection()
    if engine is not None and isinstance(connection, engine.Connection):
        connection = connection.connection
    if pool is not None and isinstance(connection, pool.PoolProxiedConnection):
        raw = connection.driver_connection
        if raw is None:
            raise InvalidInput("enqueue_in: this SQLAlchemy connection is closed")
        return dbapi_connection(raw)
    proxies = sys.modules.get("django.utils.connection")
    if proxies is not None and isinstance(connection, proxies.ConnectionProxy):  # django.db.connection
        connection = connection._connections[connection._alias]
    db_backend = sys.modules.get("django.db.backends.base.base")
    if db_backend is not None and isinstance(connection, db_backend.BaseDatabaseWrapper):
        connection.ensure_connection()
        return dbapi_connection(connection.connection)
    raise InvalidInput(
        f"enqueue_in takes a sqlite3 or psycopg connection, a SQLAlchemy Session or Connection, "
        f"or a Django connection, not {type(connection).__module__}.{type(connection).__name__}"
    )


def _sqlite_files(raw: sqlite3.Connection) -> frozenset[str]:
    """The real paths of the files a connection has open whose unqualified table names reach a
    queuectl schema: the main file if it holds one, else an ATTACHed one, provided no schema
    searched before it (main, temp) holds a table of the same name."""
    files: set[str] = set()
    shadowing = {r[0] for r in raw.execute("SELECT name FROM temp.sqlite_master WHERE type = 'table'")}
    for _, name, path in raw.execute("PRAGMA database_list").fetchall():
        if name == "temp":
            continue  # searched first, above
        quoted = '"' + str(name).replace('"', '""') + '"'
        tables = {r[0] for r in raw.execute(f"SELECT name FROM {quoted}.sqlite_master WHERE type = 'table'")}
        if "jobs" in tables and "queues" in tables and path:
            clash = shadowing & set(QUEUE_TABLES)
            if clash:
                raise InvalidInput(
                    f"the queue attached as {name!r} is hidden by the table(s) {', '.join(sorted(clash))} "
                    f"of a schema searched before it: rename them, or keep the queue in the main file"
                )
            files.add(os.path.realpath(path))
        shadowing |= tables
    return frozenset(files)


def _pg_server(raw: Any) -> tuple[str, int, str]:
    info = raw.info
    return (str(info.host or ""), int(info.port or 5432), str(info.dbname))


@contextlib.contextmanager
def enqueue_in(connection: Any) -> Iterator[Loan]:
    """Publish through `connection` inside this block: the messages sent here (delay,
    apply_async, send_task, canvas) are rows of the application's open transaction, and commit
    or roll back with it. Nothing is committed by this block: the application's commit is.

    `connection` is a sqlite3 connection on the queue's file (or with the file ATTACHed), a
    psycopg 3 connection to the queue's database, a SQLAlchemy Session or Connection, or a
    Django connection; dbapi_connection() says which. Blocks nest (the innermost connection is
    used). A connection that holds no transaction (autocommit) commits each publish at once.
    """
    raw = dbapi_connection(connection)
    if isinstance(raw, sqlite3.Connection):
        files = _sqlite_files(raw)
        if not files:
            raise InvalidInput("enqueue_in: this SQLite connection has no queuectl database open "
                               "(connect to the queue's file, or ATTACH it)")
        loan = Loan(engine="sqlite", raw=raw, files=files)
    else:
        loan = Loan(engine="postgresql", raw=raw, server=_pg_server(raw))
    token = _loan.set(loan)
    try:
        yield loan
    finally:
        _loan.reset(token)
        for client in loan.declared_by:
            declared = getattr(client, "declared_entities", None)
            if declared is not None:
                declared.clear()


def note_declaration(client: Any) -> None:
    """A queue, exchange or binding was declared through the current loan by kombu connection
    `client`: see Loan.declared_by."""
    loan = current()
    if loan is not None and client is not None and all(c is not client for c in loan.declared_by):
        loan.declared_by.append(client)
