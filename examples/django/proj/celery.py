"""The project's Celery app: `celery -A proj worker` finds it here (proj.celery.app).

`import queuectl_kombu` registers the sqlite:// and postgresql:// schemes with kombu. It must
run before the app opens its first broker connection; at the top of this module it does, in
every process, because proj/__init__.py imports this module whenever the settings are loaded.
"""

import os

from celery import Celery

import queuectl_kombu  # noqa: F401  (registers sqlite://, postgresql:// and postgres:// with kombu)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
# Every CELERY_* setting of proj/settings.py, without the prefix: CELERY_BROKER_URL is broker_url.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
