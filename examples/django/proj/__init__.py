"""The project package. Importing the Celery app here, as Django's Celery guide does, makes
`shared_task` bind to it in every process that loads the settings (runserver, gunicorn, the
worker, manage.py commands), and with it `import queuectl_kombu` (proj/celery.py)."""

from .celery import app as celery_app

__all__ = ("celery_app",)
