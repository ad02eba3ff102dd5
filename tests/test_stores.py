"""Both stores run the same SQL and must behave the same: each test runs on each store."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from entity_vectors.exceptions import EmbeddedStoreLocked
from entity_vectors.store import EmbeddingRow, EmbeddingStore, chunked, open_store

T0 = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)


def unit(*values: float) -> list[float]:
    """A normalised vector."""
    norm = sum(value * value for value in values) ** 0.5
    return [value / norm for value in values]


def float32(values: Sequence[float]) -> list[float]:
    """Values rounded to float32, as the Array(Float32) column holds them."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def row(
    entity_id: str,
    vector: list[float],
    team_id: int = 1,
    version: int = 1,
    timestamp: datetime = T0,
    text: str | None = None,
    deleted: int = 0,
    domain: str = "action",
) -> EmbeddingRow:
    """One row with sensible defaults."""
    return EmbeddingRow(
        domain=domain,
        team_id=team_id,
        id=entity_id,
        vector=[] if deleted else vector,
        text=text if text is not None else f"text of {entity_id}",
        properties=json.dumps({"name": f"name {entity_id}"}),
        embedding_version=version,
        timestamp=timestamp,
        is_deleted=deleted,
    )


class TestSchemaAndInserts:
    """The table is created idempotently; inserts land whole."""

    def test_schema_creation_is_idempotent(self, any_store: EmbeddingStore) -> None:
        any_store.ensure_schema()
        any_store.insert([row("1", unit(1, 0, 0))])
        any_store._schema_ready = False  # type: ignore[attr-defined]
        any_store.ensure_schema()
        assert any_store.count_rows("action") == 1

    def test_chunked_inserts_of_full_size_vectors_round_trip_as_float32(
        self, any_store: EmbeddingStore
    ) -> None:
        rng = random.Random(7)
        rows = [
            row(str(index), [rng.uniform(-1, 1) for _ in range(1536)], team_id=index % 3)
            for index in range(250)
        ]

        inserted = sum(any_store.insert(chunk) for chunk in chunked(rows, 100))

        assert inserted == 250
        assert any_store.count_rows("action") == 250
        stored = {stored.id: stored for stored in any_store.latest_rows("action")}
        for original in rows[:5]:
            assert float32(stored[original.id].vector) == float32(original.vector)
            assert stored[original.id].timestamp == T0

    def test_text_and_ids_with_quotes_and_non_latin_characters(self, any_store: EmbeddingStore) -> None:
        text = "O'Brien's \"funnel\" — 東京 \\ tab\tend"
        any_store.insert(
            [
                row("id-with-'quote'", unit(1, 1, 0), text=text),
                row("dated", unit(1, 0, 1), text="2025-01-15 12:00:00 launch"),
            ]
        )

        stored, dated = sorted(
            any_store.latest_rows("action"), key=lambda stored: stored.id != "id-with-'quote'"
        )
        assert stored.id == "id-with-'quote'"
        assert stored.text == text
        assert dated.text == "2025-01-15 12:00:00 launch"
        assert any_store.live_versions("action", ["id-with-'quote'"]) == [(1, "id-with-'quote'", 1)]


class TestLatestRowWins:
    """Reads take the latest row per key; the version is the row's timestamp, never insert order."""

    def test_newer_row_wins_even_if_inserted_first(self, any_store: EmbeddingStore) -> None:
        any_store.insert([row("1", unit(1, 0, 0), timestamp=T0 + timedelta(hours=1), text="new")])
        any_store.insert([row("1", unit(0, 1, 0), timestamp=T0, text="old, late retry")])

        (stored,) = any_store.latest_rows("action")
        assert stored.text == "new"
        (hit,) = any_store.search("action", 1, unit(1, 0, 0), 10, 1)
        assert hit.text == "new"
        assert hit.distance == pytest.approx(0.0, abs=1e-6)

    def test_tombstone_hides_the_entity_and_wins_a_tie(self, any_store: EmbeddingStore) -> None:
        any_store.insert([row("1", unit(1, 0, 0)), row("2", unit(1, 0, 0))])
        any_store.insert(
            [row("1", [], deleted=1), row("2", [], deleted=1, timestamp=T0 - timedelta(seconds=1))]
        )

        hits = any_store.search("action", 1, unit(1, 0, 0), 10, 1)

        assert [hit.id for hit in hits] == ["2"]
        assert any_store.live_versions("action", ["1", "2"]) == [(1, "2", 1)]
        assert sorted(key[1] for key in any_store.live_keys("action")) == ["2"]

    def test_a_repeated_insert_changes_nothing_a_reader_sees(self, any_store: EmbeddingStore) -> None:
        rows = [row(str(index), unit(index + 1, 1, 0)) for index in range(5)]
        any_store.insert(rows)
        before = any_store.search("action", 1, unit(1, 1, 0), 10, 1)

        any_store.insert(rows)

        assert any_store.search("action", 1, unit(1, 1, 0), 10, 1) == before
        assert len(any_store.latest_rows("action")) == 5


class TestSearch:
    """Nearest first, one team, one domain, one embedding version."""

    def test_nearest_first_with_limit(self, any_store: EmbeddingStore) -> None:
        any_store.insert(
            [
                row("far", unit(0, 0, 1)),
                row("near", unit(1, 0.1, 0)),
                row("middle", unit(1, 1, 0)),
                row("same", unit(1, 0, 0)),
            ]
        )

        hits = any_store.search("action", 1, unit(1, 0, 0), 3, 1)

        assert [hit.id for hit in hits] == ["same", "near", "middle"]
        assert hits[0].distance <= hits[1].distance <= hits[2].distance
        assert hits[0].properties == {"name": "name same"}

    def test_scoped_to_team_domain_and_version(self, any_store: EmbeddingStore) -> None:
        vector = unit(1, 0, 0)
        any_store.insert(
            [
                row("mine", vector, team_id=1),
                row("theirs", vector, team_id=2),
                row("cohort", vector, team_id=1, domain="cohort"),
                row("v2", vector, team_id=1, version=2),
            ]
        )

        assert [hit.id for hit in any_store.search("action", 1, vector, 10, 1)] == ["mine"]
        assert [hit.id for hit in any_store.search("action", 2, vector, 10, 1)] == ["theirs"]
        assert [hit.id for hit in any_store.search("cohort", 1, vector, 10, 1)] == ["cohort"]
        assert [hit.id for hit in any_store.search("action", 1, vector, 10, 2)] == ["v2"]
        assert any_store.search("action", 3, vector, 10, 1) == []

    def test_vectors_of_another_size_are_not_compared(self, any_store: EmbeddingStore) -> None:
        any_store.insert([row("three", unit(1, 0, 0))])

        assert any_store.search("action", 1, unit(1, 0), 10, 1) == []
        assert any_store.stored_embedders("action", 1, team_id=1) == [("", 3)]
        assert any_store.stored_embedders("action", 1, team_id=2) == []


class TestEmbeddedStoreIsSingleProcess:
    """chdb opens one directory per process: a second opener gets a clear error."""

    def test_opening_it_twice_in_one_process_is_refused(self, embedded_store: EmbeddingStore) -> None:
        from entity_vectors import conf

        with pytest.raises(EmbeddedStoreLocked, match="already open in this process"):
            open_store(conf.clickhouse_url(), "pg_embeddings")

    def test_a_second_process_gets_a_clear_error(self, embedded_store: EmbeddingStore) -> None:
        from entity_vectors import conf

        script = textwrap.dedent(
            f"""
            import django
            django.setup()
            from entity_vectors.store import open_store
            try:
                open_store({conf.clickhouse_url()!r}, "pg_embeddings")
            except Exception as exc:
                print(type(exc).__name__, exc)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        )
        assert result.stdout.startswith("EmbeddedStoreLocked"), result.stdout + result.stderr
        assert "in use by another process" in result.stdout
        assert "CLICKHOUSE_URL=http" in result.stdout
