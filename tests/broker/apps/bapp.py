"""The Celery app of the broker tests, built from the environment (``celery -A bapp ...``).

  BTEST_BROKER      broker URL; when unset, ``sqlite:///`` + BTEST_DB
  BTEST_DB          absolute path of the SQLite broker file
  BTEST_LOG         execution log: one line per task event (``bconf.log_event``)
  BTEST_NS          prefix of every queue and exchange name ("" on SQLite: Celery's own names)
  BTEST_QUEUE       one more queue this process consumes (a queue of its own per worker)
  BTEST_BEAT_EVERY  seconds: a beat schedule running b.record("beat") that often
  BTEST_CONF        JSON object merged into app.conf last
"""

from __future__ import annotations

import json
import os

from bconf import build_app


def _broker_url() -> str:
    return os.environ.get("BTEST_BROKER") or "sqlite:///" + os.path.abspath(os.environ["BTEST_DB"])


app = build_app(
    _broker_url(),
    ns=os.environ.get("BTEST_NS", ""),
    extra_queue=os.environ.get("BTEST_QUEUE") or None,
    conf=json.loads(os.environ.get("BTEST_CONF") or "{}"),
    beat_every=float(os.environ["BTEST_BEAT_EVERY"]) if os.environ.get("BTEST_BEAT_EVERY") else None,
)
