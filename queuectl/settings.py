"""Where the queuectl database lives: QUEUECTL_DB, else a per-user data directory."""

from __future__ import annotations

import os


def data_dir_db_path() -> str:
    """The per-user default: $XDG_DATA_HOME/queuectl/queuectl.db (~/.local/share/... without it)."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(os.path.abspath(data_home), "queuectl", "queuectl.db")


def default_db_path() -> str:
    """The database the CLI and the workers share unless QUEUECTL_DB names another."""
    explicit = os.environ.get("QUEUECTL_DB")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    return data_dir_db_path()


def broker_url(path: str) -> str:
    """The sqlite:// URL of an absolute database path (sqlite:////abs/path.db)."""
    return "sqlite:///" + os.path.abspath(path)
