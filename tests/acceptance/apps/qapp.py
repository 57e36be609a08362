"""The acceptance app: configured only with the sqlite:// URL (plus what QTEST_CONF adds)."""

from __future__ import annotations

from celery import Celery

import queuectl_kombu  # noqa: F401  (registers the sqlite:// scheme)
from _common import broker_url, conf_from_env, register_tasks, setup_logging

setup_logging()
app = Celery("qapp", broker=broker_url())
app.conf.update(conf_from_env())
_tasks = register_tasks(app)
record, sleepy, fail = _tasks["record"], _tasks["sleepy"], _tasks["fail"]
