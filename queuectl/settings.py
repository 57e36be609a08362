"""Where the queuectl database lives: QUEUECTL_DB (a file path or a postgresql:// URL), else a
per-user data directory."""

from __future__ import annotations

import os

from queuectl_kombu import is_postgres_url


def normalize_db(target: str) -> str:
    """A database as the CLI and the app keep it: a postgresql:// URL as it is, a file path
    made absolute."""
    return target if is_postgres_url(target) else os.path.abspath(os.path.expanduser(target))


def data_dir_db_path() -> str:
    """The per-user default: $XDG_DATA_HOME/queuectl/queuectl.db (~/.local/share/... without it)."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(os.path.abspath(data_home), "queuectl", "queuectl.db")


def default_db_path() -> str:
    """The database the CLI and the workers share unless QUEUECTL_DB names another."""
    explicit = os.environ.get("QUEUECTL_DB")
    if explicit:
        return normalize_db(explicit)
    return data_dir_db_path()


def broker_url(path: str) -> str:
    """The broker and result backend URL of a database: sqlite:////abs/path.db for a file, a
    postgresql:// URL as it is."""
    return path if is_postgres_url(path) else "sqlite:///" + os.path.abspath(path)
