from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate

import queuectl_kombu


def install_queue(using: str = "default", **kwargs: object) -> None:
    """After `migrate` (and the test runner's own migrate): queuectl's tables in the same SQLite
    file as Django's, once. queuectl refuses to add its tables to a file that holds other tables
    unless told so; this is the telling (`queuectl --db db.sqlite3 init` does the same). Running
    it again changes nothing. A PostgreSQL queue makes its schema on first use."""
    connection = connections[using]
    if using == "default" and connection.vendor == "sqlite":
        queuectl_kombu.install_schema(connection.settings_dict["NAME"])


class OrdersConfig(AppConfig):
    name = "orders"

    def ready(self) -> None:
        post_migrate.connect(install_queue, sender=self)
