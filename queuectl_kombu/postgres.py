"""The PostgreSQL engine: the queuectl schema in a PostgreSQL database, behind the same verbs.

Everything that differs from SQLite (db.py) lives here:

- connections: psycopg 3, one per thread and process, never used across fork (a child's copy is
  pointed at /dev/null, so that not even its finaliser can end the parent's session), opened
  again after the server dropped one;
- the dialect: each statement of sql/*.sql is translated once (translate: placeholders,
  INDEXED BY, char(), scalar MIN/MAX, LIKE, JSON arrays, SKIP LOCKED on the rows a change
  picks), or replaced by its PostgreSQL text in sql/postgresql.sql (results' str and bytes, the
  stats' shards); the schema is schema.sql translated (schema_script);
- transactions: BEGIN goes with the first statement, NOTIFY and the deferred statements
  (at_commit) with the COMMIT; a worker's writes do not wait for the WAL flush (write(durable=));
- wake-ups: a write transaction ends with a NOTIFY on the schema's channel (unless nobody waits
  for what it changed); Listener holds a connection that LISTENs, whose socket Celery's event
  loop watches (no polling); the planner's statistics are kept (keep_statistics);
- the schema: created on first use in the schema the store names (``queuectl`` unless told
  otherwise) under an advisory lock, its version in the schema_version table.

psycopg is needed only for postgresql:// URLs (``pip install 'queuectl[postgresql]'``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from . import enqueue, sql
from .rules import EVERYONE, WATCHERS
from .exceptions import (
    ConstraintViolated, DatabaseLocked, DatabaseUnreachable, DatabaseUnusable, InvalidInput, InvalidValue,
)

logger = logging.getLogger("queuectl_kombu.db")

#: URL schemes of a PostgreSQL database (broker, result backend, --db alike).
SCHEMES = ("postgresql://", "postgres://")
#: The schema queuectl's tables live in unless a store is told another (transport option `schema`).
DEFAULT_SCHEMA = "queuectl"
#: Seconds to wait for the server when connecting.
CONNECT_TIMEOUT = 10
#: The server ends a session of ours that sits this long inside a transaction (idle_in_transaction_
#: session_timeout): queuectl's transactions last milliseconds, so such a session belongs to a
#: process that died or lost its network mid-transaction, and the rows it holds (a lease, a count)
#: must not stall every other worker until TCP gives up on it (minutes to hours).
IDLE_IN_TRANSACTION_TIMEOUT = 30
#: A key of pg_advisory_xact_lock: held while the schema is created or migrated.
_SCHEMA_LOCK = 0x71756575  # "queu"
#: ... and while one process ANALYZEs the jobs table (keep_statistics).
_ANALYZE_LOCK = 0x71756576
#: How a write transaction begins: durable, or committing without waiting for the WAL flush.
_BEGIN = "BEGIN"
_BEGIN_NOT_DURABLE = "BEGIN; SET LOCAL synchronous_commit TO OFF"
#: The payload of a notification for the watchers only (rules.WATCHERS), as the server sends it.
_WATCHERS_PAYLOAD = WATCHERS.encode()
#: The jobs table is analyzed once this many rows, plus this fraction of it, changed since the last
#: time (autovacuum's own default is 50 + 10 %, once a minute at best).
ANALYZE_AFTER = 500
ANALYZE_FRACTION = 0.1
#: What tells one database from another, asked of two sessions: the oid of the database and the
#: start time of its server (no privilege needed, nothing written).
_IDENTITY = ("SELECT (SELECT oid FROM pg_database WHERE datname = current_database()), "
             "pg_postmaster_start_time()")
#: The identity of each application connection lent to enqueue_in, asked once per connection.
_identities: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def is_postgres_url(target: str) -> bool:
    """Whether `target` is a postgresql:// (or postgres://) URL rather than a SQLite path."""
    return isinstance(target, str) and target.startswith(SCHEMES)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the extra is part of the test install
        raise DatabaseUnusable(
            "postgresql:// needs psycopg 3: pip install 'queuectl[postgresql]'"
        ) from exc
    return psycopg


@dataclass(frozen=True)
class Target:
    """Where a PostgreSQL queue lives: the URL (password and all), what to show, the schema."""

    url: str
    display: str
    schema: str

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this schema (notifications are per database)."""
        return f"queuectl_{self.schema}"

    @property
    def server(self) -> tuple[str, int, str]:
        """(host, port, database name) the URL names, to match an application's connection."""
        parts = urlsplit(self.url)
        return (parts.hostname or "", parts.port or 5432, unquote(parts.path.strip("/")))


def target(url: str, schema: str | None = None) -> Target:
    """The Target a postgresql:// URL names; DatabaseUnusable, naming the URL, when it is malformed."""
    schema = schema or DEFAULT_SCHEMA
    if not _IDENTIFIER.match(schema):
        raise DatabaseUnusable(
            f"schema {schema!r}: use lower-case letters, digits and underscores (at most 63)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DatabaseUnusable(f"not a valid PostgreSQL URL ({exc}): {mask(url)}") from None
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        raise DatabaseUnusable(
            f"the URL {mask(url)} names no database: use postgresql://user:password@host:5432/dbname"
        )
    if parts.query or parts.fragment:
        raise DatabaseUnusable(
            f"{mask(url)}: a postgresql:// URL of queuectl takes no query string (set the schema "
            "with the transport option 'schema'; libpq's settings with PG* environment variables)"
        )
    user = f"{unquote(parts.username)}@" if parts.username else ""
    host = parts.hostname or "localhost"
    display = f"postgresql://{user}{host}{':' + str(port) if port else ''}{parts.path}"
    if schema != DEFAULT_SCHEMA:
        display += f" (schema {schema})"
    return Target(url=url, display=display, schema=schema)


def mask(url: str, mask: str = "***") -> str:
    """The URL with its password, if any, shown as `mask`."""
    return re.sub(r"^(\w+://[^:/@]*:)[^@/]*@", lambda m: m.group(1) + mask + "@", url)


# -- the dialect ------------------------------------------------------------------------------

_INDEXED_BY = re.compile(r"\s+INDEXED BY \w+")
#: The end of a bounded subquery that picks the rows a change applies to: `... LIMIT :limit )`.
_PICKED_ROWS = re.compile(r"(LIMIT :\w+)(\s*\))")
#: SQLite takes a negative LIMIT for none; PostgreSQL takes NULL.
_LIMIT = re.compile(r"LIMIT :(\w+)")
_JSON_IN = re.compile(r"(\w+) IN \(SELECT value FROM json_each\((:\w+)\)\)")
_NAME = re.compile(r"\w+")
_DIGITS = re.compile(r"\d+")
#: Statements that store a result's :value: a str goes to the value column, bytes to blob.
_BYTEA_VALUE = ("result_set", "result_store_task")


def _scalar_min_max(text: str) -> str:
    """SQLite's MIN(a, b) and MAX(a, b) of two or more values as LEAST and GREATEST (the
    aggregates, of one value, stay)."""
    out: list[str] = []
    i = 0
    for match in re.finditer(r"\b(MIN|MAX)\(", text):
        start = match.end()
        depth, j, top_comma = 1, start, False
        while depth:
            c = text[j]
            depth += (c == "(") - (c == ")")
            top_comma |= c == "," and depth == 1
            j += 1
        if top_comma:
            out.append(text[i:match.start()] + ("LEAST(" if match.group(1) == "MIN" else "GREATEST("))
            i = start
    out.append(text[i:])
    return "".join(out)


def _json_in(match: re.Match[str]) -> str:
    column, param = match.group(1), match.group(2)
    cast = "::bigint" if column == "id" else ""
    return f"{column} IN (SELECT json_array_elements_text(CAST({param} AS json)){cast})"


def translate(statement: str) -> str:
    """A statement of sql/*.sql (SQLite's dialect) in PostgreSQL's (LIKE ignoring case as
    SQLite's does, scalar MIN/MAX as LEAST/GREATEST, no INDEXED BY), with psycopg's placeholders:
    :name becomes %(name)s, ?N and ? become %(_N)s (see _params), and a literal % is doubled."""
    text = _JSON_IN.sub(_json_in, _INDEXED_BY.sub("", statement)).replace("char(", "chr(")
    text = _scalar_min_max(text).replace(" LIKE ", " ILIKE ")  # SQLite's LIKE ignores ASCII case
    if text.lstrip().startswith(("UPDATE", "DELETE")):
        # the rows a bounded subquery picks for a change (a claim, a prune) are locked as they are
        # picked, and rows another transaction holds are passed over, never waited for
        text = _PICKED_ROWS.sub(r"\1 FOR UPDATE SKIP LOCKED\2", text)
    text = _LIMIT.sub(r"LIMIT CASE WHEN :\1 < 0 THEN NULL ELSE :\1 END", text)
    out: list[str] = []
    i, n, position = 0, len(text), 0
    while i < n:
        c = text[i]
        if c == "'":  # a string literal, '' inside it included: copied, only % doubled
            j = i + 1
            while j < n and not (text[j] == "'" and text[j + 1:j + 2] != "'"):
                j += 2 if text[j] == "'" else 1
            out.append(text[i:j + 1].replace("%", "%%"))
            i = j + 1
            continue
        if c == "%":
            out.append("%%")
        elif c == ":" and text[i + 1:i + 2].isidentifier() and text[i - 1:i] != ":":
            name = _NAME.match(text, i + 1).group()  # type: ignore[union-attr]
            out.append(f"%({name})s")
            i += 1 + len(name)
            continue
        elif c == "?":
            digits = _DIGITS.match(text, i + 1)
            if digits:
                out.append(f"%(_{digits.group()})s")
                i += 1 + len(digits.group())
                continue
            position += 1
            out.append(f"%(_{position})s")
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _dialect() -> dict[str, tuple[str, bool]]:
    """Each statement's SQLite text -> (its PostgreSQL text, whether its :value is bytea)."""
    overrides = sql.parse_queries(sql.read("postgresql.sql"))
    unknown = set(overrides) - set(sql.QUERIES)
    if unknown:
        raise ValueError(f"sql/postgresql.sql overrides no statement named {sorted(unknown)}")
    return {
        text: (translate(overrides.get(name, text)), name in _BYTEA_VALUE)
        for name, text in sql.QUERIES.items()
    }


_DIALECT: dict[str, tuple[str, bool]] | None = None


def _statement(text: str) -> tuple[str, bool]:
    global _DIALECT
    if _DIALECT is None:
        _DIALECT = _dialect()
    found = _DIALECT.get(text)
    if found is None:  # a statement not in sql/ (the engine's own, a test's): translated once
        found = _DIALECT[text] = (translate(text), False)
    return found


def schema_script() -> str:
    """The schema of sql/schema.sql in PostgreSQL's types, then sql/schema_postgresql.sql: the same
    tables, columns, checks and indexes as SQLite's (ids an identity, integers BIGINT, times
    DOUBLE PRECISION, results' bytes in a column of their own)."""
    text = sql.SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
    text = re.sub(r"\bINTEGER\b", "BIGINT", text)
    text = re.sub(r"\bREAL\b", "DOUBLE PRECISION", text)
    text = re.sub(r"(\bvalue\s+)BLOB,", r"\1TEXT,\n    blob         BYTEA,", text)
    # a chord counter's part marks are found by a range of keys in byte order (char(31), char(32)):
    # compared in the database's collation (en_US: control characters ignored) the range is empty
    results_key = "    key          TEXT PRIMARY KEY,\n    value"
    if results_key not in text:
        raise ValueError("schema.sql: the results table's key changed; update postgres.schema_script")
    text = text.replace(results_key, '    key          TEXT COLLATE "C" PRIMARY KEY,\n    value')
    # the stats rows are counted into by every publish and ack of every process: one row per
    # (minute, queue, event) would make them all wait for each other's commit (and for a host cut
    # off inside one), so PostgreSQL keeps a row per shard of sessions (postgresql.sql: stats_add)
    stats_key = "    PRIMARY KEY (minute, queue, event)\n) WITHOUT ROWID;"
    if stats_key not in text:
        raise ValueError("schema.sql: the stats table's key changed; update postgres.schema_script")
    text = text.replace(stats_key, "    shard   BIGINT  NOT NULL DEFAULT 0,\n    PRIMARY KEY (minute, queue, event, shard)\n);")
    text = text.replace(") WITHOUT ROWID;", ");")
    return sql.read("schema_postgresql.sql") + "\n" + text


def _lent_stats(text: str) -> str:
    """stats_add as the application's sessions count (enqueue_in): into a row of each session's
    own (16 + its backend pid), which no worker's ack ever waits for."""
    shard = "pg_backend_pid() %% 16"  # as translated: psycopg's escaped percent sign
    if shard not in text:
        raise AssertionError(f"stats_add no longer names its shard as {shard!r}: {text}")
    return text.replace(shard, "16 + pg_backend_pid()")


def _params(params: Any, bytea_value: bool) -> Any:
    if isinstance(params, dict):
        if bytea_value:
            value = params.get("value")
            blob = bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None
            params = dict(params, value=None if blob is not None else value, blob=blob)
        return params
    return {f"_{i}": v for i, v in enumerate(params or (), 1)}


class Row(tuple):  # type: ignore[type-arg]
    """A row readable by position and by column name, like sqlite3.Row (dict(row) works)."""

    names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self.names.index(key))
            except ValueError:
                raise IndexError(f"no column named {key!r}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


def _row_factory(cursor: Any) -> Any:
    description = cursor.description
    if description is None:
        return tuple
    names = tuple(col.name for col in description)
    row_type = type("Row", (Row,), {"names": names})
    return row_type


# -- connections -------------------------------------------------------------------------------

#: Every psycopg connection this process opened (see _after_fork_in_child).
_open_connections: weakref.WeakSet[Any] = weakref.WeakSet()
_abandoned: list[Any] = []


def _after_fork_in_child() -> None:
    """A forked child must never talk on its parent's sockets: each inherited connection's socket
    becomes /dev/null (the descriptor number stays taken), and the connection is kept referenced
    so that it is never finalised."""
    global _keeper_lock
    _keeper_lock = threading.Lock()  # another thread of the parent may have held it
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in list(_open_connections):
            with contextlib.suppress(Exception):
                fd = conn.pgconn.socket
                if fd >= 0:
                    os.dup2(devnull, fd)
            _abandoned.append(conn)
        _open_connections.clear()
        _listeners.clear()  # the parent's: its keeper thread did not come along
    finally:
        os.close(devnull)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _connect(tgt: Target, **kwargs: Any) -> Any:
    psycopg = _psycopg()
    try:
        raw = psycopg.connect(tgt.url, connect_timeout=CONNECT_TIMEOUT, **kwargs)
    except psycopg.Error as exc:
        reason = " ".join((str(exc).strip().splitlines() or [type(exc).__name__])[0].split())
        raise DatabaseUnreachable(f"cannot connect to {tgt.display}: {reason}") from None
    _open_connections.add(raw)
    return raw


class Connection:
    """A psycopg connection that takes the statements of sql/*.sql as they are written (translated
    here) and answers like a sqlite3.Connection: execute, executemany, in_transaction."""

    def __init__(self, raw: Any, tgt: Target, *, lent: bool = False) -> None:
        self.raw = raw
        self.target = tgt
        #: The application's connection inside enqueue_in: its transaction is not ours to end.
        self.lent = lent
        self._errors = _psycopg()
        #: A write transaction opened whose BEGIN is not sent yet: it goes with its first
        #: statement, in one round trip ("BEGIN; statement"); `begin` is what is sent.
        self.begin_pending = False
        self.begin = _BEGIN
        #: Statements sent with the COMMIT of the open write transaction (Database.at_commit).
        self.at_commit: list[str] = []

    @property
    def in_transaction(self) -> bool:
        return self.begin_pending or bool(
            self.raw.info.transaction_status != self._errors.pq.TransactionStatus.IDLE)

    def begin_now(self) -> None:
        """Send a pending BEGIN on its own (before a savepoint, or statements sent otherwise)."""
        if self.begin_pending:
            self.begin_pending = False
            self.raw.execute(self.begin)

    @property
    def usable(self) -> bool:
        return not (self.raw.closed or self.raw.broken)

    def cursor(self) -> Any:
        """A cursor that binds on the client and returns Rows, whatever the connection's own
        factories (an application's connection lent to enqueue_in has its own)."""
        return self._errors.ClientCursor(self.raw, row_factory=_row_factory)

    def execute(self, statement: str, params: Any = ()) -> Any:
        text, bytea_value = _statement(statement)
        with self.errors():
            cursor = self.cursor()
            if self.begin_pending:
                self.begin_pending = False
                cursor.execute(self.begin + "; " + text, _params(params, bytea_value))
                for _ in range(self.begin.count(";") + 1):
                    cursor.nextset()  # the statement's own result, after BEGIN's (and SET's)
            else:
                cursor.execute(text, _params(params, bytea_value))
            return cursor

    def executemany(self, statement: str, rows: Sequence[Any], *, returning: bool = False) -> Any:
        text, bytea_value = _statement(statement)
        with self.errors():
            self.begin_now()
            cursor = self.cursor()
            cursor.executemany(text, [_params(row, bytea_value) for row in rows], returning=returning)
            return cursor

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """psycopg's errors as queuectl's: a lost or refused connection is DatabaseUnreachable (a
        connection error for kombu: Celery reconnects), a deadlock or lock timeout DatabaseLocked
        (tried again, like SQLite's busy)."""
        psycopg = self._errors
        try:
            yield
        except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable,
                psycopg.errors.SerializationFailure) as exc:
            raise DatabaseLocked(f"{self.target.display}: {str(exc).strip().splitlines()[0]}") from exc
        except psycopg.DataError as exc:
            if "NUL" in str(exc):
                raise InvalidValue("PostgreSQL's text cannot hold a NUL character (\\x00)") from None
            raise
        except psycopg.IntegrityError as exc:
            raise ConstraintViolated(f"{self.target.display}: {str(exc).strip().splitlines()[0]}") from exc
        except psycopg.errors.QueryCanceled as exc:  # a statement or lock timeout a DBA set
            raise DatabaseLocked(f"{self.target.display}: {str(exc).strip().splitlines()[0]}") from exc
        except psycopg.Error as exc:
            if self.usable and not isinstance(exc, psycopg.InterfaceError):
                raise
            reason = (str(exc).strip().splitlines() or ["connection lost"])[0]
            raise DatabaseUnreachable(f"lost the connection to {self.target.display}: {reason}") from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()


def _migrate(conn: Connection, tgt: Target) -> None:
    """Create the schema and its tables, or check their version, in one transaction."""
    raw = conn.raw
    with conn.errors():
        # made already (the usual case): no DDL, so a role without CREATE on the database works
        there = raw.execute(f"SELECT to_regclass('\"{tgt.schema}\".schema_version')").fetchone()[0]
        if there is not None:
            version = raw.execute(f'SELECT max(version) FROM "{tgt.schema}".schema_version').fetchone()[0]
            if version == sql.SCHEMA_VERSION:
                return
    with conn.errors(), raw.transaction():
        raw.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{tgt.schema}"')
        raw.execute(f'SET LOCAL search_path TO "{tgt.schema}"')
        exists = raw.execute("SELECT to_regclass('schema_version')").fetchone()[0]
        version = raw.execute("SELECT max(version) FROM schema_version").fetchone()[0] if exists else None
        if version == sql.SCHEMA_VERSION:
            return
        if version is not None and version > sql.SCHEMA_VERSION:
            raise DatabaseUnusable(
                f"{tgt.display} has queuectl schema version {version}; this queuectl knows up to "
                f"{sql.SCHEMA_VERSION}: upgrade queuectl"
            )
        if version is not None:  # pragma: no cover - no PostgreSQL migration exists yet
            raise DatabaseUnusable(f"{tgt.display}: no migration from schema version {version}")
        for statement in sql.statements(schema_script()):
            raw.execute(statement)
        raw.execute("INSERT INTO schema_version (version) VALUES (%s)", (sql.SCHEMA_VERSION,))
    logger.info("created the queuectl schema (version %d) in %s", sql.SCHEMA_VERSION, tgt.display)


class Database:
    """One queuectl schema in a PostgreSQL database; hands each thread of each process its own
    connection. The same methods as db.Database (SQLite); those about the file answer for a server."""

    engine = "postgresql"
    #: A claim goes straight to its UPDATE: a read first is one more round trip, and an empty
    #: claim locks nothing (SKIP LOCKED).
    look_before_claim = False
    #: A commit's notification reaches the Listener a moment after the commit is visible: a stamp
    #: taken in between does not show it yet (the control queues are looked at after every claim).
    exact_stamps = False
    #: Publishes are inserts of their own (short, SKIP LOCKED claims wait for nobody): no spool.
    spool = None
    take_in = None

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self.target = target(url, schema)
        self.path = self.target.display
        self._local = threading.local()
        self._pid = os.getpid()
        self._ready = False
        self._lock = threading.Lock()
        self._commits = itertools.count(1)
        self.local_commits = 0
        self._commits_lock = threading.Lock()
        self._identity_cache: tuple[Any, ...] | None = None

    # -- connections ------------------------------------------------------------------------

    def connection(self) -> Connection:
        """This thread's connection: opened (and the schema created) on first use, and again
        once the server dropped it."""
        if self._pid != os.getpid():
            self._local = threading.local()
            self._pid = os.getpid()
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.usable:
            return conn
        if conn is not None:  # said once per lost connection: the next tries raise DatabaseUnreachable
            logger.warning("reconnecting to %s (the connection was lost)", self.path)
            self._local.conn = None
            conn.close()
        return self._connect()

    def _connect(self) -> Connection:
        psycopg = _psycopg()
        raw = _connect(self.target, autocommit=True, cursor_factory=psycopg.ClientCursor,
                       row_factory=_row_factory)
        conn = Connection(raw, self.target)
        try:
            if not self._ready:
                with self._lock:
                    _migrate(conn, self.target)
                    self._ready = True
            with conn.errors():
                raw.execute(f'SET search_path TO "{self.target.schema}"; '
                            f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}s'")
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction: every statement inside sees the database as of its first read
        (REPEATABLE READ)."""
        conn = self.connection()
        if conn.in_transaction:
            yield conn
            return
        with conn.errors():
            conn.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.raw.execute("COMMIT")

    @contextlib.contextmanager
    def write(self, *, durable: bool = True, wakes: str = EVERYONE, publishes: bool = False,
              wait: bool = True) -> Iterator[Connection]:
        """A write transaction (a savepoint inside another of this thread; `wait` means nothing
        here: writers lock rows, not the database), which notifies the
        schema's channel as it commits (rules.EVERYONE): every waiting worker and result looks
        again. WATCHERS: the notification says so, and workers do not look for work because of it
        (a claim, an ack); NOBODY: no notification (a lease renewal, a heartbeat).

        Not `durable`: the commit does not wait for the server's WAL flush (synchronous_commit
        off). A server crash can then lose the last moments of such commits, in commit order: what
        a worker writes (claims, acks, leases, results), whose loss runs the jobs concerned
        again, as after a worker crash. Publishes are durable: one that returned survives it.

        A write that `publishes` inside enqueue_in on this database goes through the
        application's connection instead (_lent_write). Everything else stays on ours: reads,
        and declarations of queues, exchanges and bindings, which commit at once (as on RabbitMQ,
        they are not part of a transaction, and a rollback cannot take them back)."""
        if publishes and enqueue.current() is not None:
            lent = self._lent_connection()
            if lent is None:
                raise enqueue.elsewhere(self.path)
            with self._lent_write(lent, wakes):
                yield lent
            return
        conn = self.connection()
        if conn.in_transaction:
            deferred = len(conn.at_commit)
            with conn.errors():
                conn.begin_now()
                try:
                    with conn.raw.transaction():  # a savepoint
                        yield conn
                except BaseException:
                    del conn.at_commit[deferred:]  # what the rolled-back savepoint deferred
                    raise
            return
        with conn.errors():
            conn.begin_pending = True  # sent with the first statement
            conn.begin = _BEGIN if durable else _BEGIN_NOT_DURABLE
            conn.at_commit = []
            try:
                yield conn
            except BaseException:
                if not conn.begin_pending:
                    with contextlib.suppress(Exception):
                        conn.raw.execute("ROLLBACK")
                conn.begin_pending = False
                conn.at_commit = []
                raise
            if conn.begin_pending and not conn.at_commit:  # nothing written: nothing ever begun
                conn.begin_pending = False
                return
            # What waits for the commit, the NOTIFY and the COMMIT in one round trip: a publish
            # is "BEGIN; INSERT" and this
            notify = {EVERYONE: f'NOTIFY "{self.target.channel}"',
                      WATCHERS: f"NOTIFY \"{self.target.channel}\", '{WATCHERS}'"}.get(wakes, "")
            last = [*conn.at_commit, notify, "COMMIT"]
            conn.at_commit = []
            if conn.begin_pending:
                conn.begin_pending = False
                last.insert(0, conn.begin)
            try:
                conn.raw.execute("; ".join(s for s in last if s))
            except BaseException:
                # a deferred statement or the NOTIFY failed: the transaction is aborted, not
                # ended, and the next write of this thread must not find it open
                if conn.usable and conn.in_transaction:
                    with contextlib.suppress(Exception):
                        conn.raw.execute("ROLLBACK")
                raise

    def _lent_connection(self) -> Connection | None:
        """The application's connection of the current enqueue_in block if it is to this
        database (the server says: its database's oid and the server's start time, asked of both
        sessions once per block), else None."""
        loan = enqueue.current()
        if loan is None or loan.engine != self.engine:
            return None
        if id(self) not in loan.wrappers:
            mine = self.identity()
            theirs = _identities.get(loan.raw)
            if theirs is None:
                with self.connection().errors():
                    theirs = tuple(self._errors().ClientCursor(loan.raw).execute(_IDENTITY).fetchone())
                _identities[loan.raw] = theirs  # a session's database never changes
            loan.wrappers[id(self)] = Connection(loan.raw, self.target, lent=True) if theirs == mine else None
        lent: Connection | None = loan.wrappers[id(self)]
        return lent

    def identity(self) -> tuple[Any, ...]:
        """What tells this database from any other, however its URL names it: its oid and its
        server's start time."""
        if self._identity_cache is None:
            self._identity_cache = tuple(self.connection().raw.execute(_IDENTITY).fetchone())
        return self._identity_cache

    @staticmethod
    def _errors() -> Any:
        return _psycopg()

    @contextlib.contextmanager
    def _lent_write(self, conn: Connection, wakes: str) -> Iterator[None]:
        """A write through the application's connection (enqueue_in): a savepoint of its
        transaction, with this schema on the search path meanwhile, whose NOTIFY the server sends
        when, and only if, the application commits. A connection in autocommit mode, outside a
        transaction, gets a transaction of this write alone."""
        raw = conn.raw
        notify = {EVERYONE: f'NOTIFY "{self.target.channel}"',
                  WATCHERS: f"NOTIFY \"{self.target.channel}\", '{WATCHERS}'"}.get(wakes, "")
        alone = raw.autocommit and raw.info.transaction_status == conn._errors.pq.TransactionStatus.IDLE
        deferred, conn.at_commit = conn.at_commit, []
        # sent with the first statement, in its round trip (Connection.execute): the savepoint,
        # the application's search_path kept aside in a setting of this transaction, ours set
        conn.begin = (("BEGIN; " if alone else "") + "SAVEPOINT queuectl_publish; "
                      "SELECT set_config('queuectl.search_path', current_setting('search_path'), true); "
                      f"SELECT set_config('search_path', '\"{self.target.schema}\", pg_temp', true)")
        conn.begin_pending = True
        with conn.errors():
            try:
                yield
                if conn.begin_pending:  # nothing was written
                    return
                last = [*conn.at_commit, notify,
                        "SELECT set_config('search_path', current_setting('queuectl.search_path'), true)",
                        "RELEASE SAVEPOINT queuectl_publish", "COMMIT" if alone else ""]
                raw.execute("; ".join(s for s in last if s))
            except BaseException:
                if not conn.begin_pending:
                    with contextlib.suppress(Exception):
                        raw.execute("ROLLBACK TO SAVEPOINT queuectl_publish; RELEASE SAVEPOINT queuectl_publish"
                                    + ("; ROLLBACK" if alone else ""))
                raise
            finally:
                conn.begin_pending = False
                conn.at_commit = deferred

    def at_commit(self, conn: Connection, statement: str, rows: list[tuple[object, ...]]) -> None:
        """Run `statement` once per row of `rows` in the open write transaction, sent with its
        COMMIT (one round trip; an error there fails the commit as it would have the statement).
        Outside a write transaction, now."""
        text, bytea_value = _statement(statement)
        if conn.lent and statement == sql.QUERIES["stats_add"]:
            # counted apart (a row of its own per session): an application's transaction may stay open a while,
            # and the stats rows it holds must not be those the workers' acks update
            text = _lent_stats(text)
        cursor = conn.cursor()
        bound = [cursor.mogrify(text, _params(row, bytea_value)) for row in rows]
        if not conn.in_transaction:
            for query in bound:
                conn.raw.execute(query)
            return
        conn.at_commit.extend(bound)

    def insert_rows(self, conn: Connection, statement: str, rows: list[tuple[object, ...]]) -> list[int]:
        """Insert `rows` with one executemany of `statement` (it returns each row's id); their
        ids in order (not consecutive: other transactions insert at the same time)."""
        cursor = conn.executemany(statement + "\nRETURNING id", rows, returning=True)
        ids: list[int] = []
        while True:
            ids.append(int(cursor.fetchone()[0]))
            if not cursor.nextset():
                return ids

    def serialize(self, conn: Connection, name: str) -> None:
        """Make the open write transactions that name `name` run one after another (a check,
        then a write that depends on it): a transaction-scoped advisory lock."""
        if not conn.lent:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(:name))", {"name": f"queuectl {self.target.schema} {name}"})
            return
        # an application's transaction may read an older snapshot than the lock's holder wrote in
        isolation = conn.execute(
            "SELECT current_setting('transaction_isolation'), pg_advisory_xact_lock(hashtext(:name))",
            {"name": f"queuectl {self.target.schema} {name}"}).fetchone()[0]
        if isolation != "read committed":
            raise InvalidInput(
                f"a publish that refuses duplicate task ids needs a READ COMMITTED transaction, not "
                f"{str(isolation).upper()}: its check could miss a task id committed after the snapshot")

    def keep_statistics(self) -> bool:
        """ANALYZE the jobs table once enough of it changed since the last time (whether or not
        autovacuum runs on the server, and before its first round on a new table): without
        statistics the planner takes a new table for a few rows, sorts every waiting row for each
        claim instead of reading jobs_ready in order, and a deep queue drains at a tenth of its
        speed. One process at a time (an advisory lock it does not wait for); True if it ran."""
        conn = self.connection()
        row = conn.execute(
            "SELECT n_mod_since_analyze, n_live_tup FROM pg_stat_user_tables WHERE relid = to_regclass('jobs')"
        ).fetchone()
        if row is None or row[0] < ANALYZE_AFTER + row[1] * ANALYZE_FRACTION:
            return False
        conn.execute(
            f"DO $$ BEGIN IF pg_try_advisory_xact_lock({_ANALYZE_LOCK}) THEN ANALYZE jobs; END IF; END $$")
        logger.info("analyzed the jobs table of %s (%d rows changed since)", self.path, row[0])
        return True

    def close(self) -> None:
        """Close this thread's connection (only this thread's; one inside a transaction stays)."""
        if self._pid != os.getpid():
            self._local = threading.local()
            self._pid = os.getpid()
            return
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.usable and conn.in_transaction:
            return
        listener: Listener | None = getattr(self._local, "listener", None)
        if listener is not None:
            listener.close()
        self._local.listener = None
        self._local.conn = None
        if conn is not None:
            conn.close()

    # -- commits and wake-ups ----------------------------------------------------------------

    def note_commit(self) -> None:
        """Count a commit of this process (as db.Database.note_commit)."""
        with self._commits_lock:
            self.local_commits = next(self._commits)

    def change_waiter(self, poll_interval: float = 0.0) -> Listener:
        """A new Listener on this schema's channel (the caller closes it)."""
        return Listener(self.target)

    def _thread_listener(self) -> Listener:
        if self._pid != os.getpid():
            self._local = threading.local()
            self._pid = os.getpid()
        listener: Listener | None = getattr(self._local, "listener", None)
        if listener is None:
            listener = self._local.listener = Listener(self.target)
        return listener

    def thread_waiter(self, poll_interval: float = 0.0) -> Listener:
        """This thread's Listener, the one data_version() counts on (results wait on it)."""
        return self._thread_listener()

    def data_version(self) -> int:
        """Changes whenever anyone committed a write since it was last taken: the notifications
        this thread's Listener has received (listening from before the first value is returned)."""
        listener = self._thread_listener()
        listener.drain()
        return listener.count

    def change_stamp(self) -> tuple[int, int]:
        return (self.data_version(), self.local_commits)

    def work_stamp(self) -> tuple[int, int]:
        """Changes whenever work may have become available: the notifications of changes that
        wake everyone (not the claims and acks that wake the watchers only)."""
        listener = self._thread_listener()
        listener.drain()
        # not local_commits: this process's own claims and acks would count (its publishes come
        # back to its Listener like anyone's)
        return (listener.work_count, 0)

    # -- what SQLite's files have and a server does not ---------------------------------------

    @contextlib.contextmanager
    def cache_size(self, kib: int) -> Iterator[None]:
        """SQLite's page cache; the server keeps its own."""
        yield

    def moved(self, *, now: bool = False) -> str | None:
        """A database on a server cannot be moved away under a process."""
        return None

    def checkpoint(self, truncate: bool = False, *, restart: bool = False) -> tuple[int, int, int]:
        """The server checkpoints its own WAL."""
        return (0, 0, 0)

    def checkpoint_in_background(self, wanted: threading.Event) -> Callable[[], None]:
        """Nothing to do: the server checkpoints its own WAL."""
        return lambda: None

    def wal_size(self) -> int:
        return 0

    def file_size(self) -> int:
        """Bytes of the schema's tables and indexes."""
        row = self.connection().execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema AND c.relkind = 'r'",
            {"schema": self.target.schema},
        ).fetchone()
        return int(row[0])

    def quick_check(self) -> list[str]:
        """The server checks its own pages; a round trip shows it answers."""
        self.connection().execute("SELECT 1").fetchone()
        return []



#: A Listener its thread has not drained for this long is drained by the keeper thread: the server
#: sends every notification to every listening session, and one that never reads them stops the
#: server's shared notification queue from moving (after ~10^8 commits every NOTIFY would fail).
KEEP_IDLE = 30.0
_listeners: weakref.WeakSet[Listener] = weakref.WeakSet()
_keeper_pid = 0
_keeper_lock = threading.Lock()


def keep_listeners(now: float | None = None) -> int:
    """Drain every Listener of this process idle for KEEP_IDLE seconds and not in use now (a
    dashboard's thread with no page open, a web thread that waited for one result); how many.
    What they received still counts: their thread's next change stamp shows a change."""
    now = time.monotonic() if now is None else now
    drained = 0
    for listener in list(_listeners):
        if now - listener.used_at >= KEEP_IDLE and listener.drain_if_idle():
            drained += 1
    return drained


def _keeper() -> None:
    pause = threading.Event()
    while not pause.wait(KEEP_IDLE / 3):
        with contextlib.suppress(Exception):  # keep going whatever one listener does
            keep_listeners()


def _start_keeper() -> None:
    global _keeper_pid
    with _keeper_lock:
        if _keeper_pid == os.getpid():
            return
        _keeper_pid = os.getpid()
        threading.Thread(target=_keeper, name="queuectl-listener-keeper", daemon=True).start()


class Listener:
    """A connection that LISTENs on a schema's channel: its socket is readable when a write
    committed (any process, any host). Counts what it received; reconnects when dropped. One
    thread uses it (drain, wait), under its lock; the keeper thread drains it only when that
    thread has left it idle for KEEP_IDLE seconds."""

    def __init__(self, tgt: Target) -> None:
        self.target = tgt
        #: Notifications received (and reconnections: what was sent meanwhile is unknown) ...
        self.count = 0
        #: ... and those of them that may mean work (not the watchers' only).
        self.work_count = 0
        self._pid = os.getpid()
        self._raw: Any = None
        #: Goes up with each connection opened: a new socket may reuse the old one's number, and
        #: the event loop must watch it again (LoopLink.watch).
        self.generation = 0
        self._lock = threading.Lock()
        self._closed = False
        self.used_at = time.monotonic()
        self._open()
        _listeners.add(self)
        _start_keeper()

    @property
    def pushes_changes(self) -> bool:
        """The server pushes every commit's notification (while it has no connection, its
        descriptor is -1 and the event loop watches the next one: LoopLink.watch)."""
        return True

    def _open(self) -> None:
        raw = _connect(self.target, autocommit=True)
        raw.execute(f'LISTEN "{self.target.channel}"')
        self._raw = raw
        self.generation += 1

    def fileno(self) -> int:
        return int(self._raw.pgconn.socket) if self._raw is not None else -1

    def drain(self) -> bool:
        """Read what the server sent; True if a notification came (or the connection was lost
        and made again: what was sent meanwhile is unknown, so callers look again)."""
        with self._lock:
            self.used_at = time.monotonic()
            return self._drain()

    def drain_if_idle(self) -> bool:
        """Drain it unless its thread is using it right now (the keeper); True if it did."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._drain()
            return True
        finally:
            self._lock.release()

    def _drain(self) -> bool:
        if self._pid != os.getpid() or self._closed:
            return False
        if self._raw is None:  # lost before, and the server could not be reached then
            try:
                self._open()
            except DatabaseUnreachable:
                return False
            self.count += 1
            self.work_count += 1
            return True
        psycopg = _psycopg()
        pgconn = self._raw.pgconn
        got = work = False
        try:
            pgconn.consume_input()
            while (note := pgconn.notifies()) is not None:
                got = True
                work = work or note.extra != _WATCHERS_PAYLOAD
        except psycopg.Error:
            logger.warning("the wake-up connection to %s was lost: reconnecting", self.target.display)
            with contextlib.suppress(Exception):
                self._raw.close()
            self._raw = None
            with contextlib.suppress(DatabaseUnreachable):
                self._open()
            got = work = True
        if got:
            self.count += 1
        if work:
            self.work_count += 1
        return got

    def wait(self, timeout: float) -> bool:
        """Sleep until a notification comes or `timeout` seconds pass; True if one came."""
        if timeout <= 0:
            return False
        with self._lock:  # the keeper leaves it alone meanwhile
            self.used_at = time.monotonic()
            return self._wait(timeout)

    def _wait(self, timeout: float) -> bool:
        if self._closed:
            return False
        if self._raw is None:
            with contextlib.suppress(DatabaseUnreachable):
                self._open()
            if self._raw is None:
                select.select([], [], [], timeout)
                return False
            self.count += 1  # what was committed while it had no connection is unknown
            self.work_count += 1
            return True
        if self._drain():
            return True
        try:
            readable, _, _ = select.select([self.fileno()], [], [], timeout)
        except (InterruptedError, ValueError):
            return False
        return bool(readable) and self._drain()

    def close(self) -> None:
        """Close its connection for good (the keeper, which takes the same lock, then leaves it)."""
        with self._lock:
            self._closed = True
            if self._raw is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):
                    self._raw.close()
            self._raw = None
        _listeners.discard(self)
