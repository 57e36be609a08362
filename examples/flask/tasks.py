"""The Celery app and the confirmation task: `celery -A tasks worker` runs them.

`import queuectl_kombu` registers the sqlite:// and postgresql:// schemes with kombu; it must run
before the app opens its first broker connection, so it sits beside the app.
"""

from __future__ import annotations

from datetime import datetime, timezone

from celery import Celery
from sqlalchemy.orm import Session

import queuectl_kombu  # noqa: F401  (registers sqlite://, postgresql:// and postgres:// with kombu)
from models import DATABASE_URL, Order, engine

# The queue and the results in the application's own file.
celery = Celery("orders", broker=DATABASE_URL, backend=DATABASE_URL)
celery.conf.update(broker_connection_retry_on_startup=True, task_acks_late=True, worker_prefetch_multiplier=1)


@celery.task(name="orders.confirm")
def confirm_order(order_id: int) -> str:
    """What an order's confirmation would do (send an e-mail, say): here, stamp the order. The
    order is always there: the task was committed with it."""
    with Session(engine) as session, session.begin():
        order = session.get(Order, order_id)
        assert order is not None, f"order {order_id} is not there"
        order.confirmed_at = datetime.now(timezone.utc)
        return f"order {order.id} confirmed: {order.quantity} x {order.item}"
