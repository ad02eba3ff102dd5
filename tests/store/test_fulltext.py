"""Full-text search through ClickHouse's text index, on both stores: what it finds, the latest-row
rules before and after merges, one team only, and tables made by an earlier release."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import pytest

from entity_vectors.store import EmbeddingStore, open_store
from entity_vectors.store.base import SqlEmbeddingStore
from entity_vectors.store.fulltext import TOKENS_EXPRESSION, full_name, words
from entity_vectors.store.fusion import Fusion
from tests.support.store_rows import row, unit


def ids(hits: Sequence[Any]) -> list[str]:
    """The ids of search hits, in rank order."""
    return [hit.id for hit in hits]


def sql(store: EmbeddingStore) -> SqlEmbeddingStore:
    """The store as the SQL store it is (for statements the interface does not offer)."""
    assert isinstance(store, SqlEmbeddingStore)
    return store


@contextlib.contextmanager
def merges_stopped(store: EmbeddingStore) -> Iterator[None]:
    """No background merge of the store's table in the block: reads see every physical row."""
    sql(store)._command(f"SYSTEM STOP MERGES {store.table}")
    try:
        yield
    finally:
        sql(store)._command(f"SYSTEM START MERGES {store.table}")


def merge(store: EmbeddingStore) -> None:
    """Merge the table's parts now: superseded rows are gone, as after a background merge."""
    sql(store)._command(f"OPTIMIZE TABLE {store.table} FINAL")


def both(store: EmbeddingStore, query: str, limit: int = 10, team_id: int = 1) -> tuple[list[str], list[str]]:
    """The ids text and hybrid search return (hybrid with a query vector near none of the rows)."""
    text = ids(store.text_search("action", team_id, query, limit, 1))
    hybrid = ids(store.hybrid_search("action", team_id, unit(0, 0, 1), query, limit, 1, Fusion("score", 0.2)))
    return text, hybrid


CATALOGUE = [
    ("signup", "User signed up", "Counts users who complete the registration form"),
    ("pageview", "$pageview", "Any page viewed in the web app"),
    ("pageleave", "$pageleave", "A page was left"),
    ("invoice", "Invoice paid", "Billing event sent when a customer settles an invoice"),
    ("share-ja", "ファイル共有", "日本語 UI でファイルが共有されました。"),
    ("upload-ja", "ファイルアップロード", "ファイルがアップロードされました。"),
    ("sync", "desktop_sync_completed", "The desktop client finished syncing"),
]


def catalogue(team_id: int = 1) -> list[Any]:
    """The CATALOGUE as rows of one team, each with a vector of its own."""
    return [
        row(entity_id, unit(1, number + 1, 0), team_id=team_id, name=name, text=text)
        for number, (entity_id, name, text) in enumerate(CATALOGUE)
    ]


class TestTokens:
    """Queries are cut into tokens by the rule ClickHouse applies to the stored rows."""

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("User signed up: $pageview, desktop_sync_completed!", id="english"),
            pytest.param("Neue Anmeldungen aus Deutschland, Größe 12 über-all", id="german"),
            pytest.param("passage à l'offre payante — clientes de pago", id="french-spanish"),
            pytest.param("日本語 UI でファイルが共有されました。ファイル共有", id="japanese"),
            pytest.param("한국어 검색 中文搜索 ー々", id="korean-chinese"),
            pytest.param("ÉCOLE Ünïcode ΑΒΓ кириллица", id="upper-case"),
            pytest.param("a 東 b", id="lone-character"),
        ],
    )
    def test_python_and_clickhouse_agree(self, embedded_store: EmbeddingStore, text: str) -> None:
        properties = json.dumps({"name": text})
        expression = TOKENS_EXPRESSION.replace("is_deleted", "0").replace("properties", "{p:String}")
        ((stored,),) = sql(embedded_store)._query(
            f"SELECT {expression.replace('text)', '{t:String})')}", {"p": properties, "t": text}
        )
        name = words(text)
        expected = [
            *(token for word in name for token in (word, "^" + word)),
            full_name(text),
            *words(text),
        ]
        assert list(stored) == expected

    def test_cjk_is_cut_into_bigrams_and_words_are_lower_case(self) -> None:
        assert words("ファイル共有") == ["ファ", "ァイ", "イル", "ル共", "共有"]
        assert words("$PageView desktop_sync 東") == ["pageview", "desktop", "sync", "東"]
        assert full_name("Churn risk: paid, inactive") == "=churn risk paid inactive"


class TestWhatTextSearchFinds:
    """Words, not fragments: abbreviations, prefixes, stems, misspellings, CJK bigrams."""

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            pytest.param("pv", "pageview", id="pv-is-a-pageview"),
            pytest.param("PV", "pageview", id="upper-case-abbreviation"),
            pytest.param("pagevew", "pageview", id="misspelled"),
            pytest.param("invoic", "invoice", id="prefix"),
            pytest.param("invoices paid", "invoice", id="plural"),
            pytest.param("ファイル共有", "share-ja", id="japanese-name"),
            pytest.param("共有されたファイル", "share-ja", id="japanese-sentence"),
            pytest.param("アップロード", "upload-ja", id="katakana-word"),
            pytest.param("desktop sync", "sync", id="words-of-a-snake-case-name"),
            pytest.param("which event says that someone signed up", "signup", id="filler-words"),
        ],
    )
    def test_finds_the_entity_first(self, any_store: EmbeddingStore, query: str, expected: str) -> None:
        any_store.insert(catalogue())

        hits = any_store.text_search("action", 1, query, 10, 1)

        assert hits and hits[0].id == expected, [(hit.id, hit.distance) for hit in hits]
        assert [hit.distance for hit in hits] == sorted(hit.distance for hit in hits)
        assert all(0.0 <= hit.distance < 1.0 for hit in hits)

    def test_a_whole_name_is_distance_zero_and_the_rest_is_ranked_after(
        self, any_store: EmbeddingStore
    ) -> None:
        any_store.insert(catalogue())

        hits = any_store.text_search("action", 1, "$pageview", 10, 1)

        assert [(hit.id, hit.distance) for hit in hits[:1]] == [("pageview", 0.0)]
        assert all(hit.distance > 0 for hit in hits[1:])

    def test_words_in_common_and_no_others_find_nothing(self, any_store: EmbeddingStore) -> None:
        any_store.insert(catalogue())

        assert any_store.text_search("action", 1, "zzzz qqqq", 10, 1) == []
        assert any_store.text_search("action", 1, "the zzzz", 10, 1) == []  # "the" is not looked up

    def test_pv_through_search_entities_finds_the_pageview_event(self, any_store: EmbeddingStore) -> None:
        any_store.insert(catalogue())
        text, hybrid = both(any_store, "pv")

        assert text[0] == "pageview" and hybrid[0] == "pageview"


class TestLatestRowRules:
    """Text and hybrid search never return a deleted or superseded row, before or after merges,
    and never another team's."""

    def _write(self, store: EmbeddingStore) -> None:
        store.insert(
            [
                row("renamed", unit(1, 0, 0), version=1, name="Invoice paid", text="billing invoice"),
                row("rewritten", unit(1, 0, 0), version=1, name="Invoice sent", text="invoice emailed"),
                row("deleted", unit(1, 0, 0), version=1, name="Invoice refunded", text="invoice refund"),
                row("restored", unit(1, 0, 0), version=1, name="Invoice voided", text="invoice void"),
                row("live", unit(1, 0, 0), version=1, name="Invoice overdue", text="invoice late"),
                row("theirs", unit(1, 0, 0), team_id=2, version=1, name="Invoice paid", text="invoice"),
            ]
        )
        store.insert(
            [
                # No longer about invoices: its old row must not be found by them.
                row("renamed", unit(1, 0, 0), version=2, name="Checkout started", text="cart checkout"),
                # Still about invoices: found once, with its new text.
                row("rewritten", unit(1, 0, 0), version=2, name="Invoice sent again", text="invoice resent"),
                row("deleted", [], version=2, deleted=1),
                row("restored", [], version=2, deleted=1),
                # An older tombstone (a late retry) hides nothing.
                row("live", [], version=0, deleted=1),
                row("theirs", [], team_id=2, version=2, deleted=1),
            ]
        )
        store.insert([row("restored", unit(1, 0, 0), version=3, name="Invoice voided", text="invoice void")])

    # The name of each key's latest live row; "deleted" and "theirs" have none.
    LATEST = {
        "renamed": "Checkout started",
        "rewritten": "Invoice sent again",
        "restored": "Invoice voided",
        "live": "Invoice overdue",
    }

    def _check(self, store: EmbeddingStore) -> None:
        vector = unit(1, 0, 0)
        for query in ("invoice", "invoice paid", "Invoice refunded", "invoce"):
            text = store.text_search("action", 1, query, 10, 1)
            hybrid = store.hybrid_search("action", 1, vector, query, 10, 1, Fusion("score", 0.5))
            # Text: the rows about invoices now, each with its latest name; hybrid: every live row
            # (the vector finds them all), each with its latest name, the invoices first.
            assert sorted(ids(text)) == ["live", "restored", "rewritten"], (query, ids(text))
            assert sorted(ids(hybrid)) == sorted(self.LATEST), (query, ids(hybrid))
            assert ids(hybrid)[-1] == "renamed"
            for hit in [*text, *hybrid]:
                assert (hit.team_id, hit.properties["name"]) == (1, self.LATEST[hit.id])
        assert ids(store.text_search("action", 1, "checkout", 10, 1)) == ["renamed"]
        assert store.text_search("action", 2, "invoice", 10, 1) == []
        assert store.hybrid_search("action", 2, vector, "invoice paid", 10, 1) == []

    def test_before_merges(self, any_store: EmbeddingStore) -> None:
        with merges_stopped(any_store):
            self._write(any_store)
            assert any_store.count_rows("action") == 13  # every row written is still there

            self._check(any_store)

    def test_after_merges(self, any_store: EmbeddingStore) -> None:
        self._write(any_store)
        merge(any_store)

        self._check(any_store)

    def test_many_superseded_candidates_make_room_for_live_ones(self, any_store: EmbeddingStore) -> None:
        with merges_stopped(any_store):
            # 40 rows whose whole name is the query, each superseded by a row about something else,
            # rank above the 3 live rows: the candidates are taken again until those are reached.
            any_store.insert(
                [
                    row(f"old-{i}", unit(1, 0, 0), version=1, name="Report exported", text="x")
                    for i in range(40)
                ]
            )
            any_store.insert(
                [row(f"old-{i}", unit(1, 0, 0), version=2, name=f"Renamed {i}", text="y") for i in range(40)]
            )
            any_store.insert(
                [
                    row(f"live-{i}", unit(1, 0, 0), version=1, name="Exported", text="a report, long " * i)
                    for i in range(3)
                ]
            )

            hits = any_store.text_search("action", 1, "report exported", 3, 1)

        assert sorted(ids(hits)) == ["live-0", "live-1", "live-2"]


class TestEarlierReleaseTables:
    """A table made before the full-text columns keeps working: it gets them, and its rows are counted."""

    OLD_TABLE = """
    CREATE TABLE {table} (
        domain LowCardinality(String), team_id Int64, id String, vector Array(Float32) CODEC(NONE),
        text String, properties String, embedding_version UInt32, timestamp DateTime64(6, 'UTC'),
        version UInt64, is_deleted UInt8
    ) ENGINE = ReplacingMergeTree(version, is_deleted) ORDER BY (team_id, domain, embedding_version, id)
    """

    @pytest.fixture
    def store_on_table(
        self, request: pytest.FixtureRequest, any_store: EmbeddingStore
    ) -> Iterator[Callable[[str], EmbeddingStore]]:
        opened: list[EmbeddingStore] = []
        made: list[str] = []

        def open_on(table: str) -> EmbeddingStore:
            made.append(table)
            if request.node.callspec.params["any_store"] == "server":
                store = open_store(request.getfixturevalue("clickhouse_http_url"), table)
                opened.append(store)
                return store
            return cast(EmbeddingStore, sql(any_store).for_table(table))

        yield open_on
        for table in made:
            for suffix in ("_terms_feed", "_terms", ""):
                sql(any_store)._command(f"DROP TABLE IF EXISTS {table}{suffix}")
        for store in opened:
            store.close()

    def test_an_old_table_gets_the_columns_and_its_rows_are_found(
        self, any_store: EmbeddingStore, store_on_table: Callable[[str], EmbeddingStore]
    ) -> None:
        table = f"textless_{uuid.uuid4().hex[:10]}"
        sql(any_store)._command(self.OLD_TABLE.replace("{table}", table))
        old = store_on_table(table)
        old._schema_ready = True  # type: ignore[attr-defined]  # as the earlier release wrote it
        old.insert(  # an insert names its columns: the earlier release's exactly
            [
                row("1", unit(1, 0, 0), name="$pageview", text="A page was viewed"),
                row("2", unit(0, 1, 0), version=1, name="Invoice paid", text="billing"),
            ]
        )
        old.insert([row("2", [], version=2, deleted=1)])

        store = store_on_table(table)
        assert store.ensure_schema() == 0

        assert ids(store.text_search("action", 1, "pv", 10, 1)) == ["1"]
        assert store.text_search("action", 1, "invoice", 10, 1) == []

        def counted() -> int:
            ((rows,),) = sql(store)._query(f"SELECT sum(rows) FROM {table}_terms WHERE term = ''", {})
            return int(rows)

        before = counted()
        store.insert([row("3", unit(0, 0, 1), name="Invoice sent", text="billing")])
        assert ids(store.text_search("action", 1, "invoice", 10, 1)) == ["3"]
        columns = {
            str(found[0])
            for found in sql(store)._query(
                "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
                {"t": table},
            )
        }
        assert {"tokens", "tokens_count"} <= columns
        # The live rows written before (2, or 1 once a merge dropped the deleted one), counted when
        # the terms table was made, and the row written after, counted as it was written.
        assert before in (1, 2) and counted() == before + 1

    def test_a_server_without_the_text_index_still_searches_and_gets_it_later(
        self, any_store: EmbeddingStore, store_on_table: Callable[[str], EmbeddingStore]
    ) -> None:
        table = f"noindex_{uuid.uuid4().hex[:10]}"
        first = store_on_table(table)
        first._has_text_index = lambda: False  # type: ignore[attr-defined]  # ClickHouse before 26.2
        first.ensure_schema()
        first.insert(catalogue())

        def indexes() -> list[str]:
            return [
                str(found[0])
                for found in sql(first)._query(
                    "SELECT name FROM system.data_skipping_indices WHERE database = currentDatabase() "
                    "AND table = {t:String}",
                    {"t": table},
                )
            ]

        assert indexes() == []
        assert ids(first.text_search("action", 1, "pv", 10, 1))[0] == "pageview"

        upgraded = store_on_table(table)
        upgraded.ensure_schema()

        assert indexes() == ["tokens_index"]
        assert ids(upgraded.text_search("action", 1, "pv", 10, 1))[0] == "pageview"


class TestInsertsBuildTheTextIndex:
    """Every part an insert writes has the text index (the HNSW graph is left to merges)."""

    def test_parts_written_by_inserts_are_indexed(self, any_store: EmbeddingStore) -> None:
        with merges_stopped(any_store):
            for number in range(3):
                any_store.insert([row(f"{number}-{i}", unit(1, i, 0), name=f"Report {i}") for i in range(5)])

            parts = sql(any_store)._query(
                "SELECT name, secondary_indices_uncompressed_bytes FROM system.parts "
                "WHERE database = currentDatabase() AND table = {t:String} AND active",
                {"t": any_store.table},
            )

        assert len(parts) == 3
        assert all(int(size) > 0 for _, size in parts), parts
