"""An app that never imports queuectl_kombu: the transport is named by broker_transport."""

from __future__ import annotations

from celery import Celery

from _common import broker_url, conf_from_env, register_tasks, setup_logging

setup_logging()
app = Celery("qapp_noimport")
app.conf.update(
    broker_url=broker_url(),
    broker_transport="queuectl_kombu.transport:Transport",
)
app.conf.update(conf_from_env())
_tasks = register_tasks(app)
record, sleepy, fail = _tasks["record"], _tasks["sleepy"], _tasks["fail"]
