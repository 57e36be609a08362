"""Settings of the example project: one SQLite file holds Django's tables, the Celery queue
and the task results, so that a view can send a task inside its own transaction.

PROJ_DATABASE names that file (an absolute path is best: see docs/django.md); by default it is
db.sqlite3 beside manage.py.
"""

import os
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent
DATABASE_PATH = Path(os.environ.get("PROJ_DATABASE", BASE_DIR / "db.sqlite3")).resolve()

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-only-for-this-example")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["orders"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "proj.urls"
WSGI_APPLICATION = "proj.wsgi.application"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATABASE_PATH,
        # Workers write to the same file: wait for its write lock as long as they do.
        "OPTIONS": {"timeout": 30},
        # The test runner's database: a file too (not SQLite's in-memory default), so that a
        # worker process can open it.
        "TEST": {"NAME": DATABASE_PATH.with_name(f"test_{DATABASE_PATH.name}")},
    },
}
if django.VERSION >= (5, 1):
    # Take the write lock at BEGIN: a transaction that reads first and writes later can
    # otherwise fail at once with "database is locked" when a worker wrote in between.
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"

# The queue and the results in Django's own file: sqlite:// and an absolute path (four slashes).
CELERY_BROKER_URL = f"sqlite:///{DATABASE_PATH}"
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
