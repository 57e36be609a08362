import uuid

from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField()
    #: The id of the confirmation task, known before the task is sent.
    task_id = models.UUIDField(default=uuid.uuid4, editable=False)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.pk,
            "item": self.item,
            "quantity": self.quantity,
            "task_id": str(self.task_id),
            "confirmed_at": self.confirmed_at.isoformat() if self.confirmed_at else None,
        }
