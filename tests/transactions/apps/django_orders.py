"""A Django project reduced to one view's body: saves orders and enqueues their confirmation
inside transaction.atomic(), through Django's own connection (enqueue_in).

    python django_orders.py      (TAPP_DB: a SQLite file or a postgresql:// URL)
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

import django
from django.conf import settings

from tapp import DB, app

from queuectl_kombu import enqueue_in

if "://" in DB:
    parts = urlsplit(DB)
    database = {"ENGINE": "django.db.backends.postgresql", "NAME": parts.path.strip("/"),
                "USER": parts.username or "", "HOST": parts.hostname or "", "PORT": parts.port or 5432}
else:
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": DB}
settings.configure(DATABASES={"default": database}, USE_TZ=True)
django.setup()

from django.db import connection, transaction  # noqa: E402


def save_order(order_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO orders (id) VALUES (%s)", [order_id])
    with enqueue_in(connection):
        app.send_task("orders.confirm", (order_id,), task_id=f"django-{order_id}")


def main() -> None:
    with transaction.atomic():
        save_order(1)
    try:
        with transaction.atomic():
            save_order(2)
            raise RuntimeError("payment refused")
    except RuntimeError:
        pass
    with transaction.atomic():
        save_order(3)
        try:
            with transaction.atomic():  # a savepoint
                save_order(4)
                raise RuntimeError("gift wrap refused")
        except RuntimeError:
            pass
    save_order(5)  # autocommit, outside atomic(): committed at once, with its order
    print("done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
