"""The worker_ready handler of the result test apps (imported by each): the worker writes its pid
to the file RTEST_READY names once it is ready to consume. Imports nothing of this project:
rapp_noimport must load without it."""

from __future__ import annotations

import os
from typing import Any

from celery import signals


@signals.worker_ready.connect(weak=False)
def _ready(**kwargs: Any) -> None:
    path = os.environ.get("RTEST_READY")
    if path:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
