"""Item 8: a database path that cannot be used fails at once with a message naming the path:
kombu.Connection.connect() raises DatabaseUnusable; a celery worker exits non-zero, no retry loop."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import kombu
import pytest

import queuectl_kombu  # noqa: F401  (registers sqlite://)
from queuectl_kombu import DatabaseUnusable

BAD_KINDS = ["missing-dir", "directory", "read-only", "not-sqlite"]
RETRY_MARKERS = ["Trying again in", "Cannot connect to", "Retry limit exceeded", "retrying"]

# Root passes os.access(W_OK); this prefix runs a command as root *without* the capabilities
# that let root write a file whose mode says read-only, so the OS really refuses the write.
DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search"]


def make_bad_path(kind: str, tmp_path: Path) -> str:
    tmp_path = tmp_path / "bad"  # apart from the harness's logs, so nothing else appears beside it
    tmp_path.mkdir()
    if kind == "missing-dir":
        return str(tmp_path / "no-such-dir" / "broker.db")
    if kind == "directory":
        path = tmp_path / "a-directory.db"
        path.mkdir()
        return str(path)
    if kind == "read-only":
        path = tmp_path / "read-only.db"
        conn = sqlite3.connect(path)  # a real SQLite file, only its mode is wrong
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
        path.chmod(0o400)
        return str(path)
    if kind == "not-sqlite":
        path = tmp_path / "notes.db"
        path.write_text("this is a text file, not a database\n" * 20)
        return str(path)
    raise AssertionError(kind)


def snapshot(path: str) -> tuple:
    """What a refused open must not change: the entries beside the path and the file's bytes."""
    parent = os.path.dirname(path)
    entries = sorted(os.listdir(parent)) if os.path.isdir(parent) else None
    content = Path(path).read_bytes() if os.path.isfile(path) else None
    mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else None
    return entries, content, mode


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_connect_raises_database_unusable_naming_the_path(kind, tmp_path):
    path = make_bad_path(kind, tmp_path)
    before = snapshot(path)
    conn = kombu.Connection("sqlite:///" + path)
    try:
        with pytest.raises(DatabaseUnusable) as info:
            conn.connect()
    finally:
        conn.release()
    assert path in str(info.value), str(info.value)
    assert snapshot(path) == before, "a refused database must be left as it was"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to drop CAP_DAC_OVERRIDE")
def test_read_only_file_refused_when_the_os_refuses_writes(tmp_path):
    """The os.access() path of the check, with a process the kernel really denies writing."""
    path = make_bad_path("read-only", tmp_path)
    code = (
        "import sys, kombu, queuectl_kombu, os\n"
        "assert not os.access(sys.argv[1], os.W_OK)\n"
        "try:\n"
        "    kombu.Connection('sqlite:///' + sys.argv[1]).connect()\n"
        "except queuectl_kombu.DatabaseUnusable as exc:\n"
        "    print('DatabaseUnusable:', exc)\n"
        "else:\n"
        "    print('connected')\n"
    )
    proc = subprocess.run([*DROP_DAC, sys.executable, "-c", code, path], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("DatabaseUnusable:") and path in proc.stdout, proc.stdout


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_worker_on_bad_path_exits_nonzero_quickly(kind, harness, tmp_path):
    path = make_bad_path(kind, tmp_path)
    before = snapshot(path)
    worker = harness.start_worker(pool="prefork", concurrency=1, db=path, wait_ready=False)
    rc = worker.wait(30)
    output = worker.output()
    assert rc != 0, f"worker exited with 0\n{worker.tail()}"
    assert path in output, worker.tail()
    assert "DatabaseUnusable" in output, worker.tail()
    for marker in RETRY_MARKERS:
        assert marker not in output, f"retry message {marker!r} in the worker output\n{worker.tail()}"
    assert not worker.is_ready()
    assert snapshot(path) == before, "a refused database must be left as it was"
