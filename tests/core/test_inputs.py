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

    def test_defaults_are_the_seeds(self) -> None:
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
