"""The brokers compared: each peer's broker URL, natural result backend, settings, setup and cleanup.

A run gets a fresh temporary directory `workdir`; `urls(workdir)` names the broker and result backend
of that run, `reset(app)` empties what a previous run may have left, `cleanup()` runs once at the end.
"""

from __future__ import annotations

import os
import re
from typing import Any

from kombu import Connection

from .celeryapp import QUEUE

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")  # a db of its own
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: The PostgreSQL server of queuectl-pg: its maintenance database, where the bench creates and
#: drops the databases of its runs (all named PG_PREFIX...).
PG_SERVER = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_PREFIX = "qb_bench_"


def purge(app: Any) -> None:
    """Declare the bench queue as Celery does and purge it (the only queue the bench touches)."""
    with app.connection_for_write() as conn:
        queue = app.amqp.queues[QUEUE].bind(conn.default_channel)
        queue.declare()
        queue.purge()


class Peer:
    name = ""
    settings = ""

    def unreachable(self) -> str | None:
        """Why this peer cannot run here, or None."""
        return None

    def urls(self, workdir: str) -> tuple[str, str | None]:
        """(broker URL, natural result backend URL) of one run."""
        raise NotImplementedError

    def version(self) -> str:
        return ""

    def reset(self, app: Any) -> None:
        purge(app)

    def cleanup(self) -> None:
        pass

    def release(self, workdir: str) -> None:
        """Free what `urls(workdir)` named, once its run is over (a database of its own)."""


class Queuectl(Peer):
    name = "queuectl"
    settings = ("sqlite:////<tmp>/queuectl.db, a new file per run; transport defaults (WAL, "
                "synchronous=NORMAL, inotify wake-ups, visibility_timeout 30 s, retention 1 day); "
                "result backend: sqlite:// (the broker's file)")

    def urls(self, workdir: str) -> tuple[str, str | None]:
        return "sqlite:///" + os.path.join(os.path.abspath(workdir), "queuectl.db"), "sqlite://"

    def version(self) -> str:
        import sqlite3

        import queuectl_kombu
        return f"queuectl_kombu {queuectl_kombu.__version__}, SQLite {sqlite3.sqlite_version}"


class QueuectlPostgres(Peer):
    """queuectl on PostgreSQL: a new database per run (reset creates it, release drops it),
    broker and result backend the same postgresql:// URL, tables in its schema `queuectl`."""

    name = "queuectl-pg"
    settings = (f"{PG_SERVER.rsplit('/', 1)[0]}/{PG_PREFIX}<run>, a new database per run (CREATE DATABASE "
                "before, DROP DATABASE ... WITH (FORCE) after), tables in schema queuectl created on first "
                "use; transport defaults (FOR UPDATE SKIP LOCKED claims, LISTEN/NOTIFY wake-ups, "
                "visibility_timeout 30 s, retention 1 day); result backend: the same postgresql:// URL")

    def _admin(self) -> Any:
        import psycopg
        return psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=5)

    @staticmethod
    def database(workdir: str) -> str:
        """The database of the run in `workdir`: PG_PREFIX + the directory's name, made an identifier."""
        tail = re.sub(r"[^a-z0-9_]", "_", os.path.basename(workdir.rstrip("/")).lower()).strip("_")
        return (PG_PREFIX + (tail if tail and tail != "tmp" else "run"))[:63]

    def unreachable(self) -> str | None:
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            return str(exc)
        try:
            self._admin().close()
        except Exception as exc:
            return f"{PG_SERVER}: {exc}"
        return None

    def urls(self, workdir: str) -> tuple[str, str | None]:
        url = f"{PG_SERVER.rsplit('/', 1)[0]}/{self.database(workdir)}"
        return url, url

    def version(self) -> str:
        import psycopg

        import queuectl_kombu
        with self._admin() as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]
        return f"queuectl_kombu {queuectl_kombu.__version__}, psycopg {psycopg.__version__}, PostgreSQL {server}"

    def reset(self, app: Any) -> None:
        """A new, empty database for this run (dropped first if a run left one of that name)."""
        name = app.conf.broker_url.rsplit("/", 1)[1]
        assert name.startswith(PG_PREFIX), name
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        purge(app)  # creates the schema and declares the queue, as for the other peers

    def release(self, workdir: str) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database(workdir)}" WITH (FORCE)')

    def cleanup(self) -> None:
        """Drop every database of the bench's runs still there (a failed run keeps its own)."""
        with self._admin() as conn:
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                (PG_PREFIX.replace("_", r"\_") + "%",))]
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Redis(Peer):
    name = "redis"
    settings = (f"{REDIS_URL} (FLUSHDB of that db before each run); kombu defaults (BRPOP, "
                "visibility_timeout 1 h); result backend: the same Redis db")

    def _client(self) -> Any:
        import redis
        return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)

    def unreachable(self) -> str | None:
        try:
            self._client().ping()
        except Exception as exc:
            return f"{REDIS_URL}: {exc}"
        return None

    def urls(self, workdir: str) -> tuple[str, str | None]:
        return REDIS_URL, REDIS_URL

    def version(self) -> str:
        return f"Redis {self._client().info('server')['redis_version']}"

    def reset(self, app: Any) -> None:
        self._client().flushdb()

    def cleanup(self) -> None:
        self._client().flushdb()


class RabbitMQ(Peer):
    name = "rabbitmq"
    settings = (f"{AMQP_URL.replace('guest:guest@', '')} (py-amqp); durable queue {QUEUE!r}, "
                "purged before each run and deleted at the end; result backend: rpc://")

    def unreachable(self) -> str | None:
        try:
            with Connection(AMQP_URL, connect_timeout=3) as conn:
                conn.connect()
        except Exception as exc:
            return f"{AMQP_URL}: {exc}"
        return None

    def urls(self, workdir: str) -> tuple[str, str | None]:
        return AMQP_URL, "rpc://"

    def version(self) -> str:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.connect()
            version = conn.connection.server_properties.get("version", b"?")
        return f"RabbitMQ {version.decode() if isinstance(version, bytes) else version}"

    def cleanup(self) -> None:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            channel = conn.default_channel
            channel.queue_delete(QUEUE)
            channel.exchange_delete(QUEUE)


class SQLAlchemy(Peer):
    name = "sqla"
    settings = ("sqla+sqlite:////<tmp>/sqla.db, a new file per run; kombu's SQLAlchemy transport "
                "(polls every 1 s); result backend: db+sqlite:////<tmp>/sqla-results.db")

    def unreachable(self) -> str | None:
        try:
            import sqlalchemy  # noqa: F401
        except ImportError as exc:
            return str(exc)
        return None

    def urls(self, workdir: str) -> tuple[str, str | None]:
        path = os.path.abspath(workdir)
        return f"sqla+sqlite:///{path}/sqla.db", f"db+sqlite:///{path}/sqla-results.db"

    def version(self) -> str:
        import sqlalchemy
        return f"SQLAlchemy {sqlalchemy.__version__}"


PEERS: dict[str, Peer] = {p.name: p for p in (Queuectl(), QueuectlPostgres(), Redis(), RabbitMQ(), SQLAlchemy())}
