"""A run's inputs: the seed's fields and defaults, validated before any work starts."""

from __future__ import annotations

from typing import Any

import pytest

from entity_vectors import (
    InvalidInputsError,
    SyncEntityVectorsInputs,
    UnknownDomainError,
)


class TestInputs:
    """SyncEntityVectorsInputs: the seed's fields and defaults, validated when built."""

    def test_defaults_are_the_seeds_with_a_remote_provider(self, settings: Any) -> None:
        settings.OPENAI_API_KEY = "sk-test"  # the openai summarizer and embedder by default

        inputs = SyncEntityVectorsInputs(domain="action")

        assert inputs.as_dict() == {
            "domain": "action",
            "start_dt": None,
            "summarize_batch_size": 96,
            "embed_batch_size": 96,
            "max_parallel_requests": 5,
            "insert_batch_size": 10000,
            "delay_between_batches": 60,
            "embedding_version": 1,
        }

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            pytest.param(
                "summarize_batch_size", 0, "summarize_batch_size=0: must be at least 1", id="zero-batch"
            ),
            pytest.param(
                "embed_batch_size", -5, "embed_batch_size=-5: must be at least 1", id="negative-embed"
            ),
            pytest.param(
                "embed_batch_size", 5000, "embed_batch_size=5000: must be at most 2048", id="embed-over-api"
            ),
            pytest.param(
                "max_parallel_requests", 0, "max_parallel_requests=0: must be at least 1", id="no-parallel"
            ),
            pytest.param(
                "insert_batch_size", "100", "insert_batch_size='100': must be a whole number", id="string"
            ),
            pytest.param(
                "insert_batch_size", True, "insert_batch_size=True: must be a whole number", id="bool"
            ),
            pytest.param(
                "embedding_version", 0, "embedding_version=0: must be at least 1", id="version-zero"
            ),
            pytest.param(
                "delay_between_batches",
                -1,
                "delay_between_batches=-1: must be between 0 and 86400",
                id="negative-delay",
            ),
            pytest.param(
                "start_dt", "yesterday", "start_dt='yesterday': not an ISO 8601 date-time", id="bad-date"
            ),
            pytest.param(
                "start_dt",
                "2999-01-01T00:00:00Z",
                "start_dt='2999-01-01T00:00:00Z': is in the future",
                id="future",
            ),
        ],
    )
    def test_an_invalid_field_names_the_field_and_value(self, field: str, value: Any, message: str) -> None:
        with pytest.raises(InvalidInputsError) as caught:
            SyncEntityVectorsInputs(domain="action", **{field: value})
        assert str(caught.value).startswith(message)
        assert caught.value.field == field
        assert isinstance(caught.value, ValueError)

    def test_unknown_domain_fails_when_built(self) -> None:
        with pytest.raises(UnknownDomainError, match="registered domains: action, cohort, event_definition"):
            SyncEntityVectorsInputs(domain="dashboards")

    def test_unknown_field_from_json_is_named(self) -> None:
        with pytest.raises(InvalidInputsError, match="batchsize=10: unknown field"):
            SyncEntityVectorsInputs.from_kwargs(domain="action", batchsize=10)

    def test_start_dt_accepts_iso_8601_with_or_without_zone(self) -> None:
        naive = SyncEntityVectorsInputs(domain="action", start_dt="2025-01-15T00:00:00")
        zoned = SyncEntityVectorsInputs(domain="action", start_dt="2025-01-15T01:00:00+01:00")
        assert naive.resolved_start_dt() == zoned.resolved_start_dt()
        assert naive.resolved_start_dt().isoformat() == "2025-01-15T00:00:00+00:00"


class TestDelayBetweenBatches:
    """The pause between two batches' starts fits the providers: none when nothing is sent anywhere."""

    @pytest.mark.parametrize(
        ("summarizer", "embedder", "delay"),
        [
            pytest.param("template", "hashing", 0, id="template-hashing"),
            pytest.param("template", "wordllama", 0, id="template-wordllama"),
            pytest.param("openai", "wordllama", 60, id="openai-summaries"),
            pytest.param("template", "openai", 60, id="openai-embeddings"),
            pytest.param("openai", "openai", 60, id="openai-both"),
        ],
    )
    def test_the_default_is_zero_only_when_both_providers_are_local(
        self, summarizer: str, embedder: str, delay: int, settings: Any
    ) -> None:
        settings.OPENAI_API_KEY = "sk-test"
        settings.ENTITY_VECTORS_SUMMARIZER = summarizer
        settings.ENTITY_VECTORS_EMBEDDER = embedder

        assert SyncEntityVectorsInputs(domain="action").delay_between_batches == delay

    def test_no_key_means_local_providers_and_no_delay(self, settings: Any) -> None:
        settings.OPENAI_API_KEY = ""

        assert SyncEntityVectorsInputs(domain="action").delay_between_batches == 0

    @pytest.mark.parametrize("summarizer", ["template", "openai"])
    def test_the_setting_wins_over_the_providers_default(self, summarizer: str, settings: Any) -> None:
        settings.OPENAI_API_KEY = "sk-test"
        settings.ENTITY_VECTORS_SUMMARIZER = summarizer
        settings.ENTITY_VECTORS_DELAY_BETWEEN_BATCHES = 15

        assert SyncEntityVectorsInputs(domain="action").delay_between_batches == 15

    @pytest.mark.parametrize(("given", "summarizer"), [(60, "template"), (0, "openai"), (2.5, "openai")])
    def test_a_given_delay_always_wins(self, given: float, summarizer: str, settings: Any) -> None:
        settings.OPENAI_API_KEY = "sk-test"
        settings.ENTITY_VECTORS_SUMMARIZER = summarizer
        settings.ENTITY_VECTORS_DELAY_BETWEEN_BATCHES = 15

        inputs = SyncEntityVectorsInputs.from_kwargs(domain="action", delay_between_batches=given)

        assert inputs.delay_between_batches == given
        assert inputs.as_dict()["delay_between_batches"] == given  # what the run records and sends
