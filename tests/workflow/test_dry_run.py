"""A dry run sends nothing, writes nothing, and says what the next run would do and cost."""

from __future__ import annotations

import pytest

from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from entity_vectors.workflow.dry_run import dry_run
from tests.conftest import run_command, run_workflow
from tests.factories import make_action, make_cohort, make_team
from tests.support.observe import database_state
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


class TestDryRun:
    """A dry run sends nothing, writes nothing, and says what the next run will do."""

    def test_nothing_sent_nothing_written_and_the_counts_match_the_run(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        team, other = make_team(), make_team()
        kept = make_cohort(team, name="Kept as is", count=10)
        recounted = make_cohort(team, name="Recounted", count=10)
        doomed = make_cohort(team, name="Soon deleted")
        run_workflow("cohort")
        make_cohort(team, name="Brand new")
        make_cohort(other, name="Another team's new one")
        recounted.count = 20
        recounted.save()
        doomed.deleted = True
        doomed.save()
        kept.save()  # touched, nothing changed
        llm.reset()
        before = database_state()
        rows = embedded_store.count_rows("cohort")

        report = dry_run(SyncEntityVectorsInputs(domain="cohort"))

        assert llm.requests == []
        assert database_state() == before and embedded_store.count_rows("cohort") == rows
        total = report.total()
        assert (total.summarize, total.embed_only, total.rewrite, total.tombstone, total.skip) == (
            2,
            0,
            1,
            1,
            1,
        )
        assert report.teams[other.id].summarize == 1
        assert report.prompt_tokens > 0 and report.cost_usd > 0
        run = run_workflow("cohort")
        assert run.summarized == total.summarize
        assert run.embedded == total.summarize + total.embed_only
        assert run.vectors_reused == total.rewrite
        assert run.tombstoned == total.tombstone
        assert run.skipped == total.skip

    def test_the_command_prints_the_plan_and_the_price(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        make_action(make_team(), name="Planned")

        out, _ = run_command("sync_entity_vectors", "--domain", "action", "--dry-run")

        assert "a run started now would look at 1 entities" in out and "summarize 1" in out
        assert "estimated cost up to $0.0000" in out  # offline providers cost nothing
        assert not SyncRun.objects.exists()
