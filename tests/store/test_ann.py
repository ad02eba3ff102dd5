"""Vector search by group size: exact below the threshold, through the HNSW index above it.

Every test runs on both stores. The approximate path is forced with a threshold of one row, so
that small, seeded data sets go through the index tables, their materialized views and the
index's candidate query, with the latest-row rules applied to the candidates.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from entity_vectors.store import EmbeddingRow, EmbeddingStore
from tests.support.store_rows import row

DIMS = 16


def unit_rows(rng: np.random.Generator, count: int, dims: int = DIMS) -> np.ndarray:
    """`count` random unit vectors."""
    vectors = rng.standard_normal((count, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(query: np.ndarray, rng: np.random.Generator, spread: float = 0.05) -> np.ndarray:
    """A unit vector close to `query`."""
    vector = query + spread * rng.standard_normal(len(query)).astype(np.float32)
    return vector / np.linalg.norm(vector)


def exact_top(rows: Sequence[EmbeddingRow], query: np.ndarray, limit: int, team_id: int = 1) -> list[str]:
    """Ids of the nearest live rows by numpy: the latest row of each key, tombstones dropped after."""
    latest: dict[str, EmbeddingRow] = {}
    for candidate in rows:
        if candidate.team_id != team_id:
            continue
        kept = latest.get(candidate.id)
        if kept is None or candidate.version > kept.version:
            latest[candidate.id] = candidate
    live = [found for found in latest.values() if not found.is_deleted]
    vectors = np.asarray([found.vector for found in live], dtype=np.float32)
    distances = 1 - (vectors @ query) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    order = sorted(range(len(live)), key=lambda index: (round(float(distances[index]), 5), live[index].id))
    return [live[index].id for index in order[:limit]]


def ids(hits: Sequence[Any]) -> list[str]:
    """The ids of search hits, in rank order."""
    return [hit.id for hit in hits]


def indexed_groups(store: EmbeddingStore) -> set[tuple[int, str, int]]:
    """Groups registered as ready in the store's index tables (none before they exist)."""
    groups = f"{store.table}_ann_groups"
    (exists,) = store._query(  # type: ignore[attr-defined]
        "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = {n:String}",
        {"n": groups},
    )[0]
    if not int(exists):
        return set()
    rows = store._query(  # type: ignore[attr-defined]
        f"SELECT team_id, domain, embedding_version FROM {groups} GROUP BY 1, 2, 3 HAVING max(ready) = 1", {}
    )
    return {(int(team), str(domain), int(version)) for team, domain, version in rows}


@contextlib.contextmanager
def all_merges_stopped(store: EmbeddingStore) -> Iterator[None]:
    """No merge of any table (the vectors table and its index tables) in the block."""
    store._command("SYSTEM STOP MERGES")  # type: ignore[attr-defined]
    try:
        yield
    finally:
        store._command("SYSTEM START MERGES")  # type: ignore[attr-defined]


def wait_for_index(store: EmbeddingStore, dims: int = DIMS, timeout: float = 120) -> None:
    """Wait until every part of the index table has its HNSW index built."""
    table = f"{store.table}_ann_{dims}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (missing,) = store._query(  # type: ignore[attr-defined]
            "SELECT countIf(secondary_indices_uncompressed_bytes = 0) FROM system.parts "
            "WHERE database = currentDatabase() AND table = {t:String} AND active",
            {"t": table},
        )[0]
        if not int(missing):
            return
        time.sleep(0.2)
    raise AssertionError(f"the HNSW index of {table} was not built within {timeout}s")


@pytest.fixture
def approximate(settings: Any) -> None:
    """Every group of at least one row is searched through the index."""
    settings.ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS = 1


class TestExactSearchOfSmallGroups:
    """Below the threshold, search is exactly the nearest latest live rows, before any merge."""

    def test_the_answer_is_the_exact_one_with_deletes_and_updates_unmerged(
        self, any_store: EmbeddingStore
    ) -> None:
        rng = np.random.default_rng(3)
        vectors = unit_rows(rng, 400)
        rows = [row(str(index), vector, version=index + 1) for index, vector in enumerate(vectors)]
        any_store.insert(rows)
        queries = unit_rows(rng, 10)
        nearest = {exact_top(rows, query, 5)[0] for query in queries}
        with all_merges_stopped(any_store):
            later = [
                row(key, [], version=1000 + index, deleted=1) for index, key in enumerate(sorted(nearest))
            ]
            edited = [str(index) for index in range(0, 400, 7) if str(index) not in nearest]
            later += [
                row(key, unit_rows(rng, 1)[0], version=2000 + index) for index, key in enumerate(edited)
            ]
            any_store.insert(later)

            for query in queries:
                hits = any_store.search("action", 1, query, 10, 1)

                assert ids(hits) == exact_top(rows + later, query, 10)
                assert not nearest & set(ids(hits))
        assert indexed_groups(any_store) == set()


class TestApproximateSearch:
    """Above the threshold: candidates from the index, then the latest-row rules, then exact ranking."""

    def test_deleted_and_superseded_candidates_are_dropped_before_any_merge(
        self, any_store: EmbeddingStore, approximate: None
    ) -> None:
        rng = np.random.default_rng(5)
        query = unit_rows(rng, 1)[0]
        rows = [
            row(str(index), vector, version=index + 1) for index, vector in enumerate(unit_rows(rng, 300))
        ]
        rows += [row(f"near-{index}", near(query, rng), version=500 + index) for index in range(6)]
        any_store.insert(rows)
        assert {f"near-{index}" for index in range(6)} <= set(
            ids(any_store.search("action", 1, query, 10, 1))
        )
        assert indexed_groups(any_store) == {(1, "action", 1)}

        with all_merges_stopped(any_store):
            later = [
                row("near-0", [], version=900, deleted=1),
                row("near-1", [], version=901, deleted=1),
                row("near-2", near(query, rng, 0.01), version=902, text="near-2, edited"),
                row("near-3", -query, version=903, text="near-3, moved away"),
                row("near-4", [], version=100, deleted=1),  # older than its live row: hides nothing
            ]
            any_store.insert(later)
            hits = any_store.search("action", 1, query, 10, 1)

        found = {hit.id: hit for hit in hits}
        assert "near-0" not in found and "near-1" not in found
        assert found["near-2"].text == "near-2, edited"
        assert found["near-2"].distance == pytest.approx(exact_distance(later[2].vector, query), abs=1e-5)
        assert "near-3" not in found  # ranked by its newer, far vector, not the old near one
        assert "near-4" in found and "near-5" in found
        assert ids(hits) == exact_top(rows + later, query, 10)

    def test_rows_written_before_the_group_was_indexed_keep_their_rules(
        self, any_store: EmbeddingStore, approximate: None
    ) -> None:
        rng = np.random.default_rng(6)
        query = unit_rows(rng, 1)[0]
        rows = [
            row(str(index), vector, version=index + 1) for index, vector in enumerate(unit_rows(rng, 200))
        ]
        rows += [row(f"near-{index}", near(query, rng), version=500 + index) for index in range(4)]
        rows += [
            row("near-0", [], version=900, deleted=1),
            row("near-1", near(query, rng), version=901, text="near-1, edited"),
        ]
        any_store.insert(rows)

        assert ids(any_store.search("action", 1, query, 10, 1)) == exact_top(rows, query, 10)
        with all_merges_stopped(any_store):
            # A late retry of an older write of near-0 arrives after its tombstone was copied in.
            late = [row("near-0", near(query, rng, 0.001), version=700, text="near-0, late retry")]
            any_store.insert(late)
            hits = any_store.search("action", 1, query, 10, 1)

        assert "near-0" not in ids(hits)
        assert {hit.id: hit.text for hit in hits}["near-1"] == "near-1, edited"
        assert ids(hits) == exact_top(rows + late, query, 10)
        assert indexed_groups(any_store) == {(1, "action", 1)}

    def test_a_team_sees_only_its_own_rows_and_rules(self, any_store: EmbeddingStore, settings: Any) -> None:
        settings.ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS = 101  # teams 1 and 2, not team 3
        rng = np.random.default_rng(8)
        query = unit_rows(rng, 1)[0]
        shared = unit_rows(rng, 100)
        rows = [
            row(str(index), vector, team_id=team, version=index + 1, text=f"team {team}")
            for team in (1, 2, 3)
            for index, vector in enumerate(shared)
        ]
        rows += [
            row("near", near(query, rng), team_id=team, version=300, text=f"team {team}") for team in (1, 2)
        ]
        any_store.insert(rows)
        for team in (1, 2, 3):
            any_store.search("action", team, query, 5, 1)
        assert indexed_groups(any_store) == {(1, "action", 1), (2, "action", 1)}

        with all_merges_stopped(any_store):
            # Team 2 deletes "near" and edits "0"; team 1's rows of the same ids must not change.
            later = [
                row("near", [], team_id=2, version=400, deleted=1),
                row("0", query, team_id=2, version=401, text="team 2, edited"),
            ]
            any_store.insert(later)
            first = any_store.search("action", 1, query, 10, 1)
            second = any_store.search("action", 2, query, 10, 1)
            third = any_store.search("action", 3, query, 10, 1)

        assert {hit.team_id for hit in first} == {1} and {hit.text for hit in first} == {"team 1"}
        assert {hit.team_id for hit in second} == {2} and {hit.team_id for hit in third} == {3}
        assert ids(first)[0] == "near"
        assert "near" not in ids(second) and ids(second)[0] == "0"
        assert ids(first) == exact_top(rows + later, query, 10, team_id=1)
        assert ids(second) == exact_top(rows + later, query, 10, team_id=2)
        assert any_store.search("action", 4, query, 10, 1) == []

    def test_recall_at_10_against_exact_search(
        self, any_store: EmbeddingStore, approximate: None, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_APPROXIMATE_SEARCH_EF = 64
        rng = np.random.default_rng(42)
        vectors = unit_rows(rng, 4000, 32)
        rows = [row(str(index), vector, version=index + 1) for index, vector in enumerate(vectors)]
        any_store.insert(rows)
        queries = unit_rows(rng, 50, 32)
        any_store.search("action", 1, queries[0], 10, 1)  # copies the group into the index
        wait_for_index(any_store, 32)

        found = [
            len(set(ids(any_store.search("action", 1, query, 10, 1))) & set(exact_top(rows, query, 10)))
            for query in queries
        ]

        assert sum(found) / (10 * len(queries)) >= 0.95
        # Granules of 32 rows read one at a time: small compressed blocks, so a granule's keys
        # and texts are read without decompressing thousands of rows around them.
        (engine,) = any_store._query(  # type: ignore[attr-defined]
            "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {n:String}",
            {"n": f"{any_store.table}_ann_32"},
        )[0]
        assert (
            "index_granularity = 32, min_compress_block_size = 1024, max_compress_block_size = 8192" in engine
        )


def exact_distance(vector: Any, query: np.ndarray) -> float:
    """Cosine distance computed by numpy."""
    array = np.asarray(vector, dtype=np.float32)
    return float(1 - array @ query / (np.linalg.norm(array) * np.linalg.norm(query)))
