"""Where things are: the repository, and the ``queuectl`` console script."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

#: The root of the repository (the folder holding ``queuectl_kombu/`` and ``tests/``).
REPO = Path(__file__).resolve().parents[2]


def queuectl_executable() -> str:
    """The console script of this interpreter (not a pyenv shim, which adds a second of start-up);
    skips the test when it is not installed."""
    beside = Path(sys.executable).parent / "queuectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("queuectl")
    if not found:
        pytest.skip("the queuectl console script is not installed (pip install -e .)")
    return found
