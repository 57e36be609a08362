"""The reliability tier: property-based and model-based tests of JobStore and the transport.

Counts of the cases run are printed at the end of the session and written to
tests/reliability/.counts/counts.json (ignored by git).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from hypothesis import configuration

from .helpers import COUNTS

HERE = os.path.dirname(os.path.abspath(__file__))
COUNTS_DIR = os.path.join(HERE, ".counts")

# Hypothesis keeps caches (and, after a failure, patches) in ./.hypothesis of the working
# directory, the repository root here: keep them inside this tier's ignored folder instead.
if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
    configuration.set_hypothesis_home_dir(os.path.join(COUNTS_DIR, "hypothesis"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not COUNTS:
        return
    terminalreporter.section("reliability: cases run")
    for name in sorted(COUNTS):
        terminalreporter.write_line(f"{name:48s} {COUNTS[name]:8d}")
    os.makedirs(COUNTS_DIR, exist_ok=True)
    with open(os.path.join(COUNTS_DIR, "counts.json"), "w", encoding="utf-8") as f:
        json.dump({"written_at": time.time(), "counts": dict(sorted(COUNTS.items()))}, f, indent=2)
