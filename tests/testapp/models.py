"""A model the host project does not vectorize: tests add its domain the seed's way."""

from __future__ import annotations

from django.db import models

from app.models import Team
from entity_vectors.models import VectorizedModel


class Notebook(VectorizedModel):
    """A team's notebook: a name and a description, like the seed's event definition."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=400)
    description = models.TextField(blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "testapp"
