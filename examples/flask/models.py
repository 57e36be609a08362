"""The application's data: one table of orders, in the SQLite file that also holds the Celery
queue and its results.

ORDERS_DATABASE names that file (an absolute path is best: see docs/flask.md); by default it is
orders.db beside this module.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from sqlalchemy import DateTime, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DATABASE_PATH = Path(os.environ.get("ORDERS_DATABASE", Path(__file__).parent / "orders.db")).resolve()
#: SQLAlchemy's URL and queuectl's are both sqlite:// and the absolute path: four slashes.
DATABASE_URL = f"sqlite:///{DATABASE_PATH}"

# Workers write to the same file: wait for its write lock as long as they do (30 s).
engine = create_engine(DATABASE_URL, connect_args={"timeout": 30})


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[int]
    #: The id of the confirmation task, known before the task is sent.
    task_id: Mapped[str] = mapped_column(String(36))
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "item": self.item,
            "quantity": self.quantity,
            "task_id": self.task_id,
            "confirmed_at": self.confirmed_at.isoformat() if self.confirmed_at else None,
        }
