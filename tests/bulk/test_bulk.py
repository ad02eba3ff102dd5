"""Bulk writes round-trip every kind of value they carry, and their statements are logged.

On PostgreSQL the per-column arrays travel as binary parameters: nothing is quoted, so text that
would need quoting in an array literal (quotes, braces, commas, backslashes, NULL spelled out)
must come back exactly as it went in.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from entity_vectors.bulk import KeyLookup, delete_matching, update_rows, upsert_rows
from entity_vectors.models import EntitySummary, LedgerEntry

pytestmark = pytest.mark.django_db

AWKWARD = ["plain", 'a "quoted" {braced}, text', "back\\slash", "NULL", "", "ünïcode ✓", "line\nbreak"]
AT = datetime(2026, 11, 27, 12, 30, 15, 123456, tzinfo=UTC)


def _summary_row(index: int, text: str) -> dict[str, object]:
    return {
        "domain": "action",
        "entity_id": f"key {index}, {{x}}",
        "summary": text,
        "input_hash": f"h{index}",
        "summarized_by": "template",
        "summarized_at": AT,
    }


def test_upsert_inserts_then_updates_awkward_text_exactly() -> None:
    rows = [_summary_row(index, text) for index, text in enumerate(AWKWARD)]
    fields = ["summary", "input_hash", "summarized_by", "summarized_at"]
    with CaptureQueriesContext(connection) as queries:
        upsert_rows(EntitySummary, ["domain", "entity_id"], rows, fields)
    assert len(queries.captured_queries) == 1  # one statement, and query logging sees it
    stored = dict(EntitySummary.objects.values_list("entity_id", "summary"))
    assert stored == {row["entity_id"]: row["summary"] for row in rows}
    assert set(EntitySummary.objects.values_list("summarized_at", flat=True)) == {AT}

    upsert_rows(EntitySummary, ["domain", "entity_id"], [{**rows[1], "summary": "changed"}], fields)
    assert EntitySummary.objects.get(entity_id=rows[1]["entity_id"]).summary == "changed"
    assert EntitySummary.objects.count() == len(AWKWARD)


def test_upsert_with_nothing_to_update_keeps_the_existing_row() -> None:
    row = _summary_row(0, "first")
    upsert_rows(EntitySummary, ["domain", "entity_id"], [row], [])
    upsert_rows(EntitySummary, ["domain", "entity_id"], [{**row, "summary": "second"}], [])
    assert list(EntitySummary.objects.values_list("summary", flat=True)) == ["first"]


def _ledger(entity_id: str, **values: object) -> LedgerEntry:
    return LedgerEntry.objects.create(domain="action", entity_id=entity_id, embedding_version=1, **values)


def test_update_rows_sets_nulls_json_lists_and_large_integers() -> None:
    first, second = _ledger("1", team_id=7, live_teams=[7]), _ledger("2", team_id=8)
    big = 2**62 + 1
    matched = update_rows(
        LedgerEntry,
        {
            first.pk: {"team_id": None, "live_teams": [], "row_version": big, "pending_text_hash": '{"a"}'},
            second.pk: {"team_id": 9, "live_teams": [9, 11], "row_version": 3, "pending_text_hash": ""},
        },
        ["team_id", "live_teams", "row_version", "pending_text_hash"],
    )
    assert matched == 2
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.team_id, first.live_teams, first.row_version, first.pending_text_hash) == (
        None,
        [],
        big,
        '{"a"}',
    )
    assert (second.team_id, second.live_teams, second.row_version) == (9, [9, 11], 3)


def test_a_key_lookup_matches_awkward_keys_and_filters() -> None:
    keys = ["a,b", "{c}", 'd"e', "NULL"]
    for key in keys:
        _ledger(key, team_id=1)
    _ledger("other", team_id=2)
    found = KeyLookup(
        LedgerEntry, {"domain": "action"}, "entity_id", ["entity_id"], {"embedding_version": [1, 2]}
    ).rows([*keys, "missing"])
    assert sorted(row[0] for row in found) == sorted(keys)
    locked = KeyLookup(LedgerEntry, {"domain": "action"}, "entity_id", ["team_id"]).rows(["other"], lock=True)
    assert locked == [(2,)]
    assert KeyLookup(LedgerEntry, {"domain": "other"}, "entity_id", ["entity_id"]).rows(keys) == []


def test_delete_matching_deletes_only_rows_at_or_below_their_bound() -> None:
    for key, seq in (("x,1", 5), ("y{2}", 9), ("z", 1)):
        _ledger(key, source_seq=seq)
    deleted = delete_matching(
        LedgerEntry, {"domain": "action"}, "entity_id", "source_seq", {"x,1": 5, "y{2}": 8}
    )
    assert deleted == 1
    assert sorted(LedgerEntry.objects.values_list("entity_id", flat=True)) == ["y{2}", "z"]
