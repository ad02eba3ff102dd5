"""Both stores run the same SQL and must behave the same: each test runs on each store."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from entity_vectors.exceptions import EmbeddedStoreLocked
from entity_vectors.store import EmbeddingRow, EmbeddingStore, chunked, open_store
from entity_vectors.store.base import SqlEmbeddingStore
from entity_vectors.store.embedded import EmbeddedStore
from tests.support.processes import ROOT
from tests.support.store_rows import T0, row, unit


def float32(values: Sequence[float]) -> list[float]:
    """Values rounded to float32, as the Array(Float32) column holds them."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


@contextlib.contextmanager
def merges_stopped(store: EmbeddingStore) -> Iterator[None]:
    """No background merge of the store's table in the block: reads see every physical row."""
    store._command(f"SYSTEM STOP MERGES {store.table}")  # type: ignore[attr-defined]
    try:
        yield
    finally:
        store._command(f"SYSTEM START MERGES {store.table}")  # type: ignore[attr-defined]


def ids(hits: Sequence[object]) -> list[str]:
    """The ids of search hits, in rank order."""
    return [hit.id for hit in hits]  # type: ignore[attr-defined]


class TestSchemaAndInserts:
    """The table is created idempotently; inserts land whole, lists and float32 arrays alike."""

    def test_schema_creation_is_idempotent(self, any_store: EmbeddingStore) -> None:
        assert any_store.ensure_schema() == 0  # nothing migrated
        any_store.insert([row("1", unit(1, 0, 0))])
        any_store._schema_ready = False  # type: ignore[attr-defined]

        assert any_store.ensure_schema() == 0
        assert any_store.count_rows("action") == 1

    def test_chunked_inserts_of_full_size_vectors_round_trip_as_float32(
        self, any_store: EmbeddingStore
    ) -> None:
        rng = np.random.default_rng(7)
        moment = T0 + timedelta(microseconds=123_457)
        rows = [
            row(
                str(index),
                # Half as numpy float32 arrays (what the embedders return), half as Python lists.
                rng.uniform(-1, 1, 1536).astype(np.float32)
                if index % 2
                else rng.uniform(-1, 1, 1536).tolist(),
                team_id=index % 3,
                version=1_000_000 + index,
                timestamp=moment,
            )
            for index in range(250)
        ]

        inserted = sum(any_store.insert(chunk) for chunk in chunked(rows, 100))

        assert inserted == 250
        assert any_store.count_rows("action") == 250
        stored = {stored.id: stored for stored in any_store.latest_rows("action")}
        for original in rows[:6]:
            assert float32(stored[original.id].vector) == float32(list(original.vector))
            assert stored[original.id].timestamp == moment
            assert stored[original.id].version == original.version
            assert stored[original.id].team_id == original.team_id

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
        assert list(any_store.vectors("action", [(1, "id-with-'quote'", 1)])) == [(1, "id-with-'quote'", 1)]
        assert any_store.live_keys_page("action", None, 10) == [(1, "dated", 1), (1, "id-with-'quote'", 1)]

    def test_the_table_has_granules_of_at_most_one_mebibyte(self, any_store: EmbeddingStore) -> None:
        # A merge holds a granule of each part it reads: 10 MiB ones cost ~300 MB per merge of
        # five 10,000-vector parts of 1536 dims; ClickHouse takes the setting only at creation.
        (engine,) = any_store._query(  # type: ignore[attr-defined]
            "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {table:String}",
            {"table": any_store.table},
        )[0]
        assert "index_granularity_bytes = 1048576" in engine

    def test_an_empty_insert_is_a_no_op(self, any_store: EmbeddingStore) -> None:
        assert any_store.insert([]) == 0
        assert any_store.count_rows("action") == 0


class TestLatestRowWins:
    """Reads take the row with the highest `version` per key: never insert order, never the timestamp."""

    def test_newer_version_wins_even_if_inserted_first(self, any_store: EmbeddingStore) -> None:
        # The timestamp is informational only: the late retry even carries a later one.
        any_store.insert([row("1", unit(1, 0, 0), version=2, timestamp=T0, text="new")])
        any_store.insert(
            [row("1", unit(0, 1, 0), version=1, timestamp=T0 + timedelta(hours=1), text="old, late retry")]
        )

        (stored,) = any_store.latest_rows("action")
        assert (stored.text, stored.version) == ("new", 2)
        (hit,) = any_store.search("action", 1, unit(1, 0, 0), 10, 1)
        assert hit.text == "new"
        assert hit.distance == pytest.approx(0.0, abs=1e-6)
        vector, version = any_store.vectors("action", [(1, "1", 1)])[(1, "1", 1)]
        np.testing.assert_array_equal(vector, np.asarray(unit(1, 0, 0), np.float32))
        assert version == 2

    def test_a_newer_tombstone_hides_the_entity_before_any_merge(self, any_store: EmbeddingStore) -> None:
        with merges_stopped(any_store):
            any_store.insert([row("1", unit(1, 0, 0), version=5), row("2", unit(1, 0, 0), version=5)])
            any_store.insert([row("1", [], version=6, deleted=1), row("2", [], version=4, deleted=1)])

            assert any_store.count_rows("action") == 4  # both rows of each key are still there
            assert ids(any_store.search("action", 1, unit(1, 0, 0), 10, 1)) == ["2"]
            assert ids(any_store.text_search("action", 1, "name", 10, 1)) == ["2"]
            assert ids(any_store.hybrid_search("action", 1, unit(1, 0, 0), "name", 10, 1)) == ["2"]
            assert list(any_store.vectors("action", [(1, "1", 1), (1, "2", 1)])) == [(1, "2", 1)]
            assert any_store.live_keys_page("action", None, 10) == [(1, "2", 1)]
            latest = {
                stored.id: (stored.version, stored.is_deleted) for stored in any_store.latest_rows("action")
            }
            assert latest == {"1": (6, True), "2": (5, False)}  # an older tombstone hides nothing

    def test_a_live_row_with_a_higher_version_brings_a_deleted_entity_back(
        self, any_store: EmbeddingStore
    ) -> None:
        any_store.insert([row("1", unit(1, 0, 0), version=1)])
        any_store.insert([row("1", [], version=2, deleted=1)])
        any_store.insert([row("1", unit(0, 1, 0), version=3, text="restored")])

        (hit,) = any_store.search("action", 1, unit(0, 1, 0), 10, 1)
        assert hit.text == "restored"

    def test_a_repeated_insert_leaves_one_latest_row_per_key(self, any_store: EmbeddingStore) -> None:
        rows = [row(str(index), unit(index + 1, 1, 0), version=10 + index) for index in range(5)]
        any_store.insert(rows)
        keys = [(1, str(index), 1) for index in range(5)]
        before = (any_store.latest_rows("action"), any_store.live_keys_page("action", None, 10))
        vectors_before = any_store.vectors("action", keys)

        with merges_stopped(any_store):
            any_store.insert(rows)  # a retried flush writes the very same rows again

            assert any_store.count_rows("action") == 10
            assert (any_store.latest_rows("action"), any_store.live_keys_page("action", None, 10)) == before
            vectors_after = any_store.vectors("action", keys)
        assert sorted(vectors_after) == sorted(vectors_before) == keys
        for key in keys:
            np.testing.assert_array_equal(vectors_after[key][0], vectors_before[key][0])
            assert vectors_after[key][1] == vectors_before[key][1]

    def test_a_repeated_insert_changes_no_search_result(self, any_store: EmbeddingStore) -> None:
        rows = [row(str(index), unit(index + 1, 1, 0), version=10 + index) for index in range(5)]
        any_store.insert(rows)
        query = unit(1, 1, 0)

        def results() -> list[list[str]]:
            return [
                ids(any_store.search("action", 1, query, 10, 1)),
                ids(any_store.text_search("action", 1, "name 3", 10, 1)),
                ids(any_store.hybrid_search("action", 1, query, "name 3", 10, 1)),
            ]

        before = results()
        with merges_stopped(any_store):
            any_store.insert(rows)  # a retried flush writes the very same rows again
            after = results()

        assert [len(found) for found in before] == [5, 5, 5]
        assert after == before


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

        assert ids(hits) == ["same", "near", "middle"]
        assert hits[0].distance <= hits[1].distance <= hits[2].distance
        assert hits[0].properties == {"name": "name same"}

    def test_scoped_to_team_domain_and_version(self, any_store: EmbeddingStore) -> None:
        vector = unit(1, 0, 0)
        any_store.insert(
            [
                row("mine", vector, team_id=1),
                row("theirs", vector, team_id=2),
                row("cohort", vector, team_id=1, domain="cohort"),
                row("v2", vector, team_id=1, embedding_version=2),
            ]
        )

        assert ids(any_store.search("action", 1, vector, 10, 1)) == ["mine"]
        assert ids(any_store.search("action", 2, vector, 10, 1)) == ["theirs"]
        assert ids(any_store.search("cohort", 1, vector, 10, 1)) == ["cohort"]
        assert ids(any_store.search("action", 1, vector, 10, 2)) == ["v2"]
        assert any_store.search("action", 3, vector, 10, 1) == []

    def test_vectors_of_another_size_are_not_compared(self, any_store: EmbeddingStore) -> None:
        any_store.insert([row("three", unit(1, 0, 0))])

        assert any_store.search("action", 1, unit(1, 0), 10, 1) == []
        assert ids(any_store.search("action", 1, unit(1, 0, 0), 10, 1)) == ["three"]


# Rows of one team whose names and texts the text searches look into.
CATALOGUE = [
    ("signup", "User signed up", "Counts users who complete the registration form"),
    ("pageview", "$pageview", "Any page viewed in the web app"),
    ("invoice", "Invoice paid", "Billing event sent when a customer settles an invoice"),
    ("churn", "Churned customers", "Cohort of customers who cancelled their plan"),
]


def catalogue_rows(team_id: int = 1, vectors: dict[str, list[float]] | None = None) -> list[EmbeddingRow]:
    """The CATALOGUE as rows of `team_id` (vectors: one axis each unless given)."""
    rows = []
    for axis, (entity_id, name, text) in enumerate(CATALOGUE):
        basis = [0.0] * len(CATALOGUE)
        basis[axis] = 1.0
        vector = (vectors or {}).get(entity_id, basis)
        rows.append(row(entity_id, vector, team_id=team_id, name=name, text=text))
    return rows


class TestTextSearch:
    """Live rows ranked by BM25 over the words of their name and text (prefixes, stems and
    misspellings included); no match, no row."""

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            pytest.param("invoic", "invoice", id="partial-name"),
            pytest.param("PAGEVIEW", "pageview", id="other-case"),
            pytest.param("pagevew", "pageview", id="misspelled"),
            pytest.param("registration", "signup", id="word-of-the-text"),
            pytest.param("churned custmers", "churn", id="misspelled-phrase"),
        ],
    )
    def test_finds_the_entity(self, any_store: EmbeddingStore, query: str, expected: str) -> None:
        any_store.insert(catalogue_rows())

        hits = any_store.text_search("action", 1, query, 10, 1)

        assert hits and hits[0].id == expected
        assert 0.0 <= hits[0].distance < 1.0
        assert [hit.distance for hit in hits] == sorted(hit.distance for hit in hits)
        assert hits[0].properties["name"] == dict((i, n) for i, n, _ in CATALOGUE)[expected]

    def test_an_exact_name_scores_a_distance_of_zero(self, any_store: EmbeddingStore) -> None:
        any_store.insert(catalogue_rows())

        (hit, *_) = any_store.text_search("action", 1, "Invoice paid", 10, 1)

        assert hit.id == "invoice"
        assert hit.distance == pytest.approx(0.0, abs=1e-6)

    def test_nothing_in_common_returns_nothing(self, any_store: EmbeddingStore) -> None:
        any_store.insert(catalogue_rows())

        assert any_store.text_search("action", 1, "zzzzqqqq xxxxjjjj", 10, 1) == []

    def test_scoped_to_team_domain_and_version_with_limit(self, any_store: EmbeddingStore) -> None:
        any_store.insert(
            [
                row("mine", unit(1, 0), team_id=1, name="Quarterly revenue"),
                row("theirs", unit(1, 0), team_id=2, name="Quarterly revenue"),
                row("cohort", unit(1, 0), team_id=1, name="Quarterly revenue", domain="cohort"),
                row("v2", unit(1, 0), team_id=1, name="Quarterly revenue", embedding_version=2),
                row("also-mine", unit(1, 0), team_id=1, name="Quarterly revenue forecast"),
            ]
        )

        assert sorted(ids(any_store.text_search("action", 1, "quarterly revenue", 10, 1))) == [
            "also-mine",
            "mine",
        ]
        assert len(any_store.text_search("action", 1, "quarterly revenue", 1, 1)) == 1
        assert ids(any_store.text_search("action", 2, "quarterly revenue", 10, 1)) == ["theirs"]
        assert ids(any_store.text_search("cohort", 1, "quarterly revenue", 10, 1)) == ["cohort"]
        assert ids(any_store.text_search("action", 1, "quarterly revenue", 10, 2)) == ["v2"]
        assert any_store.text_search("action", 3, "quarterly revenue", 10, 1) == []

    @pytest.mark.parametrize(
        "query",
        [pytest.param("東京", id="two-cjk-characters"), pytest.param("QA", id="two-letter-acronym")],
    )
    def test_a_short_query_finds_only_rows_that_contain_it(
        self, any_store: EmbeddingStore, query: str
    ) -> None:
        any_store.insert(catalogue_rows())
        any_store.insert([row("match", unit(0, 0, 0, 1), name=f"{query} dashboard", text="weekly numbers")])

        assert ids(any_store.text_search("action", 1, query, 10, 1)) == ["match"]

    def test_never_returns_an_entity_whose_latest_row_is_a_tombstone(self, any_store: EmbeddingStore) -> None:
        any_store.insert(catalogue_rows())
        any_store.insert([row("invoice", [], version=2, deleted=1)])

        assert "invoice" not in ids(any_store.text_search("action", 1, "invoice paid", 10, 1))

    def test_finds_the_newest_text_not_an_older_one(self, any_store: EmbeddingStore) -> None:
        any_store.insert([row("1", unit(1, 0), version=1, name="Legacy checkout")])
        any_store.insert([row("1", unit(1, 0), version=2, name="Subscription renewal")])

        assert ids(any_store.text_search("action", 1, "subscription renewal", 10, 1)) == ["1"]
        assert any_store.text_search("action", 1, "legacy checkout", 10, 1) == []


class TestHybridSearch:
    """The vector and text rankings fused: an exact name lifts an entity the vector ranks low."""

    @pytest.mark.parametrize(
        ("query", "at_most"),
        [
            # Only the invoice row holds a word this begins: it comes first.
            pytest.param("invoic", 0, id="partial-name"),
            # Its whole name; another row shares a word of it and is nearer by vector.
            pytest.param("Invoice paid", 1, id="exact-name"),
        ],
    )
    def test_a_name_match_comes_to_the_top_even_if_its_vector_is_far(
        self, any_store: EmbeddingStore, query: str, at_most: int
    ) -> None:
        vector = unit(1, 0.2, 0, 0)
        vectors = {
            "signup": unit(1, 0.1, 0, 0),  # the vector's nearest, no text match at all
            "pageview": unit(1, 0.5, 0, 0),
            "churn": unit(1, 1, 0.5, 0),
            "invoice": unit(0, 0, 0, 1),  # the vector's farthest
        }
        any_store.insert(catalogue_rows(vectors=vectors))
        assert ids(any_store.search("action", 1, vector, 10, 1)) == ["signup", "pageview", "churn", "invoice"]

        hits = any_store.hybrid_search("action", 1, vector, query, 10, 1)

        assert ids(hits).index("invoice") <= at_most
        assert ids(hits).index("invoice") < ids(hits).index("signup")
        assert set(ids(hits)) == {entity_id for entity_id, _, _ in CATALOGUE}
        # Its distance is the fused one, in rank order, not its cosine distance (1.0, the farthest).
        assert {hit.id: hit.distance for hit in hits}["invoice"] < 0.5

    @pytest.mark.parametrize(
        "query",
        [
            pytest.param("invoic", id="a-text-match-the-vector-ranks-last"),
            pytest.param("customers", id="two-text-matches"),
            pytest.param("zzzzqqqq", id="no-text-match"),
        ],
    )
    def test_distances_follow_the_rank(self, any_store: EmbeddingStore, query: str) -> None:
        vector = unit(1, 0.2, 0, 0)
        vectors = {
            "signup": unit(1, 0.1, 0, 0),
            "pageview": unit(1, 0.5, 0, 0),
            "churn": unit(1, 1, 0.5, 0),
            "invoice": unit(0, 0, 0, 1),
        }
        any_store.insert(catalogue_rows(vectors=vectors))

        hits = any_store.hybrid_search("action", 1, vector, query, 10, 1)

        distances = [hit.distance for hit in hits]
        assert len(hits) == 4
        assert distances == sorted(distances), [(hit.id, hit.distance) for hit in hits]
        assert all(0 <= distance < 1 for distance in distances)

    def test_first_in_both_rankings_is_at_distance_0_first_by_vector_alone_at_0_5(
        self, any_store: EmbeddingStore
    ) -> None:
        any_store.insert(catalogue_rows())

        both = any_store.hybrid_search("action", 1, unit(0, 0, 1, 0), "Invoice paid", 1, 1)
        vector_only = any_store.hybrid_search("action", 1, unit(0, 0, 1, 0), "zzzzqqqq", 1, 1)

        assert [(hit.id, round(hit.distance, 6)) for hit in both] == [("invoice", 0.0)]
        assert [(hit.id, round(hit.distance, 6)) for hit in vector_only] == [("invoice", 0.5)]

    def test_without_a_text_match_it_is_the_vector_ranking(self, any_store: EmbeddingStore) -> None:
        any_store.insert(catalogue_rows())
        query = unit(0.1, 1, 0.5, 0)

        hits = any_store.hybrid_search("action", 1, query, "zzzzqqqq", 10, 1)

        assert ids(hits) == ids(any_store.search("action", 1, query, 10, 1))

    def test_scoped_to_one_team_with_limit(self, any_store: EmbeddingStore) -> None:
        any_store.insert(catalogue_rows(team_id=1))
        any_store.insert([row("foreign", unit(1, 0, 0, 0), team_id=2, name="Invoice paid")])

        mine = any_store.hybrid_search("action", 1, unit(1, 0, 0, 0), "Invoice paid", 2, 1)
        theirs = any_store.hybrid_search("action", 2, unit(1, 0, 0, 0), "Invoice paid", 10, 1)

        assert len(mine) == 2 and "foreign" not in ids(mine)
        assert {hit.team_id for hit in mine} == {1}
        assert ids(theirs) == ["foreign"]
        assert any_store.hybrid_search("action", 3, unit(1, 0, 0, 0), "Invoice paid", 10, 1) == []

    def test_tombstoned_entities_are_excluded(self, any_store: EmbeddingStore) -> None:
        any_store.insert(catalogue_rows())
        any_store.insert([row("invoice", [], version=2, deleted=1)])

        hits = any_store.hybrid_search("action", 1, unit(0, 0, 1, 0), "Invoice paid", 10, 1)

        assert "invoice" not in ids(hits)
        assert len(hits) == len(CATALOGUE) - 1


class TestVectors:
    """The latest live vector of each asked key (float32) with its row version; no deleted or missing key."""

    def test_returns_what_was_inserted_for_each_key(self, any_store: EmbeddingStore) -> None:
        rng = np.random.default_rng(3)
        first, second, third = (rng.standard_normal(64).astype(np.float32) for _ in range(3))
        any_store.insert(
            [
                row("a", first, team_id=1, version=11),
                row("a", second, team_id=2, version=12),  # same id, another team
                row("a", third, team_id=1, embedding_version=2, version=13),  # another embedding version
                row("b", first, team_id=1, domain="cohort"),  # another domain
            ]
        )

        found = any_store.vectors("action", [(1, "a", 1), (2, "a", 1), (1, "a", 2), (1, "b", 1)])

        assert sorted(found) == [(1, "a", 1), (1, "a", 2), (2, "a", 1)]
        for key, expected, version in (
            ((1, "a", 1), first, 11),
            ((2, "a", 1), second, 12),
            ((1, "a", 2), third, 13),
        ):
            vector, row_version = found[key]
            assert vector.dtype == np.float32
            np.testing.assert_array_equal(vector, expected)
            assert row_version == version

    def test_missing_and_tombstoned_keys_are_absent(self, any_store: EmbeddingStore) -> None:
        any_store.insert([row("live", unit(1, 0)), row("gone", unit(0, 1), version=1)])
        any_store.insert([row("gone", [], version=2, deleted=1)])

        found = any_store.vectors("action", [(1, "live", 1), (1, "gone", 1), (1, "never", 1), (9, "live", 1)])

        assert list(found) == [(1, "live", 1)]
        assert any_store.vectors("action", []) == {}

    def test_the_newest_vector_of_a_key_is_returned(self, any_store: EmbeddingStore) -> None:
        any_store.insert([row("a", unit(0, 1), version=3)])
        any_store.insert([row("a", unit(1, 0), version=2)])

        found = any_store.vectors("action", [(1, "a", 1)])

        vector, version = found[(1, "a", 1)]
        np.testing.assert_array_equal(vector, np.asarray(unit(0, 1), dtype=np.float32))
        assert version == 3


class TestLiveKeysPage:
    """Keyset pages of a domain's live keys in (team_id, id, embedding_version) order."""

    def test_pages_in_key_order_skipping_tombstones(self, any_store: EmbeddingStore) -> None:
        live = [(2, "a", 1), (1, "b", 1), (1, "10", 1), (1, "2", 1), (1, "b", 2), (-5, "z", 1), (3, "a", 7)]
        any_store.insert(
            [row(entity_id, unit(1, 0), team_id=t, embedding_version=v) for t, entity_id, v in live]
        )
        any_store.insert(
            [
                row("dead", unit(1, 0), team_id=1, version=1),
                row("other-domain", unit(1, 0), team_id=1, domain="cohort"),
            ]
        )
        any_store.insert([row("dead", [], team_id=1, version=2, deleted=1)])

        pages, after = [], None
        while page := any_store.live_keys_page("action", after, 3):
            pages.append(page)
            after = page[-1]

        assert [len(page) for page in pages] == [3, 3, 1]
        assert [key for page in pages for key in page] == sorted(live)  # ids compare as strings
        assert any_store.live_keys_page("action", (1, "2", 1), 2) == [(1, "b", 1), (1, "b", 2)]
        assert any_store.live_keys_page("action", (3, "a", 7), 10) == []
        assert any_store.live_keys_page("cohort", None, 10) == [(1, "other-domain", 1)]


# The table as the first release created it: no `version`, versioned by `timestamp`.
UNVERSIONED_TABLE = """
CREATE TABLE {table} (
    domain LowCardinality(String),
    team_id Int64,
    id String,
    vector Array(Float32),
    text String,
    properties String,
    embedding_version UInt32,
    timestamp DateTime64(6, 'UTC'),
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(timestamp, is_deleted)
ORDER BY (team_id, domain, embedding_version, id)
"""


def micros(moment: datetime) -> int:
    """A timestamp in microseconds since the epoch: what a migrated row's version becomes."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def tables_named(store: EmbeddingStore, prefix: str) -> list[str]:
    """Tables of the store's database whose names start with `prefix`."""
    rows = store._query(  # type: ignore[attr-defined]
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND startsWith(name, {p:String})"
        " ORDER BY name",
        {"p": prefix},
    )
    return [str(found[0]) for found in rows]


@pytest.fixture
def store_on_table(
    request: pytest.FixtureRequest, any_store: EmbeddingStore
) -> Iterator[Callable[[str], EmbeddingStore]]:
    """Open new store objects on a table of one's choosing, on the same engine as `any_store`.

    The server store is opened with open_store(url, table). chdb allows one session per process
    and directory, so the embedded one is a sibling on the process's session (`for_table`).
    """
    opened: list[EmbeddingStore] = []
    made: list[str] = []

    def open_on(table: str) -> EmbeddingStore:
        made.append(table)
        if request.node.callspec.params["any_store"] == "server":
            store = open_store(request.getfixturevalue("clickhouse_http_url"), table)
            opened.append(store)
            return store
        assert isinstance(any_store, SqlEmbeddingStore)
        return cast(EmbeddingStore, any_store.for_table(table))

    yield open_on
    for table in made:
        for suffix in ("_terms_feed", "_terms", "", "_pre_version", "_migrating"):
            any_store._command(f"DROP TABLE IF EXISTS {table}{suffix}")  # type: ignore[attr-defined]
    for store in opened:
        store.close()


class TestMigrationFromTheFirstRelease:
    """A table without `version` is copied into the new layout, versioned by its timestamps."""

    def _old_table(self, store: EmbeddingStore, table: str) -> datetime:
        """The old table with a live key, a deleted key and a key written twice; returns the newest time."""
        store._command(UNVERSIONED_TABLE.replace("{table}", table))  # type: ignore[attr-defined]
        values = [
            ("live", [1.0, 0.0, 0.0], "live text", T0, 0),
            ("gone", [0.0, 1.0, 0.0], "gone text", T0, 0),
            ("gone", [], "", T0 + timedelta(seconds=1), 1),
            # The newer row of the pair first: order is by timestamp, not by insert.
            ("pair", [0.0, 0.0, 1.0], "new text", T0 + timedelta(seconds=3, microseconds=7), 0),
            ("pair", [0.0, 1.0, 1.0], "old text", T0 + timedelta(seconds=2), 0),
        ]
        for entity_id, vector, text, moment, deleted in values:
            store._command(  # type: ignore[attr-defined]
                f"INSERT INTO {table} VALUES ('action', 1, {{id:String}}, {{vector:Array(Float32)}}, "
                f"{{text:String}}, {{properties:String}}, 1, {{ts:DateTime64(6, 'UTC')}}, {{deleted:UInt8}})",
                {
                    "id": entity_id,
                    "vector": vector,
                    "text": text,
                    "properties": json.dumps({"name": f"name {entity_id}"}),
                    "ts": moment.strftime("%Y-%m-%d %H:%M:%S.%f"),
                    "deleted": deleted,
                },
            )
        return T0 + timedelta(seconds=3, microseconds=7)

    def test_rows_keep_their_order_and_new_versions_go_above_them(
        self, any_store: EmbeddingStore, store_on_table: Callable[[str], EmbeddingStore]
    ) -> None:
        table = f"migrate_{uuid.uuid4().hex[:10]}"
        newest = self._old_table(any_store, table)
        store = store_on_table(table)

        migrated = store.ensure_schema()

        assert migrated == micros(newest)
        assert tables_named(any_store, table) == [
            table,
            f"{table}_pre_version",
            f"{table}_terms",
            f"{table}_terms_feed",
        ]
        old_count = any_store._query(f"SELECT count() FROM {table}_pre_version", {})[0][0]  # type: ignore[attr-defined]
        assert int(old_count) == 5  # the first release's rows, untouched
        # The copy is one insert, which ClickHouse may already collapse to the latest row per key.
        assert 3 <= store.count_rows("action") <= 5
        latest = {stored.id: stored for stored in store.latest_rows("action")}
        assert {key: (stored.text, stored.is_deleted) for key, stored in latest.items()} == {
            "live": ("live text", False),
            "gone": ("", True),
            "pair": ("new text", False),
        }
        assert latest["pair"].version == migrated
        assert latest["live"].version == micros(T0)
        assert latest["live"].timestamp == T0
        # The query is the old vector of the pair: the pair's hit must be its new vector, 45° away.
        hits = {hit.id: hit.distance for hit in store.search("action", 1, unit(0, 1, 1), 10, 1)}
        assert hits == {"pair": pytest.approx(1 - 0.5**0.5, abs=1e-6), "live": pytest.approx(1.0, abs=1e-6)}
        assert store.live_keys_page("action", None, 10) == [(1, "live", 1), (1, "pair", 1)]

        store.insert(
            [row("live", unit(0, 1, 0), version=migrated + 1, timestamp=T0 - timedelta(days=1), text="after")]
        )

        assert {stored.id: stored.text for stored in store.latest_rows("action")}["live"] == "after"
        assert ids(store.search("action", 1, unit(0, 1, 0), 1, 1)) == ["live"]

    def test_a_second_store_object_finds_nothing_to_migrate(
        self, any_store: EmbeddingStore, store_on_table: Callable[[str], EmbeddingStore]
    ) -> None:
        table = f"migrate_{uuid.uuid4().hex[:10]}"
        self._old_table(any_store, table)
        first = store_on_table(table)
        migrated = first.ensure_schema()
        before = sorted((stored.id, stored.version) for stored in first.latest_rows("action"))

        again = store_on_table(table).ensure_schema()

        assert migrated > 0 and again == 0
        assert first.ensure_schema() == migrated  # the first object remembers what it migrated
        after = store_on_table(table)
        assert sorted((stored.id, stored.version) for stored in after.latest_rows("action")) == before
        assert tables_named(any_store, table) == [
            table,
            f"{table}_pre_version",
            f"{table}_terms",
            f"{table}_terms_feed",
        ]

    def test_a_new_table_is_created_not_migrated(
        self, any_store: EmbeddingStore, store_on_table: Callable[[str], EmbeddingStore]
    ) -> None:
        table = f"fresh_{uuid.uuid4().hex[:10]}"
        store = store_on_table(table)

        assert store.ensure_schema() == 0
        assert tables_named(any_store, table) == [table, f"{table}_terms", f"{table}_terms_feed"]
        assert store.count_rows("action") == 0


class TestEmbeddedStoreIsShared:
    """chdb opens one directory per process: the first process serves it to the others on loopback."""

    def test_opening_it_twice_in_one_process_is_refused(self, embedded_store: EmbeddingStore) -> None:
        from entity_vectors import conf

        with pytest.raises(EmbeddedStoreLocked, match="already open in this process"):
            EmbeddedStore(conf.clickhouse_target().path, "pg_embeddings")

    def test_a_second_process_reads_and_writes_this_process_s_store(
        self, embedded_store: EmbeddingStore
    ) -> None:
        from entity_vectors import conf

        embedded_store.insert([row("1", [0.6, 0.8], team_id=7)])
        result = run_python(
            f"""
            from entity_vectors.store import open_store
            from tests.support.store_rows import row
            store = open_store({conf.clickhouse_url()!r}, "pg_embeddings")
            print("before", store.count_rows("action"))
            store.insert([row("2", [0.6, 0.8], team_id=7)])
            print(store.where)
            """
        )

        assert "before 1" in result.stdout, result.stdout + result.stderr
        assert "the engine of another process, over loopback" in result.stdout
        assert sorted(r.id for r in embedded_store.latest_rows("action")) == ["1", "2"]

    def test_when_the_holder_exits_the_next_statement_takes_the_directory_over(self, tmp_path: Path) -> None:
        url = f"chdb://{tmp_path / 'data'}"
        holder = subprocess.Popen(
            [sys.executable, "-c", PROLOGUE + textwrap.dedent(
                f"""
                from entity_vectors.store import open_store
                from tests.support.store_rows import row
                store = open_store({url!r}, "pg_embeddings")
                store.ensure_schema()
                store.insert([row("1", [0.6, 0.8], team_id=7)])
                print("holding", flush=True)
                sys.stdin.readline()
                store.close()
                """
            )],
            cwd=ROOT, env=SETTINGS_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "holding"
        borrower = subprocess.Popen(
            [sys.executable, "-c", PROLOGUE + textwrap.dedent(
                f"""
                from entity_vectors.store import open_store
                store = open_store({url!r}, "pg_embeddings")
                print("borrowing", store.count_rows("action"), store.where, flush=True)
                sys.stdin.readline()
                print("after", store.count_rows("action"), store.where, flush=True)
                store.close()
                """
            )],
            cwd=ROOT, env=SETTINGS_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert borrower.stdout is not None and borrower.stdin is not None
        try:
            assert (
                borrower.stdout.readline().strip()
                == "borrowing 1 the engine of another process, over loopback"
            )
            holder.stdin.close()
            assert holder.wait(timeout=60) == 0
            out, err = borrower.communicate("\n", timeout=60)
        finally:
            for process in (holder, borrower):
                if process.poll() is None:
                    process.kill()

        assert out.startswith("after 1 the engine in this process, served to others at 127.0.0.1:"), out + err
        assert err == "", err  # no driver warning, no traceback

    def test_a_holder_that_does_not_share_it_gets_a_clear_error(self, tmp_path: Path) -> None:
        url = f"chdb://{tmp_path / 'data'}"
        holder = subprocess.Popen(
            [sys.executable, "-c", PROLOGUE + textwrap.dedent(
                f"""
                from entity_vectors.store import open_store
                store = open_store({url!r}, "pg_embeddings")
                store.ensure_schema()
                print("holding", flush=True)
                sys.stdin.readline()
                store.close()
                """
            )],
            cwd=ROOT, env={**SETTINGS_ENV, "ENTITY_VECTORS_EMBEDDED_SHARE": "false"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert holder.stdout is not None and holder.stdin is not None
        try:
            assert holder.stdout.readline().strip() == "holding"
            result = run_python(
                f"""
                from entity_vectors.store import shared
                shared.ANNOUNCE_WAIT_SECONDS = 0.5
                from entity_vectors.store import open_store
                try:
                    open_store({url!r}, "pg_embeddings")
                except Exception as exc:
                    print(type(exc).__name__, exc)
                """
            )
        finally:
            holder.stdin.close()
            holder.wait(timeout=60)

        assert result.stdout.startswith("EmbeddedStoreLocked"), result.stdout + result.stderr
        assert f"in use by another process (pid {holder.pid}), which does not serve it" in result.stdout
        assert "ENTITY_VECTORS_EMBEDDED_SHARE=true" in result.stdout and "CLICKHOUSE_URL" in result.stdout


PROLOGUE = "import sys\nimport django\ndjango.setup()\n"
SETTINGS_ENV = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new process on the test settings (Django set up first)."""
    return subprocess.run(
        [sys.executable, "-c", PROLOGUE + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=SETTINGS_ENV,
    )
