from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from queuectl_kombu import enqueue_in

from .models import Order
from .tasks import confirm_order

#: Orders of more than this many items are refused, after the confirmation task was sent.
STOCK = 10


class OutOfStock(Exception):
    pass


def check_stock(order: Order) -> None:
    """A check that fails after the task was sent (stock, payment, ...): the transaction rolls
    back, and the task with it."""
    if order.quantity > STOCK:
        raise OutOfStock(f"only {STOCK} of {order.item!r} in stock")


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """POST item=...&quantity=...: save the order and send its confirmation task in one
    transaction. 201 with the order; 409 when the stock check fails (nothing saved, nothing sent)."""
    item = request.POST.get("item", "").strip()
    quantity = request.POST.get("quantity", "1")
    if not item or not quantity.isdigit() or int(quantity) < 1:
        return JsonResponse({"error": "item and a positive quantity are required"}, status=400)
    try:
        with transaction.atomic():
            order = Order.objects.create(item=item, quantity=int(quantity))
            with enqueue_in(connection):  # the task is a row of this transaction
                confirm_order.apply_async((order.pk,), task_id=str(order.task_id))
            check_stock(order)
    except OutOfStock as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    return JsonResponse(order.as_dict(), status=201)


@require_GET
def show_order(request: HttpRequest, order_id: int) -> JsonResponse:
    """The order and the state and result of its confirmation task."""
    order = get_object_or_404(Order, pk=order_id)
    result = confirm_order.AsyncResult(str(order.task_id))
    task = {"id": result.id, "state": result.state, "result": None}
    if result.successful():
        task["result"] = result.result
    elif result.failed():
        task["result"] = repr(result.result)
    return JsonResponse({**order.as_dict(), "task": task})
