"""`manage.py migrate_embeddings`: backfill a new embedding version beside the served one, promote it,
retire the old one, as a user sees it (search results, the ledger, the command's words)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management.base import CommandError
from django.db import connection

from app.demo_data import seed_demo
from app.models import Action, Team
from entity_vectors import search_entities
from entity_vectors.domain_versions import ensure_version, served_version
from entity_vectors.embedding_retirement import retire
from entity_vectors.exceptions import InvalidInputsError
from entity_vectors.models import DomainVersion, LedgerEntry, SyncRun
from entity_vectors.providers import EmbedderSpec
from entity_vectors.store import EmbeddingStore, StoredRow
from tests.conftest import run_command, run_workflow
from tests.factories import make_action, make_team

QUERY = "signed up for a paid plan"


def migrate(*args: str) -> str:
    """Run the command with command-line arguments; its stdout."""
    out, _ = run_command("migrate_embeddings", *args)
    return out


def dimensions(hits: list[Any]) -> set[int]:
    """The vector sizes the hits were written with (their provenance)."""
    return {int(hit.properties["_vectorized_by"]["dimensions"]) for hit in hits}


def rows_at(store: EmbeddingStore, version: int) -> dict[str, StoredRow]:
    """The latest row of every action key at one embedding version, by entity id."""
    return {row.id: row for row in store.latest_rows("action") if row.embedding_version == version}


@pytest.fixture
def synced(offline: None, embedded_store: EmbeddingStore) -> tuple[Team, list[Action]]:
    """A team with three actions, vectorized at version 1 (the hashing embedder, 256 dimensions)."""
    team = make_team()
    actions = [
        make_action(team, name="Signed up", description="A visitor created an account."),
        make_action(team, name="Upgraded to paid plan", description="Checkout for a subscription succeeded."),
        make_action(team, name="Uploaded a file", description="Any successful upload."),
    ]
    assert run_workflow("action").status == "succeeded"
    return team, actions


@pytest.fixture
def no_action_queries(settings: Any, tmp_path: Path) -> Path:
    """A labelled query set without action queries: the evaluation gate is skipped for actions."""
    path = tmp_path / "queries.json"
    entry = {"domain": "cohort", "team": "Nobody", "query": "q", "expected": ["x"], "kind": "exact"}
    path.write_text(json.dumps({"queries": [entry]}), encoding="utf-8")
    settings.ENTITY_VECTORS_EVAL_QUERIES = str(path)
    return path


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
        from entity_vectors.fastlane import run_fast_lane

        _, actions = synced
        # Version 2 is registered while its own run does not happen (another run held the domain).
        ensure_version("action", 2, EmbedderSpec("hashing", "", 128), serve_if_none=False)
        edited = Action.objects.get(pk=actions[0].pk)
        edited.name = "Signed up for the newsletter"
        edited.save()

        passed = run_fast_lane("action")

        assert passed["status"] == "finished" and passed["run_status"] == "succeeded"
        assert DomainVersion.objects.get(domain="action", embedding_version=2).backfilled_at is None
        out = migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")
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


@pytest.mark.django_db
class TestPromote:
    """--promote switches search only on full coverage and a passing evaluation gate, or --force."""

    def test_refused_below_full_coverage_then_forced(
        self, synced: tuple[Team, list[Action]], no_action_queries: Path
    ) -> None:
        team, _ = synced
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")
        make_action(team, name="Created after the backfill")  # no row at version 2 yet

        with pytest.raises(CommandError) as refused:
            migrate("--domain", "action", "--to-version", "2", "--promote")

        message = str(refused.value)
        assert "promotion of action version 2 refused" in message
        assert "1 of 4 live action entities have no confirmed row at version 2 (covered 3)" in message
        assert "--force promotes anyway" in message
        assert served_version("action") == 1
        assert dimensions(search_entities("action", team.id, QUERY)) == {256}

        out = migrate("--domain", "action", "--to-version", "2", "--promote", "--force")

        assert "action v2 coverage: 3/4 live entities (75.0%), 1 missing" in out
        assert "--force: promoting without the coverage and evaluation checks" in out
        assert "action: version 2 now serves search (was version 1)" in out
        assert served_version("action") == 2
        assert dimensions(search_entities("action", team.id, QUERY)) == {128}
        # The old version still answers when asked for by number, and is still written.
        assert dimensions(search_entities("action", team.id, QUERY, embedding_version=1)) == {256}
        states = dict(DomainVersion.objects.filter(domain="action").values_list("embedding_version", "state"))
        assert states == {1: "backfilling", 2: "serving"}
        assert DomainVersion.objects.get(domain="action", embedding_version=2).promoted_at is not None
        run = run_workflow("action", embedding_version=2)
        assert sorted(item["version"] for item in run.versions["write"]) == [1, 2]
        again = migrate("--domain", "action", "--to-version", "2", "--promote")
        assert "version 2 already serves search; nothing to promote" in again

    def test_full_coverage_promotes_with_the_gate_skipped_when_no_queries_label_the_domain(
        self, synced: tuple[Team, list[Action]], no_action_queries: Path
    ) -> None:
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")

        out = migrate("--domain", "action", "--to-version", "2", "--promote")

        assert "action v2 coverage: 3/3 live entities (100.0%)" in out
        assert "evaluation gate skipped: the labelled query set has no queries for action" in out
        assert "action: version 2 now serves search (was version 1)" in out
        assert served_version("action") == 2

    def test_a_labelled_set_that_does_not_match_the_data_refuses_unless_skipped(
        self, synced: tuple[Team, list[Action]]
    ) -> None:
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")

        with pytest.raises(
            CommandError, match="version 2 cannot be evaluated: the labelled queries do not match"
        ):
            migrate("--domain", "action", "--to-version", "2", "--promote")
        assert served_version("action") == 1

        out = migrate("--domain", "action", "--to-version", "2", "--promote", "--skip-evaluation")
        assert "evaluation gate skipped: --skip-evaluation was given" in out
        assert served_version("action") == 2

    def test_the_evaluation_gate_on_the_demo_data(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        seed_demo()
        assert run_workflow("action").status == "succeeded"
        # The same offline embedder at another size: recall holds, the promotion goes through.
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")

        out = migrate("--domain", "action", "--to-version", "2", "--promote")

        assert (
            "evaluation gate passed: recall@5 " in out and "at v2 vs " in out and "at v1 (56 labelled" in out
        )
        assert served_version("action") == 2

        # Four dimensions: vectors collide, recall drops, the gate refuses.
        migrate("--domain", "action", "--to-version", "3", "--embedder", "hashing", "--dimensions", "4")
        with pytest.raises(CommandError) as refused:
            migrate("--domain", "action", "--to-version", "3", "--promote")
        assert "promotion of action version 3 refused: evaluation gate failed: recall@5 " in str(
            refused.value
        )
        assert "at v3 vs " in str(refused.value) and "allowed drop 0.020" in str(refused.value)
        assert served_version("action") == 2
        # A generous tolerance lets it through; --force would too.
        out = migrate("--domain", "action", "--to-version", "3", "--promote", "--max-recall-drop", "0.5")
        assert "evaluation gate passed" in out and served_version("action") == 3


def _database_url() -> str:
    config = connection.settings_dict
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    return f"postgres://{config['USER']}{password}@{config['HOST']}:{config['PORT']}/{config['NAME']}"


SEARCHER = """
import json, sys
import django
django.setup()
from entity_vectors import search_entities
from entity_vectors.domain_versions import served_version
for line in sys.stdin:
    team, query = line.rstrip("\\n").split(" ", 1)
    hits = search_entities("action", int(team), query)
    sizes = sorted({hit.properties["_vectorized_by"]["dimensions"] for hit in hits})
    print(json.dumps({"served": served_version("action"), "dimensions": sizes}), flush=True)
"""


@pytest.fixture
def searcher(clickhouse_http_url: str) -> Iterator[subprocess.Popen[str]]:
    """Another process, started once, that searches the server store for each line it is sent."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": _database_url(),
        "CLICKHOUSE_URL": clickhouse_http_url,
        "ENTITY_VECTORS_EXECUTION": "distributed",
        "ENTITY_VECTORS_SUMMARIZER": "template",
        "ENTITY_VECTORS_EMBEDDER": "hashing",
        "ENTITY_VECTORS_EMBEDDING_DIMENSIONS": "256",
        "ENTITY_VECTORS_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", SEARCHER],
        cwd=str(django_settings.BASE_DIR),
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def ask(process: subprocess.Popen[str], team: Team) -> dict[str, Any]:
    """One search in the other process: the version it serves and the sizes of the vectors it found."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(f"{team.id} {QUERY}\n")
    process.stdin.flush()
    line = process.stdout.readline()
    assert line, "the searching process died"
    answer: dict[str, Any] = json.loads(line)
    return answer


@pytest.mark.django_db(transaction=True)
def test_a_promotion_is_seen_at_once_by_another_running_process(
    offline: None, use_server_store: EmbeddingStore, searcher: subprocess.Popen[str], no_action_queries: Path
) -> None:
    team = make_team()
    make_action(team, name="Signed up")
    make_action(team, name="Upgraded to paid plan")
    assert run_workflow("action").status == "succeeded"
    migrate(
        "--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128", "--inline"
    )

    assert ask(searcher, team) == {"served": 1, "dimensions": [256]}

    migrate("--domain", "action", "--to-version", "2", "--promote")

    # The same process, not restarted: its next search reads version 2.
    assert ask(searcher, team) == {"served": 2, "dimensions": [128]}


@pytest.mark.django_db
class TestRetire:
    """--retire M stops writing M and tombstones its rows; the served version cannot be retired."""

    def test_retiring_the_old_version_after_the_promotion(
        self, synced: tuple[Team, list[Action]], embedded_store: EmbeddingStore, no_action_queries: Path
    ) -> None:
        team, actions = synced
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")
        migrate("--domain", "action", "--to-version", "2", "--promote")

        with pytest.raises(CommandError, match="version 2 is the one action search serves"):
            migrate("--domain", "action", "--retire", "2")

        out = migrate("--domain", "action", "--retire", "1")

        assert "action: version 1 retired; runs no longer write it; tombstoned 3 rows of 3 entities" in out
        assert search_entities("action", team.id, QUERY, embedding_version=1) == []
        assert search_entities("action", team.id, QUERY, embedding_version=1, mode="text") == []
        assert all(row.is_deleted for row in rows_at(embedded_store, 1).values())
        assert not LedgerEntry.objects.filter(domain="action", embedding_version=1, is_live=True).exists()
        assert not LedgerEntry.objects.filter(domain="action", embedding_version=1, has_live=True).exists()
        assert DomainVersion.objects.get(domain="action", embedding_version=1).state == "retired"
        assert dimensions(search_entities("action", team.id, QUERY)) == {128}

        # The next run writes version 2 only; version 1 keeps its tombstones.
        edited = Action.objects.get(pk=actions[0].pk)
        edited.name = "Signed up for the beta"
        edited.save()
        run = run_workflow("action", embedding_version=served_version("action"))
        assert run.status == "succeeded"
        assert [item["version"] for item in run.versions["write"]] == [2]
        assert rows_at(embedded_store, 2)[str(edited.pk)].properties["name"] == "Signed up for the beta"
        assert rows_at(embedded_store, 1)[str(edited.pk)].is_deleted
        assert search_entities("action", team.id, QUERY, embedding_version=1) == []
        with pytest.raises(InvalidInputsError, match="version 1 of action was retired"):
            run_workflow("action", embedding_version=1)

        again = migrate("--domain", "action", "--retire", "1")
        assert "version 1 retired (it was already retired)" in again and "tombstoned 0 rows of 0" in again

    def test_promote_and_retire_in_one_command(
        self, synced: tuple[Team, list[Action]], no_action_queries: Path
    ) -> None:
        team, _ = synced
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")

        out = migrate("--domain", "action", "--to-version", "2", "--promote", "--retire", "1")

        assert "version 2 now serves search (was version 1)" in out and "version 1 retired" in out
        assert search_entities("action", team.id, QUERY, embedding_version=1) == []
        assert dimensions(search_entities("action", team.id, QUERY)) == {128}

    def test_retire_waits_for_a_run_that_still_writes_the_version(
        self, synced: tuple[Team, list[Action]]
    ) -> None:
        migrate("--domain", "action", "--to-version", "2", "--embedder", "hashing", "--dimensions", "128")
        holder = SyncRun.objects.create(
            domain="action",
            versions={"write": [{"version": 2}], "backfilling": []},
            start_dt="2024-01-01T00:00Z",
        )

        result = retire("action", 2, wait_seconds=0.2, poll_seconds=0.05)

        assert result.waiting_for == [str(holder.id)] and not result.complete
        assert DomainVersion.objects.get(domain="action", embedding_version=2).state == "retired"
        assert LedgerEntry.objects.filter(domain="action", embedding_version=2, is_live=True).count() == 3
        SyncRun.objects.filter(pk=holder.pk).update(status=SyncRun.Status.SUCCEEDED)
        done = retire("action", 2)
        assert done.complete and done.already_retired and done.tombstoned == 3


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
