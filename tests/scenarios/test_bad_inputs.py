"""Bad input: a clear error before any side effect, or a correct result."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from app.entity_configs import EventDefinitionEntityConfig
from app.models import Action, EventDefinition
from entity_vectors import register_entity_config, search_entities
from entity_vectors.exceptions import InvalidInputsError, SearchError, UnknownDomainError
from entity_vectors.models import SyncRun, SyncRunBatch
from entity_vectors.providers.text import count_tokens
from entity_vectors.store import EmbeddingStore
from entity_vectors.tasks import sync_entities
from tests.conftest import run_workflow
from tests.factories import make_action, make_event_definition, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


def nothing_happened(store: EmbeddingStore, server: OpenAIServer | None = None) -> None:
    """No run recorded, no row written, no request sent, no entity touched."""
    assert SyncRun.objects.count() == 0
    assert SyncRunBatch.objects.count() == 0
    for domain in ("action", "cohort", "event_definition"):
        assert store.count_rows(domain) == 0
    if server is not None:
        assert server.requests == []
    assert not Action.objects.exclude(summary=None).exists()


class TestRejectedBeforeAnySideEffect:
    """The task validates its arguments before it records a run or reads anything."""

    def test_unknown_domain_lists_the_registered_ones(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        make_action(make_team())

        result = sync_entities.apply(args=("dashboards",))

        assert result.failed()
        assert isinstance(result.result, UnknownDomainError)
        assert "registered domains: action, cohort, event_definition" in str(result.result)
        nothing_happened(embedded_store, llm)

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            pytest.param({"summarize_batch_size": 0}, "summarize_batch_size", id="zero-summarize-batch"),
            pytest.param({"embed_batch_size": -1}, "embed_batch_size", id="negative-embed-batch"),
            pytest.param({"insert_batch_size": 0}, "insert_batch_size", id="zero-insert-batch"),
            pytest.param({"max_parallel_requests": -3}, "max_parallel_requests", id="negative-parallel"),
            pytest.param({"start_dt": "31/12/2025"}, "start_dt", id="unparseable-start"),
            pytest.param({"embedding_version": "two"}, "embedding_version", id="text-version"),
            pytest.param({"batch_size": 10}, "batch_size", id="unknown-field"),
        ],
    )
    def test_invalid_inputs_name_the_field(
        self, kwargs: dict[str, Any], field: str, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        make_action(make_team())

        result = sync_entities.apply(kwargs={"domain": "action", **kwargs})

        assert result.failed()
        assert isinstance(result.result, InvalidInputsError)
        assert result.result.field == field
        assert str(result.result).startswith(f"{field}=")
        nothing_happened(embedded_store, llm)

    def test_a_config_that_breaks_alignment_fails_its_batch_without_partial_writes(
        self, restore_registry: None, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        class DropsOne(EventDefinitionEntityConfig):
            @property
            def domain_name(self) -> str:
                return "broken_definition"

            async def batch_summarize(
                self, entities: list[Any], start_dt: str, properties: dict[str, Any]
            ) -> list[Any]:
                return ["only one summary"]

        register_entity_config(DropsOne())
        team = make_team()
        make_event_definition(team)
        make_event_definition(team)

        run = run_workflow("broken_definition")

        assert run.status == SyncRun.Status.FAILED
        assert "returned 1 results for 2 entities" in run.error
        assert not EventDefinition.objects.exclude(summary=None).exists()
        assert embedded_store.count_rows("broken_definition") == 0


class TestOneBadEntity:
    """An entity whose description cannot be rendered fails alone."""

    def test_describe_failure_is_counted_and_the_rest_proceed(
        self, restore_registry: None, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        class Fragile(EventDefinitionEntityConfig):
            @property
            def domain_name(self) -> str:
                return "fragile_definition"

            def describe(self, entity: Any) -> str:
                if entity.name == "bad":
                    raise KeyError("missing template field")
                return super().describe(entity)

        register_entity_config(Fragile())
        team = make_team()
        good = make_event_definition(team, name="good")
        bad = make_event_definition(team, name="bad")

        run = run_workflow("fragile_definition")

        assert run.status == SyncRun.Status.PARTIAL
        assert (run.summarized, run.summary_failures, run.inserted) == (1, 1, 1)
        assert f"{bad.pk}: describe() failed: KeyError" in run.error
        assert [row.id for row in embedded_store.latest_rows("fragile_definition")] == [str(good.pk)]
        assert len(llm.chat_requests()) == 1


class TestOddButValidEntities:
    """Huge, empty and non-Latin texts are handled, not crashed on."""

    def test_a_one_megabyte_description_is_summarized_from_a_truncated_input(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore, settings: Any
    ) -> None:
        team = make_team()
        action = make_action(
            team, name="Giant action", description="Tracks giant uploads. " + "x" * 1_000_000
        )

        run = run_workflow("action")

        assert run.status == SyncRun.Status.SUCCEEDED
        sent = llm.chat_requests()[0].body["messages"][1]["content"]
        assert sent.startswith('Action "Giant action".') and sent.endswith(" …")
        assert count_tokens(sent, "gpt-4.1-mini") <= 6000  # ENTITY_VECTORS_MAX_SUMMARY_INPUT_TOKENS
        action.refresh_from_db()
        assert action.summary and action.summary.startswith('Action "Giant action"')
        assert [hit.id for hit in search_entities("action", team.id, "giant uploads")] == [str(action.pk)]

    def test_empty_and_non_latin_names(self, llm: OpenAIServer, embedded_store: EmbeddingStore) -> None:
        team = make_team()
        unnamed = make_action(team, name="", description="", steps=[{"event": "$pageleave"}])
        japanese = make_event_definition(team, name="購入完了", description="ユーザーが購入を完了した")
        arabic = make_event_definition(team, name="تسجيل الدخول", description="")

        assert run_workflow("action").inserted == 1
        assert run_workflow("event_definition").inserted == 2

        unnamed.refresh_from_db()
        assert unnamed.summary == "Action (unnamed). It matches when event is `$pageleave`."
        assert search_entities("event_definition", team.id, "購入完了")[0].id == str(japanese.pk)
        assert search_entities("event_definition", team.id, "تسجيل الدخول")[0].id == str(arabic.pk)


class TestSearchArguments:
    """search_entities checks its arguments before it embeds anything."""

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            pytest.param({"query": "  "}, "query: must be a non-empty text", id="blank-query"),
            pytest.param({"limit": 0}, "limit=0: must be a whole number from 1 to 1000", id="zero-limit"),
            pytest.param({"team_id": "1"}, "team_id='1': must be an integer team id", id="text-team"),
            pytest.param({"embedding_version": 0}, "embedding_version=0", id="zero-version"),
        ],
    )
    def test_bad_search_arguments(self, kwargs: dict[str, Any], message: str, llm: OpenAIServer) -> None:
        arguments: dict[str, Any] = {"domain": "action", "team_id": 1, "query": "signups", **kwargs}
        with pytest.raises(SearchError, match=message):
            search_entities(**arguments)
        assert llm.requests == []

    def test_unknown_domain(self, llm: OpenAIServer) -> None:
        with pytest.raises(UnknownDomainError, match="registered domains"):
            search_entities("dashboard", 1, "anything")


def test_start_dt_in_the_past_is_accepted_as_iso(embedded_store: EmbeddingStore, offline: None) -> None:
    """A start_dt given as ISO 8601 is honoured (naive = UTC)."""
    team = make_team()
    make_action(team)
    run = run_workflow("action", start_dt="2020-01-01T00:00:00")
    assert run.start_dt == datetime.fromisoformat("2020-01-01T00:00:00+00:00")
    assert run.selected == 0
