"""Provider faults, one table: healthy entities land, faulty ones stay eligible, nothing misaligned.

Each case breaks the OpenAI-compatible server in one way (through the real SDK), runs the action
domain, and checks what a user would see: which rows reached ClickHouse, that every row's vector
is the one its own text gets (no entity ever carries another's vector), and that once the fault
clears the next run lands what was left, paying again only for what failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from app.models import Action
from entity_vectors.models import EntityFailure, LedgerEntry, SyncRun
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_team
from tests.support.openai_content import embed_text
from tests.support.openai_server import OpenAIServer
from tests.support.ports import DEAD_HOST_REQUESTS, closed_port

pytestmark = pytest.mark.django_db
POISON = "POISON-MARKER"


@dataclass(frozen=True)
class Fault:
    """One way of breaking the server, and what the first run should show."""

    inject: Callable[[OpenAIServer, Any], None]
    # How many of the three healthy entities land in the first run, and whether the faulty one does.
    healthy_land: int = 3
    faulty_lands: bool = False
    summary_contains: str | None = None
    # Texts per embedding request: 1 isolates each entity; 2 puts the faulty one with a neighbour.
    embed_batch_size: int = 1
    # Whether the faulty entity's failure is its own (a refused or malformed result of its own),
    # which counts toward parking it; a provider's or the setup's fault never does.
    its_own: bool = False


FAULTS = [
    pytest.param(
        Fault(lambda server, settings: server.fail_next(3, status=429, retry_after=0.01), faulty_lands=True),
        id="429-storm-with-retry-after",
    ),
    pytest.param(
        Fault(lambda server, settings: server.fail_when(POISON, status=500, path="/chat/completions")),
        id="persistent-5xx-on-one-summary",
    ),
    pytest.param(
        Fault(
            lambda server, settings: server.fail_next(1, status=503, path="/embeddings"), faulty_lands=True
        ),
        id="intermittent-5xx-on-embeddings",
    ),
    pytest.param(
        Fault(
            lambda server, settings: server.hang_next(1, seconds=2.0, path="/chat/completions"),
            faulty_lands=True,
        ),
        id="one-request-times-out",
    ),
    pytest.param(
        Fault(lambda server, settings: server.reply_when(POISON, content=""), its_own=True), id="empty-reply"
    ),
    pytest.param(
        Fault(
            lambda server, settings: server.reply_when(POISON, content="A sum\x00mary\x07 of it"),
            faulty_lands=True,
            summary_contains="A summary of it",
        ),
        id="nul-and-control-characters-in-a-reply",
    ),
    pytest.param(
        Fault(
            lambda server, settings: server.corrupt_embeddings("missing", count=None, substring=POISON),
            its_own=True,
        ),
        id="too-few-vectors",
    ),
    pytest.param(
        Fault(
            lambda server, settings: server.corrupt_embeddings("extra", count=None, substring=POISON),
            its_own=True,
        ),
        id="too-many-vectors",
    ),
    pytest.param(
        Fault(
            lambda server, settings: server.corrupt_embeddings(
                "wrong_dimension", count=None, substring=POISON
            ),
            its_own=True,
        ),
        id="vectors-of-another-dimension",
    ),
    pytest.param(
        # Indexes that cannot be matched fail the whole request: the neighbour waits too.
        Fault(
            lambda server, settings: server.corrupt_embeddings("bad_index", count=None, substring=POISON),
            healthy_land=2,
            embed_batch_size=2,
            its_own=True,
        ),
        id="wrong-indexes",
    ),
    pytest.param(
        Fault(
            lambda server, settings: server.corrupt_embeddings("shuffled", count=None, substring=POISON),
            faulty_lands=True,
            embed_batch_size=2,
        ),
        id="vectors-in-another-order",
    ),
    pytest.param(
        Fault(
            lambda server, settings: server.corrupt_embeddings("nan", count=None, substring=POISON),
            its_own=True,
        ),
        id="not-a-number-in-a-vector",
    ),
    pytest.param(
        Fault(
            lambda server, settings: server.fail_when(POISON, status=400, path="/embeddings"), its_own=True
        ),
        id="400-on-one-input",
    ),
    pytest.param(
        Fault(
            lambda server, settings: setattr(settings, "OPENAI_API_KEY", "wrong-key"),
            healthy_land=0,
        ),
        id="authentication-error",
    ),
]


def aligned(store: EmbeddingStore) -> dict[str, str]:
    """Live rows by id -> text, after checking each row's vector is its own text's."""
    rows = {}
    for row in store.latest_rows("action"):
        if row.is_deleted:
            continue
        expected = np.asarray(embed_text(row.text, 256), dtype=np.float32)
        assert np.allclose(row.vector, expected, atol=1e-6), f"row {row.id} carries another text's vector"
        rows[row.id] = row.text
    return rows


class TestProviderFaults:
    """Every fault is contained to what it hits, and nothing it hits is lost."""

    @pytest.mark.parametrize("fault", FAULTS)
    def test_a_fault_is_contained_and_nothing_is_lost(
        self, fault: Fault, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PROVIDER_TIMEOUT = 0.5
        settings.ENTITY_VECTORS_TASK_MAX_RETRIES = 1
        settings.ENTITY_VECTORS_TASK_RETRY_BACKOFF = 0.01
        team = make_team()
        healthy = [
            make_action(team, name=f"Healthy step {index}", description=f"step number {index}")
            for index in range(3)
        ]
        faulty = make_action(team, name="Faulty step", description=f"carries the {POISON}")
        good_settings = (settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL)
        fault.inject(llm, settings)

        run_workflow("action", embed_batch_size=fault.embed_batch_size, summarize_batch_size=10)

        landed = aligned(embedded_store)
        assert sum(str(action.pk) in landed for action in healthy) == fault.healthy_land
        assert (str(faulty.pk) in landed) == fault.faulty_lands
        if fault.summary_contains:
            assert fault.summary_contains in landed[str(faulty.pk)]
            assert "\x00" not in (Action.objects.get(pk=faulty.pk).summary or "")
        live = set(LedgerEntry.objects.filter(is_live=True).values_list("entity_id", flat=True))
        assert live == set(landed)  # the ledger says what ClickHouse holds, no more
        counted = set(EntityFailure.objects.values_list("entity_id", flat=True))
        assert (str(faulty.pk) in counted) == fault.its_own  # only an entity's own failure counts
        assert not counted & {str(action.pk) for action in healthy} or fault.its_own

        llm.reset()
        settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = good_settings
        retry = run_workflow("action", embed_batch_size=1)

        assert retry.status == SyncRun.Status.SUCCEEDED, retry.error
        assert set(aligned(embedded_store)) == {str(action.pk) for action in [*healthy, faulty]}
        assert len(llm.chat_requests()) <= 4 - len(landed)  # what landed is not paid again


class TestInfrastructureFaults:
    """A service failing under a batch is never the entities' fault: nothing is counted toward parking."""

    def test_a_limiter_redis_outage_retries_the_batch_and_parks_nothing(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors import workflow
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.exceptions import TransientError
        from entity_vectors.models import EntityFailure, SyncRunBatch
        from entity_vectors.providers.access import access_for
        from tests.support.processes import RedisServer

        limiter = RedisServer().start()
        settings.ENTITY_VECTORS_LIMITER_URL = limiter.url
        settings.ENTITY_VECTORS_PARK_AFTER = 1
        team = make_team()
        actions = [make_action(team, name=f"Step {index}") for index in range(3)]
        started = workflow.start_run(
            SyncEntityVectorsInputs(domain="action", delay_between_batches=0), mode=SyncRun.Mode.DISTRIBUTED
        )
        context = started.context
        access = access_for(SyncRun.Mode.DISTRIBUTED, context.run_id, 5)
        limiter.stop()  # the limiter's Redis goes down while the run is under way
        try:
            with pytest.raises(TransientError, match="ConnectionError"):
                workflow.process_batch(context, 0, access)

            assert not EntityFailure.objects.exists()  # nobody's fault: nothing counted, nothing parked
            assert llm.requests == []  # nothing was sent without the limiter
            assert SyncRunBatch.objects.get(run_id=context.run_id, index=0).status == "pending"
            limiter.start()  # back: the batch's retry lands everything
            outcome = workflow.process_batch(context, 0, access)
        finally:
            limiter.stop()
        assert outcome is not None and outcome.failures == 0
        run = workflow.finish_run(context.run_id)
        assert run is not None and run.status == SyncRun.Status.SUCCEEDED, run and run.error
        assert set(aligned(embedded_store)) == {str(action.pk) for action in actions}
        assert not EntityFailure.objects.exists()


class TestAnswersThatCannotBe:
    """An answer the provider should never send is checked like the rest of it."""

    def test_negative_token_counts_fail_the_batch_with_a_clear_error_and_park_nothing(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors.models import EntityFailure

        settings.ENTITY_VECTORS_PARK_AFTER = 1
        team = make_team()
        make_action(team, name="Healthy step")
        faulty = make_action(team, name="Faulty step", description=f"carries the {POISON}")
        llm.reply_when(POISON, content="A summary.", usage={"prompt_tokens": -5})

        run = run_workflow("action")

        assert run.status == SyncRun.Status.FAILED  # closed, not left running
        assert "reported prompt_tokens=-5" in run.error
        assert run.prompt_tokens >= 0 and run.completion_tokens >= 0
        assert not EntityFailure.objects.exists()  # the provider's fault, not the entities'
        llm.reset()
        retry = run_workflow("action")
        assert retry.status == SyncRun.Status.SUCCEEDED, retry.error
        assert str(faulty.pk) in aligned(embedded_store)

    def test_a_runaway_reply_is_cut_to_the_summary_bound(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        from entity_vectors.providers.text import MAX_SUMMARY_TOKENS, count_tokens

        team = make_team()
        action = make_action(team, name="Chatty step", description=f"carries the {POISON}")
        llm.reply_when(POISON, content="A summary that goes on. " * 850_000)  # 20 MB

        run = run_workflow("action")

        assert run.status == SyncRun.Status.SUCCEEDED, run.error
        stored = Action.objects.get(pk=action.pk).summary or ""
        assert stored.startswith("A summary that goes on.") and stored.endswith("…")
        assert count_tokens(stored, "gpt-4.1-mini") <= MAX_SUMMARY_TOKENS
        assert aligned(embedded_store)[str(action.pk)] == stored  # the row's text is the cut summary


class TestUnreachableProvider:
    """A provider nothing can connect to stops the run in seconds: nothing lost, nothing blamed."""

    def test_a_closed_port_stops_the_run_and_leaves_every_entity_pending(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors.exceptions import ProviderUnreachable
        from entity_vectors.models import SyncRunBatch

        port = closed_port()
        good_url = settings.OPENAI_BASE_URL
        settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 4  # the defaults: 5 attempts a request, 6 a batch
        settings.ENTITY_VECTORS_TASK_MAX_RETRIES = 5
        settings.ENTITY_VECTORS_PARK_AFTER = 1
        team = make_team()
        actions = [make_action(team, name=f"Step {index}") for index in range(12)]

        with pytest.raises(ProviderUnreachable) as raised:
            run_workflow("action", summarize_batch_size=4)

        assert str(raised.value).startswith(
            f"the provider at 127.0.0.1:{port} is unreachable (connection refused) after "
        )
        assert str(raised.value).endswith("the run stopped, and its 12 entities not synced wait for the next run")
        assert "\n" not in str(raised.value)
        run = SyncRun.objects.get()
        assert run.status == SyncRun.Status.FAILED
        assert run.error.splitlines()[0] == str(raised.value)
        assert run.provider_requests <= DEAD_HOST_REQUESTS  # not 12 entities x 5 attempts x 6 batch attempts
        batches = SyncRunBatch.objects.filter(run=run)
        assert {batch.status for batch in batches} == {SyncRunBatch.Status.PENDING}  # none blamed
        assert not EntityFailure.objects.exists()  # nothing counted toward parking
        assert not LedgerEntry.objects.exists() and embedded_store.count_rows("action") == 0

        settings.OPENAI_BASE_URL = good_url
        retry = run_workflow("action", summarize_batch_size=4)

        assert retry.status == SyncRun.Status.SUCCEEDED, retry.error
        assert set(aligned(embedded_store)) == {str(action.pk) for action in actions}

    def test_a_provider_lost_mid_run_keeps_what_landed_and_leaves_the_rest_pending(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors import workflow
        from entity_vectors.core.inputs import SyncEntityVectorsInputs
        from entity_vectors.exceptions import ProviderUnreachable

        server = OpenAIServer(api_key=settings.OPENAI_API_KEY).start()
        settings.OPENAI_BASE_URL = server.base_url
        team = make_team()
        actions = [make_action(team, name=f"Step {index}") for index in range(6)]

        def lose_the_provider(run: SyncRun) -> None:
            if run.batches_done == 1:
                server.stop()  # after the first batch: every connection is refused from now on

        try:
            with pytest.raises(ProviderUnreachable, match="its 4 entities not synced wait"):
                workflow.run_inline(
                    SyncEntityVectorsInputs(domain="action", summarize_batch_size=2, delay_between_batches=0),
                    on_batch=lose_the_provider,
                )
        finally:
            server.stop()

        run = SyncRun.objects.get()
        assert run.status == SyncRun.Status.PARTIAL  # the first batch's rows landed
        assert run.inserted == 2 and len(aligned(embedded_store)) == 2
        assert not EntityFailure.objects.exists()

        settings.OPENAI_BASE_URL = llm.base_url
        retry = run_workflow("action")

        assert retry.status == SyncRun.Status.SUCCEEDED, retry.error
        assert retry.inserted == 4  # only what was left
        assert set(aligned(embedded_store)) == {str(action.pk) for action in actions}

    def test_5xx_everywhere_keeps_every_retry_and_parks_nothing(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PROVIDER_MAX_RETRIES = 2
        settings.ENTITY_VECTORS_TASK_MAX_RETRIES = 2
        settings.ENTITY_VECTORS_TASK_RETRY_BACKOFF = 0.01
        settings.ENTITY_VECTORS_PROVIDER_UNREACHABLE_AFTER = 1
        team = make_team()
        for index in range(2):
            make_action(team, name=f"Step {index}")
        llm.fail_when("", status=503)  # a server that is there, and failing

        run = run_workflow("action")  # not stopped early: the batch fails after all its retries

        assert run.status == SyncRun.Status.FAILED
        assert "ProviderUnavailable" in run.error and "unreachable" not in run.error
        assert run.provider_requests == 2 * 3 * 3  # 2 entities x 3 attempts x 3 batch attempts
        assert len(llm.chat_requests()) == 18
        assert not EntityFailure.objects.exists()

    def test_a_fast_lane_pass_closes_its_run_and_leaves_the_changes_for_the_next(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        from entity_vectors.workflow.fast_lane import run_fast_lane

        good_url = settings.OPENAI_BASE_URL
        settings.OPENAI_BASE_URL = f"http://127.0.0.1:{closed_port()}/v1"
        team = make_team()
        actions = [make_action(team, name=f"Edited now {index}") for index in range(3)]

        result = run_fast_lane("action")  # returns: a pass is not retried in place

        assert result.run_status == SyncRun.Status.FAILED
        assert "unreachable (connection refused)" in SyncRun.objects.get(pk=result.run_id).error
        assert SyncRun.objects.get(pk=result.run_id).provider_requests <= DEAD_HOST_REQUESTS
        settings.OPENAI_BASE_URL = good_url
        again = run_fast_lane("action")
        assert again.run_status == SyncRun.Status.SUCCEEDED
        assert set(aligned(embedded_store)) == {str(action.pk) for action in actions}
