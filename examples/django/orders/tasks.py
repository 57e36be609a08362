from celery import shared_task
from django.utils import timezone

from .models import Order


@shared_task
def confirm_order(order_id: int) -> str:
    """What an order's confirmation would do (send an e-mail, say): here, stamp the order. The
    order is always there: the task was committed with it."""
    order = Order.objects.get(pk=order_id)
    order.confirmed_at = timezone.now()
    order.save(update_fields=["confirmed_at"])
    return f"order {order.pk} confirmed: {order.quantity} x {order.item}"
