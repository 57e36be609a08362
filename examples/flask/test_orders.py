"""The routes with a real worker: `celery -A tasks worker` in a subprocess, on the test database
(conftest.py).

    python -m pytest
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import states
from flask.testing import FlaskClient
from sqlalchemy import text

from app import app
from conftest import Worker, wait_for
from models import engine
from tasks import confirm_order


@pytest.fixture
def client(worker: Worker) -> FlaskClient:
    return app.test_client()


def order(client: FlaskClient, order_id: int) -> dict[str, Any]:
    response = client.get(f"/orders/{order_id}")
    assert response.status_code == 200
    return response.get_json()


def confirmed(client: FlaskClient, worker: Worker, order_id: int) -> dict[str, Any]:
    """The order once its task has finished (SUCCESS, FAILURE, ...)."""
    def finished() -> dict[str, Any] | None:
        shown = order(client, order_id)
        return shown if shown["task"]["state"] in states.READY_STATES else None

    return wait_for(finished, f"the task of order {order_id} to finish", worker.output)


def order_count() -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM orders")).scalar_one())


def queued_task_ids() -> set[str]:
    """The ids of every confirm_order message committed to the queue (in any state)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT task_id FROM jobs WHERE task_name = :name"), {"name": confirm_order.name})
        return {row[0] for row in rows}


def test_an_order_is_confirmed_by_the_worker(client: FlaskClient, worker: Worker) -> None:
    response = client.post("/orders", data={"item": "book", "quantity": "2"})
    assert response.status_code == 201
    created = response.get_json()

    shown = confirmed(client, worker, created["id"])

    assert shown["task"] == {"id": created["task_id"], "state": "SUCCESS",
                             "result": f"order {created['id']} confirmed: 2 x book"}
    assert shown["confirmed_at"] is not None  # written by the task, in the worker


def test_a_refused_order_sends_no_task(client: FlaskClient, worker: Worker) -> None:
    orders, before = order_count(), queued_task_ids()

    refused = client.post("/orders", data={"item": "book", "quantity": "99"})

    assert refused.status_code == 409
    assert order_count() == orders
    assert queued_task_ids() == before  # the task was sent, and rolled back with the order

    # An order sent after it is confirmed, and is the only new message the worker ever had.
    accepted = client.post("/orders", data={"item": "pen", "quantity": "1"}).get_json()
    assert confirmed(client, worker, accepted["id"])["task"]["state"] == "SUCCESS"
    assert queued_task_ids() - before == {accepted["task_id"]}
