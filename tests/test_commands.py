"""The management commands, as an operator runs them (on the embedded store: runs are in-process)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from app.models import Organization
from entity_vectors.models import SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_command
from tests.factories import make_action, make_cohort, make_event_definition, make_team
from tests.support.ports import DEAD_HOST_REQUESTS, closed_port

# The eager run executes in a thread with its own connection: the data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)


class TestSyncCommand:
    """sync_entity_vectors starts runs and, with --wait, shows progress and counts."""

    def test_wait_shows_progress_and_counts(self, offline: None, embedded_store: EmbeddingStore) -> None:
        team = make_team()
        for _ in range(5):
            make_action(team)

        out, err = run_command(
            "sync_entity_vectors",
            "--domain",
            "action",
            "--wait",
            "--summarize-batch-size",
            "2",
            "--delay-between-batches",
            "0",
        )

        assert "action: succeeded" in out
        assert (
            "selected 5, summarized 5 (reused 0, failed 0), embedded 5 (vectors reused 0, failed 0), inserted 5, tombstoned 0"
            in out
        )
        assert "3/3 batches" in out and err == ""  # progress is not an error
        assert embedded_store.count_rows("action") == 5

    def test_wait_exits_non_zero_when_nothing_landed_and_names_the_provider(
        self, llm: Any, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        make_action(make_team(), name="Never lands")
        settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens there
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 0
        settings.ENTITY_VECTORS_TASK_MAX_RETRIES = 0
        stdout = io.StringIO()

        with pytest.raises(CommandError, match=r"^run failed: action \(\w+, nothing landed\)$"):
            call_command("sync_entity_vectors", "--domain", "action", "--wait", stdout=stdout)

        assert "127.0.0.1:9" in stdout.getvalue()  # the error names where the provider was
        assert embedded_store.count_rows("action") == 0

    def test_wait_exits_zero_when_there_was_nothing_to_do(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        make_action(make_team())
        run_command("sync_entity_vectors", "--domain", "action", "--wait")

        out, _ = run_command("sync_entity_vectors", "--domain", "action", "--wait")

        assert "action: succeeded" in out and "selected 0" in out

    def test_all_runs_every_registered_domain(self, offline: None, embedded_store: EmbeddingStore) -> None:
        team = make_team()
        make_action(team)
        make_cohort(team)
        make_event_definition(team)

        out, _ = run_command("sync_entity_vectors", "--all", "--delay-between-batches", "0")

        for domain in ("action", "cohort", "event_definition"):
            assert f"{domain}: succeeded" in out
            assert embedded_store.count_rows(domain) == 1

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            pytest.param(
                ["--domain", "dashboards"],
                "unknown domain 'dashboards'; registered domains: action",
                id="unknown",
            ),
            pytest.param([], "give --domain NAME or --all", id="no-domain"),
            pytest.param(
                ["--all", "--summarize-batch-size", "0"],
                "summarize_batch_size=0: must be at least 1",
                id="zero",
            ),
            pytest.param(
                ["--domain", "action", "--start-dt", "soon"],
                "start_dt='soon': not an ISO 8601",
                id="bad-date",
            ),
            pytest.param(
                ["--domain", "action", "--embedding-version", "0"],
                "embedding_version=0: must be at least 1",
                id="version-zero",
            ),
        ],
    )
    def test_bad_arguments_fail_before_any_run(
        self, args: list[str], message: str, embedded_store: EmbeddingStore
    ) -> None:
        make_action(make_team())
        with pytest.raises(CommandError, match=message):
            run_command("sync_entity_vectors", *args)
        assert SyncRun.objects.count() == 0


class TestSyncCommandWaits:
    """--wait says when and why a run waits, and a provider nothing can reach ends it in one line."""

    def test_a_closed_provider_port_fails_in_one_line_naming_the_host(
        self, llm: Any, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        port = closed_port()
        settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
        team = make_team()
        for index in range(6):
            make_action(team, name=f"Step {index}")
        stdout = io.StringIO()

        with pytest.raises(CommandError) as raised:
            call_command("sync_entity_vectors", "--domain", "action", "--wait", stdout=stdout)

        message = str(raised.value)
        assert "\n" not in message
        assert message.startswith(
            f"action: the provider at 127.0.0.1:{port} is unreachable (connection refused) after "
        )
        assert f"check OPENAI_BASE_URL (http://127.0.0.1:{port}/v1)" in message
        assert message.endswith("its 6 entities not synced wait for the next run")
        assert stdout.getvalue().splitlines()[0].endswith("0/1 batches")  # the bar from the start
        run = SyncRun.objects.get()
        assert run.status == SyncRun.Status.FAILED and run.provider_requests <= DEAD_HOST_REQUESTS

    def test_local_providers_do_not_wait_between_batches(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        for _ in range(6):
            make_action(team)

        out, _ = run_command("sync_entity_vectors", "--domain", "action", "--wait", "--summarize-batch-size", "2")

        assert "action: succeeded" in out and "3/3 batches" in out
        assert "starts in" not in out
        assert SyncRun.objects.get().inputs["delay_between_batches"] == 0

    def test_a_delay_between_batches_is_shown_with_its_reason(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team()
        for _ in range(3):
            make_action(team)

        out, err = run_command(
            "sync_entity_vectors",
            "--domain",
            "action",
            "--wait",
            "--summarize-batch-size",
            "1",
            "--delay-between-batches",
            "1",
        )

        lines = out.splitlines()
        waits = [line.split(None, 1)[1] for line in lines if "starts in" in line]
        assert waits == [
            "batch 2/3 starts in 1 s: delay_between_batches",
            "batch 3/3 starts in 1 s: delay_between_batches",
        ]  # once per wait in a log, not once a second
        assert lines.index(next(line for line in lines if "batch 2/3 starts" in line)) < lines.index(
            next(line for line in lines if "2/3 batches" in line)
        )
        assert "action: succeeded" in out and err == ""

    def test_a_batch_retry_is_shown_with_its_reason(
        self, llm: Any, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 0
        settings.ENTITY_VECTORS_TASK_MAX_RETRIES = 1
        settings.ENTITY_VECTORS_TASK_RETRY_BACKOFF = 0.01
        make_action(make_team(), name="Lands on the second try")
        llm.fail_next(1, status=503, path="/chat/completions")

        out, _ = run_command("sync_entity_vectors", "--domain", "action", "--wait")

        (retry,) = [line for line in out.splitlines() if "is retried" in line]
        assert retry.split(None, 1)[1].startswith(
            "batch 1/1 is retried in 1 s (attempt 2 of 2) after ProviderUnavailable: chat completion at "
        )
        assert "action: succeeded" in out


class TestFollowingARun:
    """A run on the workers, followed with --wait: what it waits for, read from its batches."""

    def test_the_wait_for_the_next_batch_is_shown(self, offline: None, embedded_store: EmbeddingStore) -> None:
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.management.reporting import FollowingCommand
        from entity_vectors.providers.access import LocalAccess
        from entity_vectors.workflow import process_batch, start_run
        from entity_vectors.workflow.progress import run_wait

        team = make_team()
        for _ in range(3):
            make_action(team)
        inputs = SyncEntityVectorsInputs(domain="action", summarize_batch_size=1, delay_between_batches=30)
        started = start_run(inputs, task_id="followed", mode=SyncRun.Mode.DISTRIBUTED)
        assert run_wait(started.run) is None  # the first batch may start at once
        process_batch(started.context, 0, LocalAccess(1))  # a worker took it
        stdout = io.StringIO()
        command = FollowingCommand(stdout=stdout)

        with pytest.raises(CommandError, match="gave up waiting after 1s"):
            command.follow("action", "followed", timeout=1)

        waits = [line for line in stdout.getvalue().splitlines() if "starts in" in line]
        assert len(waits) == 1  # once, however many polls saw it
        assert waits[0].split(None, 1)[1] in {
            "batch 2/3 starts in 30 s: delay_between_batches",
            "batch 2/3 starts in 29 s: delay_between_batches",
        }

    def test_a_batch_waiting_for_its_retry_says_why(self, offline: None, embedded_store: EmbeddingStore) -> None:
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.models import SyncRunBatch
        from entity_vectors.workflow import start_run
        from entity_vectors.workflow.progress import run_wait

        make_action(make_team())
        started = start_run(
            SyncEntityVectorsInputs(domain="action", delay_between_batches=0), mode=SyncRun.Mode.DISTRIBUTED
        )
        SyncRunBatch.objects.filter(run=started.run).update(
            attempts=1, error="ProviderUnavailable: chat completion at http://llm/v1/: failed after 5 attempts"
        )

        wait = run_wait(started.run)

        assert wait is not None
        assert wait.describe() == (
            "batch 1/1 is retried after ProviderUnavailable: chat completion at http://llm/v1/: failed after 5 attempts"
        )


class TestProgressBar:
    """On a terminal the bar counts a wait down in place; in a log each wait is one line."""

    def test_on_a_terminal_the_wait_follows_the_bar_on_the_same_line(self) -> None:
        from entity_vectors.management.reporting import ProgressBar
        from entity_vectors.workflow.progress import DELAY, RunWait

        written: list[str] = []
        bar = ProgressBar(written.append, tty=True, label="action", width=4)

        bar.update(1, 0, 3)
        bar.waiting(RunWait(1, 3, DELAY, "delay_between_batches", seconds=47.2))
        bar.waiting(RunWait(1, 3, DELAY, "delay_between_batches", seconds=46.2))
        bar.update(2, 0, 3)
        bar.close()

        assert written == [
            "\raction             [#...] 1/3 batches",
            "\raction             [#...] 1/3 batches  batch 2/3 starts in 48 s: delay_between_batches",
            "\raction             [#...] 1/3 batches  batch 2/3 starts in 47 s: delay_between_batches",
            # The wait's text is blanked out.
            "\raction             [##..] 2/3 batches" + " " * len("  batch 2/3 starts in 47 s: delay_between_batches"),
            "\n",
        ]


    def test_a_run_with_nothing_to_do_shows_an_empty_bar(self) -> None:
        from entity_vectors.management.reporting import ProgressBar

        written: list[str] = []
        bar = ProgressBar(written.append, tty=False, label="action", width=4)

        bar.update(0, 0, 0)

        assert written == ["action             [....] nothing to do\n"]


class TestStatusCommand:
    """entity_vectors_status: pending entities, last runs, last errors."""

    def test_reports_pending_runs_and_errors(self, llm: Any, embedded_store: EmbeddingStore) -> None:
        team = make_team()
        make_action(team, name="Fine")
        make_action(team, name="Broken", description="POISON")
        llm.fail_when("POISON", status=400, path="/chat/completions")
        run_command("sync_entity_vectors", "--domain", "action", "--delay-between-batches", "0")
        make_action(team, name="New since")

        out, _ = run_command("entity_vectors_status", "--domain", "action")

        assert "action" in out
        assert "live entities 3, with a current vector 1 (coverage 33.3%); pending 2" in out
        assert "failing entities 1, parked 0" in out
        assert "partial" in out and "selected 2, summarized 1" in out and "failed 1" in out
        assert "last error" in out and "1 entities failed" in out and "400" in out


class TestSearchCommand:
    """search_entities prints a team's nearest entities."""

    def test_prints_hits(self, offline: None, embedded_store: EmbeddingStore) -> None:
        team = make_team()
        make_event_definition(team, name="invoice paid", description="Billing succeeded")
        make_event_definition(team, name="page viewed")
        run_command("sync_entity_vectors", "--domain", "event_definition")

        out, _ = run_command(
            "search_entities", "--domain", "event_definition", "--team", str(team.id), "billing", "invoice"
        )

        assert out.splitlines()[0].startswith("1. invoice paid (id ")
        assert "Billing succeeded" in out
        text, _ = run_command(
            "search_entities",
            "--domain",
            "event_definition",
            "--team",
            str(team.id),
            "--mode",
            "text",
            "invoice",
        )
        assert text.splitlines()[0].startswith("1. invoice paid (id ")
        with pytest.raises(CommandError, match="mode"):
            run_command(
                "search_entities",
                "--domain",
                "event_definition",
                "--team",
                str(team.id),
                "--mode",
                "fuzzy",
                "x",
            )

    def test_reports_bad_arguments(self, offline: None) -> None:
        with pytest.raises(CommandError, match="limit=0"):
            run_command("search_entities", "--domain", "action", "--team", "1", "--limit", "0", "x")


class TestDemoCommand:
    """The README's main job: seed, vectorize every domain, search."""

    def test_demo_vectorizes_everything_and_searches(
        self, offline: None, embedded_store: EmbeddingStore
    ) -> None:
        out, _ = run_command("demo")

        assert out.count(": succeeded") == 3
        assert "[action] 'users who signed up' in team 'Hedgebox Web':\n    1. Signed up" in out
        assert "refused: its organization has not approved AI data processing" in out
        assert Organization.objects.filter(is_ai_data_processing_approved=False).exists()
        out_again, _ = run_command("demo")
        assert out_again.count("selected 0, summarized 0") == 3  # nothing changed: nothing to do
