"""queuectl init: the queue's tables in a file that holds an application's own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from click.testing import CliRunner

from queuectl.cli import cli


def queuectl(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return done.exit_code, done.output


def app_file(path: Path, table: str = "orders") -> Path:
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
    conn.execute(f"INSERT INTO {table} (id) VALUES (1)")
    conn.commit()
    conn.close()
    return path


def test_init_adds_the_queue_beside_the_application_tables(tmp_path: Path) -> None:
    path = app_file(tmp_path / "app.db")
    code, out = queuectl("--db", str(path), "status")
    assert code == 1 and f"queuectl --db {path} init" in out  # refused until told
    code, out = queuectl("--db", str(path), "init")
    assert code == 0 and str(path) in out
    code, out = queuectl("--db", str(path), "init")  # again: nothing changes
    assert code == 0
    code, out = queuectl("--db", str(path), "status")
    assert code == 0, out
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT id FROM orders").fetchall() == [(1,)]
    conn.close()


def test_init_refuses_a_file_whose_tables_have_the_queue_names(tmp_path: Path) -> None:
    path = app_file(tmp_path / "app.db", table="jobs")
    code, out = queuectl("--db", str(path), "init")
    assert code == 1 and "have the names of queuectl's" in out and len(out.strip().splitlines()) == 1
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["jobs"]
    conn.close()


def test_init_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 100)
    code, out = queuectl("--db", str(path), "init")
    assert code == 1 and "not a SQLite database" in out
    assert path.read_text() == "not a database\n" * 100


def test_init_on_postgresql_creates_the_schema(pg_url: str) -> None:
    code, out = queuectl("--db", pg_url, "init")
    assert code == 0 and "postgresql://" in out
    code, out = queuectl("--db", pg_url, "status")
    assert code == 0, out


def test_init_refuses_a_file_whose_user_version_is_the_application_s(tmp_path: Path) -> None:
    """queuectl keeps its schema version in PRAGMA user_version: a file that uses it for itself
    cannot hold the queue (nor be migrated as if it were one)."""
    for version in (2, 3, 9):
        path = app_file(tmp_path / f"app{version}.db")
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.close()
        code, out = queuectl("--db", str(path), "init")
        assert code == 1 and f"user_version {version} is another application's" in out, out
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == version
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["orders"]
        conn.close()
