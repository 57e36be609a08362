"""Where a queuectl file lives: sqlite:// URLs, and whether a path can hold a database."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat

from .exceptions import DatabaseUnusable

logger = logging.getLogger("queuectl_kombu.db")

MIN_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING
#: The URL scheme of a queuectl file, for the broker and the result backend alike.
SCHEME = "sqlite://"


def url_path(url: str) -> str:
    """The absolute path of the file a ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``
    URL names (relative to the working directory); DatabaseUnusable if it names none."""
    if not url.startswith(SCHEME):
        raise DatabaseUnusable(f"not a sqlite:// URL: {url!r}")
    rest = url[len(SCHEME):]
    if "?" in rest:
        raise DatabaseUnusable(f"{url!r}: a sqlite:// URL takes no query string")
    path = rest[1:] if rest.startswith("/") else rest
    if not path.strip("/"):
        raise DatabaseUnusable(
            f"the URL {url!r} names no database file: use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    return os.path.abspath(os.path.expanduser(path))


def check_path(path: str) -> None:
    """Raise DatabaseUnusable, naming the path, unless `path` can hold a queuectl database."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise DatabaseUnusable(
            f"SQLite {sqlite3.sqlite_version} is too old: queuectl needs 3.35 or newer"
        )
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise DatabaseUnusable(f"cannot open database {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise DatabaseUnusable(f"cannot open database {path}: it is a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseUnusable(
            f"cannot open database {path}: directory {directory} is not writable "
            "(SQLite keeps its -wal and -shm files beside the database)"
        )
    if os.path.exists(path):
        # The mode bit too: root passes os.access, but a file made read-only means read-only.
        if not os.access(path, os.R_OK | os.W_OK) or not os.stat(path).st_mode & stat.S_IWUSR:
            raise DatabaseUnusable(f"cannot open database {path}: the file is read-only")
    # The header is not read here: closing any descriptor of the file would drop every POSIX
    # lock this process's SQLite connections hold on it, and another process could then take
    # itself for the last connection and delete the WAL. SQLite reports a non-database instead.


def create_private(path: str) -> None:
    """Create the database file readable and writable by its owner only (SQLite gives its
    -wal and -shm files the same mode)."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        os.close(fd)


def warn_if_shared(path: str) -> None:
    """Whoever can write the file can run commands through it: say so loudly."""
    with contextlib.suppress(OSError):
        mode = os.stat(path).st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            logger.warning(
                "database %s is writable by %s: anyone who can write it can run commands on the "
                "workers (chmod 600 %s)", path, "everyone" if mode & stat.S_IWOTH else "its group", path,
            )


