"""The WSGI application for gunicorn or uwsgi: `gunicorn proj.wsgi` (docs/django.md: preload and fork)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

application = get_wsgi_application()
