"""Named counters for databases without sequences."""

from __future__ import annotations

from django.db import models


class Counter(models.Model):
    """Named counters for databases without sequences (SQLite): the row-version counter."""

    name = models.CharField(max_length=64, primary_key=True)
    value = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"
