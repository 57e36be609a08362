"""Helpers of the result backend tests: the worker subprocess of their apps, and Redis db 14.

Workers are ``celery worker -P prefork`` processes in their own session (tests.support.processes),
stopped by PID (SIGTERM) and then by process group (SIGKILL). Every wait has a deadline.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.support.processes import Worker, celery_argv, child_env

APPS = Path(__file__).parent / "apps"
REDIS_URL = "redis://127.0.0.1:6379/14"  # db 14 only; keys are prefixed per run and deleted

if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))


class ResultWorker(Worker):
    """One ``celery -A <module> worker -P prefork`` of the apps in apps/, run in `workdir`.

    Its files are named by a tag of its own: the log, the ready file (written by the app's
    worker_ready handler: the worker is ready once it exists), the names of the tasks it
    published and its execution log (RTEST_* in rapp's docstring).
    """

    def __init__(
        self, workdir: Path, module: str, broker: str, backend: str, conf: dict[str, Any] | None = None,
        concurrency: int = 2, env: dict[str, str] | None = None, loglevel: str = "INFO",
    ) -> None:
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:8]
        self.ready_file = workdir / f"ready-{self.tag}"
        self.published = workdir / f"published-{self.tag}.txt"
        self.execlog = workdir / f"exec-{self.tag}.txt"
        variables = {
            "RTEST_BROKER": broker,
            "RTEST_BACKEND": backend,
            "RTEST_CONF": json.dumps(conf or {}),
            "RTEST_READY": str(self.ready_file),
            "RTEST_PUBLISHED": str(self.published),
            "RTEST_EXECLOG": str(self.execlog),
            **(env or {}),
        }
        hostname = f"rt-{self.tag}@%h"
        argv = celery_argv(module, "worker", "-P", "prefork", "-c", str(concurrency), "--without-mingle",
                           "--without-gossip", "-l", loglevel, "-n", hostname)
        super().__init__(f"worker-{self.tag}", argv, hostname=hostname, env=child_env(APPS, **variables),
                         cwd=workdir, out=workdir / f"worker-{self.tag}.log", ready_timeout=60.0,
                         ready_interval=0.02)

    def is_ready(self) -> bool:
        """The worker_ready signal has fired."""
        return self.ready_file.exists()
