"""`manage.py migrate_embeddings`: backfill a new embedding version beside the served one, promote it,
retire the old one, as a user sees it (search results, the ledger, the command's words)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management.base import CommandError

from app.models import Action, Team
from entity_vectors import search_entities
from entity_vectors.core.embedding_versions import ensure_version, served_version
from entity_vectors.lifecycle.retirement import retire
from entity_vectors.models import DomainVersion, LedgerEntry, SyncRun
from entity_vectors.providers import EmbedderSpec
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.support.migrations import QUERY, dimensions, migrate, rows_at


@pytest.mark.django_db
class TestBackfill:
    """--to-version N writes N beside the served version; search keeps answering from the old one."""

    def test_search_keeps_serving_v1_while_v2_is_backfilled(self, synced: tuple[Team, list[Action]]) -> None:
        team, _ = synced

        out = migrate(
            "--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128"
        )

        assert (
            "action: registered embedding version 2 (hashing, 128 dimensions) as backfilling; "
            "search keeps serving version 1" in out
        )
        assert "action v2 coverage: 3/3 live entities (100.0%)" in out
        assert "--to-version 2 --promote" in out
        assert served_version("action") == 1
        served = search_entities("action", team.id, QUERY)
        assert served and dimensions(served) == {256}
        backfilled = search_entities("action", team.id, QUERY, embedding_version=2)
        assert backfilled and dimensions(backfilled) == {128}
        record = DomainVersion.objects.get(domain="action", embedding_version=2)
        assert (record.state, record.explicit, record.dimensions) == ("backfilling", True, 128)

    def test_an_edit_during_the_backfill_lands_in_both_versions(
        self, synced: tuple[Team, list[Action]], embedded_store: EmbeddingStore
    ) -> None:
        team, actions = synced
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")

        edited = Action.objects.get(pk=actions[2].pk)
        edited.name = "Uploaded a spreadsheet"
        edited.save()
        run = run_workflow("action")  # the served version's run writes every tracked version

        assert run.status == "succeeded"
        assert sorted(item["version"] for item in run.versions["write"]) == [1, 2]
        for version in (1, 2):
            row = rows_at(embedded_store, version)[str(edited.pk)]
            assert not row.is_deleted
            assert row.properties["name"] == "Uploaded a spreadsheet"
            assert "Uploaded a spreadsheet" in row.text
        hits = search_entities("action", team.id, "uploaded a spreadsheet", embedding_version=2, limit=1)
        assert hits[0].id == str(edited.pk) and hits[0].properties["name"] == "Uploaded a spreadsheet"

    def test_a_pass_over_a_list_of_entities_never_ends_the_backfill(
        self, synced: tuple[Team, list[Action]]
    ) -> None:
        """A fast-lane pass looks at its own entities only: the backfill stays open until a run of the
        whole selection has written every entity at the new version."""
        from entity_vectors.workflow.fast_lane import run_fast_lane

        _, actions = synced
        # Version 2 is registered while its own run has not happened yet.
        ensure_version("action", 2, EmbedderSpec("hashing", "", 128), serve_if_none=False)
        edited = Action.objects.get(pk=actions[0].pk)
        edited.name = "Signed up for the newsletter"
        edited.save()

        passed = run_fast_lane("action")

        assert passed.status == "finished" and passed.run_status == "succeeded"
        assert DomainVersion.objects.get(domain="action", embedding_version=2).backfilled_at is None
        out = migrate(
            "--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128"
        )
        assert "action v2 coverage: 3/3 live entities (100.0%)" in out
        assert DomainVersion.objects.get(domain="action", embedding_version=2).backfilled_at is not None

    def test_without_an_embedder_the_configured_one_writes_it(
        self, synced: tuple[Team, list[Action]]
    ) -> None:
        out = migrate("--domain", "action", "--to-version", "2")

        assert "registered embedding version 2 (hashing, 256 dimensions) as backfilling" in out
        record = DomainVersion.objects.get(domain="action", embedding_version=2)
        assert (record.state, record.explicit) == ("backfilling", False)
        again = migrate("--domain", "action", "--to-version", "2")
        assert "is already registered (backfilling); continuing its backfill" in again


def _snapshot(store: EmbeddingStore) -> tuple[Any, ...]:
    return (
        list(DomainVersion.objects.order_by("pk").values_list("pk", "state", "embedder", "dimensions")),
        SyncRun.objects.count(),
        list(LedgerEntry.objects.order_by("pk").values_list("pk", "is_live", "row_version")),
        store.count_rows("action"),
    )


BAD_ARGUMENTS = [
    ([], "give --to-version N (with --promote to promote it) and/or --retire M"),
    (["--to-version", "1"], "--to-version=1: version 1 is the one action search serves"),
    (["--to-version", "0"], "--to-version=0: an embedding version is a whole number from 1 to 4294967295"),
    (["--to-version", "3"], "--to-version=3: version 3 of action was retired and cannot be written again"),
    (["--to-version", "4", "--embedder", "nope"], "--embedder='nope' is not a known embedder; choose one of"),
    (["--to-version", "4", "--model", "m"], "--model='m': only the openai embedder takes a model"),
    (["--to-version", "4", "--dimensions", "0"], "--dimensions=0: must be a whole number of at least 1"),
    (
        ["--to-version", "2", "--embedder", "hashing", "--dimensions", "64"],
        "version 2 of action is already registered with hashing, 128 dimensions, not hashing, 64 dimensions",
    ),
    (["--to-version", "4", "--embedder", "openai"], "OPENAI_API_KEY is not set"),
    (["--to-version", "9", "--promote"], "--to-version=9: version 9 of action was never registered"),
    (["--to-version", "3", "--promote"], "version 3 of action was retired; it cannot serve"),
    (["--to-version", "2", "--promote", "--dimensions", "64"], "--dimensions registers a version"),
    (["--to-version", "2", "--promote", "--max-recall-drop", "2"], "--max-recall-drop=2.0: must be a number"),
    (["--promote"], "--promote needs --to-version N"),
    (["--to-version", "4", "--force"], "--force needs --promote"),
    (["--retire", "1"], "--retire=1: version 1 is the one action search serves"),
    (["--retire", "9"], "--retire=9: version 9 of action was never registered"),
    (["--to-version", "2", "--retire", "2"], "--retire=2: cannot retire the version being migrated to"),
    (["--to-version", "2", "--promote", "--retire", "9"], "version 9 of action was never registered"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"), BAD_ARGUMENTS, ids=[" ".join(a) or "none" for a, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_are_refused_before_anything_is_written(
    synced: tuple[Team, list[Action]],
    embedded_store: EmbeddingStore,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings.OPENAI_API_KEY = None
    migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")
    ensure_version("action", 3, EmbedderSpec("hashing", "", 64), serve_if_none=False)
    retire("action", 3)
    before = _snapshot(embedded_store)

    with pytest.raises(CommandError) as refused:
        migrate("--domain", "action", *args)

    assert message in str(refused.value)
    assert _snapshot(embedded_store) == before


@pytest.mark.django_db
def test_an_unknown_domain_names_the_registered_ones(offline: None) -> None:
    with pytest.raises(CommandError, match=r"registered domains?: .*action"):
        migrate("--domain", "nope", "--to-version", "2")
    assert not DomainVersion.objects.exists()
