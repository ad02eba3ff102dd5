"""The embedder belongs to the embedding version: a version records its embedder, model and
dimensions, and every run and search of it uses them, whatever the environment's default says.

An OpenAI key set after an offline demo switches the summarizer for new changes and breaks
nothing; moving the vectors to OpenAI is an explicit `migrate_embeddings`, which the status
command suggests.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.models import Action, Team
from entity_vectors import search_entities
from entity_vectors.core.embedding_versions import served_version, spec_of
from entity_vectors.models import DomainVersion, SyncRun
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import sync_entities
from tests.conftest import TEST_API_KEY, run_command, run_workflow
from tests.factories import make_action, make_team
from tests.support.migrations import dimensions, migrate, rows_at
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db

# Everything that chooses a provider or a model: unset, the defaults follow OPENAI_API_KEY.
PROVIDER_SETTINGS = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ENTITY_VECTORS_SUMMARIZER",
    "ENTITY_VECTORS_EMBEDDER",
    "ENTITY_VECTORS_CHAT_MODEL",
    "ENTITY_VECTORS_EMBEDDING_MODEL",
    "ENTITY_VECTORS_EMBEDDING_DIMENSIONS",
    "ENTITY_VECTORS_EMBEDDING_VERSION",
    "ENTITY_VECTORS_SEARCH_MODE",
    "ENTITY_VECTORS_EVAL_QUERIES",
)
EDITED_DESCRIPTION = (
    "First steps of a new user; from now on it also counts a downloaded monthly usage report."
)
QUERY = "downloaded the monthly usage report spreadsheet"


@pytest.fixture
def provider_defaults(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    """No provider chosen anywhere, as on a fresh clone: the defaults decide."""
    for name in PROVIDER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
        if hasattr(settings, name):
            delattr(settings, name)
    settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 2
    settings.ENTITY_VECTORS_PROVIDER_MAX_BACKOFF = 0.05


def set_key(settings: Any, server: OpenAIServer) -> None:
    """What the README invites: an OpenAI key (and here, the loopback OpenAI-compatible server)."""
    server.reset()
    settings.OPENAI_API_KEY = TEST_API_KEY
    settings.OPENAI_BASE_URL = server.base_url


def status_lines(domain: str) -> list[str]:
    """The status command's lines for one domain."""
    out, _ = run_command("entity_vectors_status", "--domain", domain, "--runs", "0")
    return out.splitlines()


class TestKeyAfterTheOfflineDemo:
    """The demo ran offline; then OPENAI_API_KEY is set."""

    def test_summaries_follow_the_key_vectors_stay_until_migrate_embeddings_moves_them(
        self,
        provider_defaults: None,
        embedded_store: EmbeddingStore,
        openai_server: OpenAIServer,
        settings: Any,
    ) -> None:
        run_command("demo")
        offline = spec_of(DomainVersion.objects.get(domain="action", embedding_version=1))
        assert offline.name in ("wordllama", "hashing")  # the offline default embedder
        team = Team.objects.get(name="Hedgebox Web")

        set_key(settings, openai_server)
        edited = Action.objects.get(team=team, name="Viewed onboarding checklist")
        edited.description = EDITED_DESCRIPTION
        edited.save()
        out, _ = run_command("sync_entity_vectors", "--domain", "action", "--wait")

        run = SyncRun.objects.filter(domain="action").latest("started_at")
        assert (run.status, run.selected, run.summarized, run.inserted) == ("succeeded", 1, 1, 1), out
        # The summary of the change came from OpenAI; its vector from the served version's embedder.
        assert len(openai_server.chat_requests()) == 1
        assert openai_server.embedding_requests() == []
        row = rows_at(embedded_store, 1)[str(edited.pk)]
        assert row.properties["_vectorized_by"] == {
            "summarizer": "openai:gpt-4.1-mini",
            "embedder": offline.identity,
            "dimensions": offline.dimensions,
        }
        assert len(row.vector) == offline.dimensions

        hits = search_entities("action", team.id, QUERY)
        assert hits[0].id == str(edited.pk)
        assert dimensions(hits) == {offline.dimensions}
        assert openai_server.embedding_requests() == []  # the query too: the served version's embedder
        again, _ = run_command("demo")  # its example searches, with the key set
        assert (
            f"embedder {offline.identity} (the versions served; new versions get "
            "openai:text-embedding-3-small: manage.py entity_vectors_status says how to move)"
        ) in again
        assert "(no results)" not in again.split("is not approved")[0]
        assert openai_server.embedding_requests() == []

        advice = [line for line in status_lines("action") if "migrate_embeddings" in line]
        assert advice == [
            f"  version 1 (served) keeps the embedder it was made with ({offline.identity}, "
            f"{offline.dimensions} dimensions), not the default openai:text-embedding-3-small (1536 "
            "dimensions); to move to it: manage.py migrate_embeddings --domain action --to-version 2 --wait"
        ]
        assert not SyncRun.objects.filter(status=SyncRun.Status.FAILED).exists()

        # The move, as the status line and then the command itself say.
        backfilled = migrate("--domain", "action", "--to-version", "2", "--wait")
        assert "registered embedding version 2 (openai:text-embedding-3-small, 1536 dimensions)" in backfilled
        assert openai_server.embedding_requests() != []
        assert "next: manage.py migrate_embeddings --domain action --to-version 2 --promote" in backfilled
        # Version 1 was written beside it, by its own embedder, and still serves.
        assert {len(row.vector) for row in rows_at(embedded_store, 1).values()} == {offline.dimensions}
        assert search_entities("action", team.id, QUERY)[0].id == str(edited.pk)
        # The loopback server's embeddings are word hashes, below wordllama on the labelled set:
        # the evaluation gate (tested with the promotion) would rightly refuse them.
        promoted = migrate("--domain", "action", "--to-version", "2", "--promote", "--skip-evaluation")
        assert "action: version 2 now serves search (was version 1)" in promoted

        asked = len(openai_server.embedding_requests())
        hits = search_entities("action", team.id, QUERY)
        assert hits[0].id == str(edited.pk)
        assert dimensions(hits) == {1536}
        assert {hit.properties["_vectorized_by"]["embedder"] for hit in hits} == {
            "openai:text-embedding-3-small"
        }
        assert len(openai_server.embedding_requests()) == asked + 1  # the query
        assert not [line for line in status_lines("action") if "migrate_embeddings" in line]
        assert not SyncRun.objects.filter(status=SyncRun.Status.FAILED).exists()

        # The key gone again: the served version still needs it, and the status says so.
        del settings.OPENAI_API_KEY
        advice = [line for line in status_lines("action") if "migrate_embeddings" in line]
        assert advice == [
            "  version 2 (served) is made by the openai embedder (openai:text-embedding-3-small, 1536 "
            "dimensions), which needs OPENAI_API_KEY, not set: its runs and searches fail; set the key, or "
            f"move to the default {offline.identity} ({offline.dimensions} dimensions): manage.py "
            "migrate_embeddings --domain action --to-version 3 --wait"
        ]


class TestTheVersionKeepsItsEmbedder:
    """Runs, dry runs and searches of a version use its recorded embedder; a new version gets the default."""

    def test_another_default_changes_nothing_of_a_written_version(
        self, offline: None, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        team = make_team()
        make_action(team, name="Signed up", description="A visitor created an account.")
        assert run_workflow("action").status == "succeeded"
        settings.ENTITY_VECTORS_EMBEDDING_DIMENSIONS = 128
        paid = make_action(team, name="Paid", description="Checkout for a subscription succeeded.")

        dry, _ = run_command("sync_entity_vectors", "--domain", "action", "--dry-run")
        result = sync_entities.apply(kwargs={"domain": "action", "delay_between_batches": 0})

        assert "would look at 1 entities (embedding versions 1)" in dry and "summarize 1" in dry
        assert result.result["status"] == "finished"
        assert {len(row.vector) for row in rows_at(embedded_store, 1).values()} == {256}
        hits = search_entities("action", team.id, "paid subscription checkout")
        assert hits[0].id == str(paid.pk) and dimensions(hits) == {256}
        # A new version is the default embedder's; the served one keeps its own.
        second = run_workflow("action", embedding_version=2)
        assert second.status == "succeeded"
        assert {len(row.vector) for row in rows_at(embedded_store, 2).values()} == {128}
        assert {len(row.vector) for row in rows_at(embedded_store, 1).values()} == {256}
        assert served_version("action") == 1
        assert dimensions(search_entities("action", team.id, "signed up")) == {256}

    def test_the_status_suggests_promoting_a_backfill_of_the_default_embedder(
        self, offline: None, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        team = make_team()
        make_action(team, name="Signed up")
        assert run_workflow("action").status == "succeeded"
        assert not [line for line in status_lines("action") if "migrate_embeddings" in line]
        settings.ENTITY_VECTORS_EMBEDDING_DIMENSIONS = 128

        migrate("--domain", "action", "--to-version", "2")

        advice = [line for line in status_lines("action") if "migrate_embeddings" in line]
        assert advice == [
            "  the default embedder (hashing, 128 dimensions) writes version 2, backfilling beside the "
            "served version 1 (hashing, 256 dimensions); once its coverage is complete: manage.py "
            "migrate_embeddings --domain action --to-version 2 --promote"
        ]


class TestTheSameSummaryAgain:
    """An entity summarized again into the very text its row holds keeps a real vector."""

    def test_a_new_summarizer_that_writes_the_same_text_rewrites_the_row_with_its_vector(
        self, offline: None, embedded_store: EmbeddingStore, openai_server: OpenAIServer, settings: Any
    ) -> None:
        team = make_team()
        action = make_action(team, name="Signed up", description="A visitor created an account.")
        make_action(team, name="Paid", description="Checkout for a subscription succeeded.")
        assert run_workflow("action").status == "succeeded"
        before = rows_at(embedded_store, 1)[str(action.pk)]
        set_key(settings, openai_server)
        settings.ENTITY_VECTORS_SUMMARIZER = "openai"
        action.save()  # saved unchanged: the new summarizer writes its summary

        run = run_workflow("action")

        assert (run.status, run.summarized) == ("succeeded", 1)
        after = rows_at(embedded_store, 1)[str(action.pk)]
        assert after.text == before.text  # the same text, from the other summarizer
        assert after.properties["_vectorized_by"]["summarizer"] == "openai:gpt-4.1-mini"
        assert after.vector == before.vector
        hits = search_entities("action", team.id, "visitor created an account")
        assert hits[0].id == str(action.pk)
