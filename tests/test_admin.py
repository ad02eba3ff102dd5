"""Run history in the Django admin."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db


def test_runs_and_their_batches_are_listed_read_only(
    client: Client, offline: None, embedded_store: EmbeddingStore
) -> None:
    make_action(make_team())
    run = run_workflow("action")
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))

    listing = client.get("/admin/entity_vectors/syncrun/")
    detail = client.get(f"/admin/entity_vectors/syncrun/{run.pk}/change/")

    assert listing.status_code == 200 and b"succeeded" in listing.content
    assert detail.status_code == 200 and b"batch" in detail.content.lower()
    assert client.get("/admin/entity_vectors/syncrun/add/").status_code == 403
