"""Promoting a backfilled version: coverage and the evaluation gate, seen at once by every process."""

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
from entity_vectors.core.embedding_versions import served_version
from entity_vectors.models import DomainVersion
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_team
from tests.support.migrations import QUERY, dimensions, migrate


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
from entity_vectors.core.embedding_versions import served_version
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
