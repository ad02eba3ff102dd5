"""Run history in the Django admin."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

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


def test_domains_show_coverage_freshness_and_spend_and_parked_entities_can_be_unparked(
    client: Client, offline: None, embedded_store: EmbeddingStore
) -> None:
    from entity_vectors.models import EntityChange, EntityFailure

    team = make_team()
    synced = make_action(team, name="Synced")
    run_workflow("action")
    make_action(team, name="Pending")
    EntityFailure.objects.create(
        domain="action", entity_id=str(synced.pk), team_id=team.id, failures=3, last_error="boom",
        last_failed_at=timezone.now(), parked_at=timezone.now(),
    )
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))

    versions = client.get("/admin/entity_vectors/domainversion/")
    failures = client.get("/admin/entity_vectors/entityfailure/")
    unparked = client.post(
        "/admin/entity_vectors/entityfailure/",
        {"action": "unpark", "_selected_action": [EntityFailure.objects.get().pk]},
    )

    assert versions.status_code == 200
    page = versions.content.decode()
    assert '<td class="field-coverage">50.0%</td>' in page  # one of two live actions is covered
    assert "Spend, 30 days" in page and '<td class="field-parked">1</td>' in page
    assert failures.status_code == 200 and "boom" in failures.content.decode()
    assert unparked.status_code == 302 and not EntityFailure.objects.exists()
    assert EntityChange.objects.filter(domain="action", entity_id=str(synced.pk)).exists()
