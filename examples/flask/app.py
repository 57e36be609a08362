"""A Flask app that saves orders and sends their confirmation task in the same transaction.

    flask --app app init-db          # once: the orders table and the queue's tables, in one file
    flask --app app run              # POST /orders, GET /orders/<id>
    celery -A tasks worker -l INFO   # the worker, in another terminal
"""

from __future__ import annotations

from uuid import uuid4

from flask import Flask, request
from sqlalchemy.orm import Session

import queuectl_kombu
from models import DATABASE_PATH, Base, Order, engine
from tasks import confirm_order

#: Orders of more than this many items are refused, after the confirmation task was sent.
STOCK = 10

app = Flask(__name__)


class OutOfStock(Exception):
    pass


def check_stock(order: Order) -> None:
    """A check that fails after the task was sent (stock, payment, ...): the transaction rolls
    back, and the task with it."""
    if order.quantity > STOCK:
        raise OutOfStock(f"only {STOCK} of {order.item!r} in stock")


@app.cli.command("init-db")
def init_db() -> None:
    """Create the orders table, then queuectl's tables in the same file. queuectl refuses to add
    its tables to a file that holds other tables unless told so; install_schema is the telling
    (`queuectl --db orders.db init` does the same). Running it again changes nothing."""
    Base.metadata.create_all(engine)
    print(f"the orders and the queue's tables are in {queuectl_kombu.install_schema(DATABASE_PATH)}")


@app.post("/orders")
def create_order() -> tuple[dict[str, object], int]:
    """Form fields item and quantity: save the order and send its confirmation task in one
    transaction. 201 with the order; 409 when the stock check fails (nothing saved, nothing sent)."""
    item = request.form.get("item", "").strip()
    quantity = request.form.get("quantity", "1")
    if not item or not quantity.isdigit() or int(quantity) < 1:
        return {"error": "item and a positive quantity are required"}, 400
    try:
        with Session(engine) as session, session.begin():  # commits at the end, or rolls back
            order = Order(item=item, quantity=int(quantity), task_id=str(uuid4()))
            session.add(order)
            session.flush()  # order.id is known
            with queuectl_kombu.enqueue_in(session):  # the task is a row of this transaction
                confirm_order.apply_async((order.id,), task_id=order.task_id)
            check_stock(order)
            created = order.as_dict()
    except OutOfStock as exc:
        return {"error": str(exc)}, 409
    return created, 201


@app.get("/orders/<int:order_id>")
def show_order(order_id: int) -> tuple[dict[str, object], int]:
    """The order and the state and result of its confirmation task."""
    with Session(engine) as session:
        order = session.get(Order, order_id)
        if order is None:
            return {"error": f"no order {order_id}"}, 404
        shown = order.as_dict()
    result = confirm_order.AsyncResult(shown["task_id"])
    task = {"id": result.id, "state": result.state, "result": None}
    if result.successful():
        task["result"] = result.result
    elif result.failed():
        task["result"] = repr(result.result)
    return {**shown, "task": task}, 200
