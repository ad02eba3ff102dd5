"""Search evaluation: the metric arithmetic, and `manage.py evaluate_search` on the vectorized demo data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management.base import CommandError

from app.demo_data import seed_demo
from app.models import Team
from entity_vectors import search_entities
from entity_vectors.conf.providers import eval_queries_path
from entity_vectors.models import DomainVersion
from entity_vectors.search.distractors import store_with_distractors
from entity_vectors.search.evaluation import (
    EvaluationError,
    EvaluationResult,
    Progress,
    QueryOutcome,
    evaluate,
    first_rank,
    load_queries,
    summarize,
)
from entity_vectors.search.query import effective_mode
from entity_vectors.search.tuning import fusion_of
from entity_vectors.store import EmbeddingStore, get_store
from entity_vectors.store.fusion import Fusion
from tests.conftest import run_command, run_workflow

DOMAINS = ("action", "cohort", "event_definition")
MODES = ("vector", "text", "hybrid")
HEADER_LINE = f"{'domain':<18} {'mode':<7} {'queries':>7} {'recall@1':>9} {'recall@5':>9} {'MRR':>6}"
ROW = re.compile(r"^(\S+)\s+(vector|text|hybrid)\s+(\d+)\s+(\d\.\d{3})\s+(\d\.\d{3})\s+(\d\.\d{3})$")


@pytest.fixture
def vectorized_demo(offline: None, embedded_store: EmbeddingStore) -> None:
    """The demo data, every domain vectorized in-process by the offline providers."""
    seed_demo()
    for domain in DOMAINS:
        assert run_workflow(domain).status == "succeeded"


def table_rows(out: str) -> list[tuple[str, str, int, float, float, float]]:
    """The rows of the printed table (the lines after its header)."""
    lines = out.splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.split() == ["domain", "mode", "queries", "recall@1", "recall@5", "MRR"]
    )
    rows = []
    for line in lines[start + 1 :]:
        match = ROW.match(line)
        if not match:
            break
        domain, mode, queries, at_1, at_5, mrr = match.groups()
        rows.append((domain, mode, int(queries), float(at_1), float(at_5), float(mrr)))
    return rows


def write_queries(path: Path, queries: list[dict[str, Any]]) -> Path:
    """A labelled set file."""
    path.write_text(json.dumps({"queries": queries}), encoding="utf-8")
    return path


class TestMetrics:
    """recall@k and MRR from where each query's first expected entity ranked."""

    def test_arithmetic_per_domain_and_overall(self) -> None:
        outcomes = [
            QueryOutcome("a", "vector", "exact", 1),
            QueryOutcome("a", "vector", "typo", 3),
            QueryOutcome("a", "vector", "typo", None),
            QueryOutcome("a", "vector", "paraphrase", 6),
            QueryOutcome("b", "vector", "exact", 2),
            QueryOutcome("a", "text", "exact", 5),
        ]

        results = summarize(outcomes, ["a", "b"], ["vector", "text"])

        by_key = {(result.domain, result.mode): result for result in results}
        assert [(r.domain, r.mode) for r in results] == [
            ("a", "vector"),
            ("a", "text"),
            ("b", "vector"),
            ("b", "text"),
            ("all", "vector"),
            ("all", "text"),
        ]
        a = by_key["a", "vector"]
        assert (a.queries, a.recall_at_1, a.recall_at_5) == (4, 0.25, 0.5)
        assert a.mrr == pytest.approx((1 + 1 / 3 + 0 + 1 / 6) / 4)
        overall = by_key["all", "vector"]
        assert (overall.queries, overall.recall_at_1, overall.recall_at_5) == (5, 0.2, 0.6)
        assert overall.mrr == pytest.approx((1 + 1 / 3 + 1 / 6 + 1 / 2) / 5)
        assert by_key["b", "text"].queries == 0 and by_key["b", "text"].mrr == 0.0
        assert by_key["a", "text"].recall_at(1) == 0.0 and by_key["a", "text"].recall_at(5) == 1.0
        typo = a.kind("typo")
        assert typo is not None and (typo.queries, typo.recall_at_5) == (2, 0.5)
        assert typo.mrr == pytest.approx(1 / 6)
        assert a.kind("cross_lingual") is None

    def test_first_rank_stops_at_ten(self) -> None:
        hits = [str(n) for n in range(1, 13)]
        assert first_rank(hits, {"3", "1"}) == 1
        assert first_rank(hits, {"10"}) == 10
        assert first_rank(hits, {"11"}) is None
        assert first_rank([], {"1"}) is None


class TestLabelledSet:
    """The labelled set's location and shape."""

    def test_default_is_the_projects_app_file_and_the_setting_wins(
        self, settings: Any, tmp_path: Path
    ) -> None:
        assert eval_queries_path() == Path(django_settings.BASE_DIR) / "app" / "search_eval.json"
        assert len(load_queries()) == 173

        settings.ENTITY_VECTORS_EVAL_QUERIES = str(tmp_path / "other.json")
        assert eval_queries_path() == tmp_path / "other.json"

    def test_malformed_entries_are_named(self, tmp_path: Path) -> None:
        path = write_queries(
            tmp_path / "q.json", [{"domain": "action", "team": "T", "query": "x", "expected": []}]
        )
        with pytest.raises(EvaluationError, match=r"query 0: 'expected' must be a non-empty list"):
            load_queries(path)


@pytest.mark.django_db
class TestEvaluateSearchCommand:
    """The table on the demo data, the recall bar, and bad arguments."""

    def test_prints_every_domain_and_mode_and_passes_a_low_bar(self, vectorized_demo: None) -> None:
        out, _ = run_command("evaluate_search", "--min-recall", "0.05", "--kinds")

        assert "173 labelled queries" in out
        assert (
            "action v1 (hashing, 256 dimensions), cohort v1 (hashing, 256 dimensions), event_definition v1 "
            "(hashing, 256 dimensions)"
        ) in out
        rows = table_rows(out)
        assert [(domain, mode) for domain, mode, *_ in rows] == [
            (domain, mode) for domain in (*DOMAINS, "all") for mode in MODES
        ]
        for _, _, queries, *figures in rows:
            assert queries > 0
            assert all(0.0 <= figure <= 1.0 for figure in figures)
        assert {queries for domain, _, queries, *_ in rows if domain == "all"} == {173}
        assert "recall@5 by query kind" in out and "cross_lingual" in out
        assert "every domain and mode reaches recall@5 >= 0.05" in out

    def test_progress_is_printed_before_the_table_one_line_per_domain_and_mode(
        self, vectorized_demo: None
    ) -> None:
        out, _ = run_command("evaluate_search", "--mode", "vector", "--mode", "text")

        lines = out.splitlines()
        table = lines.index(HEADER_LINE)
        assert lines[0] == "searching: 346 searches (each labelled query in each mode)"
        finished = [line for line in lines[:table] if "recall@5" in line]
        assert [line.split(":")[0].strip() for line in finished] == [
            f"{domain}/{mode}" for domain in DOMAINS for mode in ("vector", "text")
        ]
        assert finished[-1].startswith("  event_definition/text: 63/63 queries, recall@5 0.")
        assert "(346/346 searches, " in finished[-1]
        # Each domain and mode's recall@5 is the one the table shows.
        shown = {(domain, mode): at_5 for domain, mode, _, _, at_5, _ in table_rows(out)}
        for line in finished:
            where, rest = line.strip().split(": ", 1)
            domain, mode = where.split("/")
            assert float(rest.split("recall@5 ")[1].split()[0]) == shown[(domain, mode)]

    def test_the_python_api_reports_each_search_when_asked(self, vectorized_demo: None) -> None:
        heard: list[Progress] = []

        results = evaluate(
            domains=["cohort"], modes=["text", "hybrid"], on_progress=heard.append, progress_seconds=0
        )

        queries = results[0].queries
        assert [progress.done for progress in heard] == list(range(2 * queries + 1))
        assert {progress.total for progress in heard} == {2 * queries}
        done = [progress.finished for progress in heard if progress.finished is not None]
        assert done == [result for result in results if result.domain == "cohort"]
        assert [(p.mode, p.queries_done) for p in heard[1:3]] == [("text", 1), ("text", 2)]

    def test_a_bar_not_reached_fails_naming_domain_and_mode(self, vectorized_demo: None) -> None:
        with pytest.raises(CommandError) as caught:
            run_command("evaluate_search", "--domain", "action", "--mode", "vector", "--min-recall", "0.99")

        message = str(caught.value)
        assert message.startswith("recall@5 is below --min-recall 0.99 for ")
        assert re.search(r"action/vector 0\.\d{3}", message)

    def test_recall_at_one_is_checked_with_at(self, vectorized_demo: None) -> None:
        with pytest.raises(CommandError, match=r"recall@1 is below --min-recall 0.95 for .*cohort/text"):
            run_command(
                "evaluate_search", "--domain", "cohort", "--mode", "text", "--min-recall", "0.95", "--at", "1"
            )

    def test_python_api_matches_the_domains_asked(self, vectorized_demo: None) -> None:
        results = evaluate(domains=["event_definition"], modes=["hybrid"])

        assert [(r.domain, r.mode, r.queries) for r in results] == [
            ("event_definition", "hybrid", 63),
            ("all", "hybrid", 63),
        ]

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            pytest.param(
                ["--min-recall", "1.01"], r"--min-recall=1.01: must be a number from 0 to 1", id="above-one"
            ),
            pytest.param(
                ["--min-recall", "-0.1"], r"--min-recall=-0.1: must be a number from 0 to 1", id="negative"
            ),
            pytest.param(
                ["--min-recall", "nan"], r"--min-recall=nan: must be a number from 0 to 1", id="nan"
            ),
            pytest.param(["--at", "3"], r"--at=3: recall is measured at 1 or 5", id="at"),
            pytest.param(["--mode", "fuzzy"], r"--mode=fuzzy: unknown search mode", id="mode"),
            pytest.param(["--domain", "dashboards"], r"unknown domain 'dashboards'", id="domain"),
            pytest.param(
                ["--queries", "/nonexistent/q.json"], r"/nonexistent/q.json does not exist", id="file"
            ),
        ],
    )
    def test_bad_arguments(self, offline: None, args: list[str], message: str) -> None:
        with pytest.raises(CommandError, match=message):
            run_command("evaluate_search", *args)

    def test_an_unknown_entity_name_is_a_clear_error(self, offline: None, tmp_path: Path) -> None:
        seed_demo()
        path = write_queries(
            tmp_path / "q.json",
            [
                {"domain": "action", "team": "Hedgebox Web", "query": "x", "expected": ["No such action"]},
                {"domain": "cohort", "team": "Nobody", "query": "y", "expected": ["Beta testers"]},
            ],
        )

        with pytest.raises(CommandError) as caught:
            run_command("evaluate_search", "--queries", str(path))

        assert "action 'No such action' of team 'Hedgebox Web' (expected for 'x') does not exist" in str(
            caught.value
        )
        assert "team 'Nobody': no such team" in str(caught.value)


@pytest.fixture
def wordllama_demo(settings: Any, embedded_store: EmbeddingStore) -> None:
    """The demo data vectorized by the default offline embedder (wordllama), template summaries."""
    settings.ENTITY_VECTORS_SUMMARIZER = "template"
    settings.ENTITY_VECTORS_EMBEDDER = "wordllama"
    settings.ENTITY_VECTORS_EMBEDDING_DIMENSIONS = 256
    seed_demo()
    for domain in DOMAINS:
        assert run_workflow(domain).status == "succeeded"


def overall(results: list[EvaluationResult], mode: str) -> EvaluationResult:
    """The `all` row of one mode."""
    return next(result for result in results if result.domain == "all" and result.mode == mode)


@pytest.mark.django_db
class TestHybridHelps:
    """With the default embedder, hybrid search is at least as good as either ranking alone."""

    @pytest.mark.parametrize(
        "queries",
        [
            pytest.param("search_eval.json", id="labelled-set"),
            pytest.param("search_eval_users.json", id="users-set-never-tuned-on"),
        ],
    )
    def test_hybrid_reaches_the_best_single_mode(self, wordllama_demo: None, queries: str) -> None:
        results = evaluate(queries_path=Path(django_settings.BASE_DIR) / "app" / queries)

        hybrid, vector, text = (overall(results, mode) for mode in ("hybrid", "vector", "text"))
        for single in (vector, text):
            assert hybrid.recall_at_1 >= single.recall_at_1, (hybrid, single)
            assert hybrid.mrr >= single.mrr, (hybrid, single)

    def test_choose_fusion_records_the_fusion_and_the_default_mode_with_the_version(
        self, wordllama_demo: None
    ) -> None:
        out, _ = run_command("evaluate_search", "--choose-fusion")

        (line,) = [line for line in out.splitlines() if line.startswith("recorded: ")]
        assert line.startswith("recorded: wordllama: hybrid fuses by score (text weight ")
        assert line.endswith("default mode hybrid")
        for domain in DOMAINS:
            record = DomainVersion.objects.get(domain=domain, embedding_version=1)
            assert record.search_mode == "hybrid" and record.search_tuned_at is not None
            assert record.fusion["method"] == "score" and 0 < record.fusion["text_weight"] < 1
            assert fusion_of(record) == Fusion("score", record.fusion["text_weight"])
            assert effective_mode(domain) == "hybrid"
        team = Team.objects.get(name="Hedgebox Web")
        (first, *_) = search_entities("event_definition", team.id, "pv")
        assert first.properties["name"] == "$pageview"


@pytest.mark.django_db
class TestDistractors:
    """`--distractors N`: the labelled set among N generated entities more, in a scratch copy."""

    def test_the_set_is_searched_among_them_and_the_served_rows_are_left_alone(
        self, vectorized_demo: None, embedded_store: EmbeddingStore
    ) -> None:
        before = sorted((row.team_id, row.id, row.version) for row in embedded_store.latest_rows("cohort"))
        tables_before = set(table_names(embedded_store))

        out, _ = run_command("evaluate_search", "--domain", "cohort", "--mode", "text", "--distractors", "40")

        assert "distractors: 40 cohort entities in each of 3 teams" in out
        assert "among 40 generated entities more per team and domain" in out
        ((domain, mode, queries, *_),) = [row for row in table_rows(out) if row[0] == "cohort"]
        assert (domain, mode, queries) == ("cohort", "text", 54)
        assert (
            sorted((row.team_id, row.id, row.version) for row in embedded_store.latest_rows("cohort"))
            == before
        )
        assert set(table_names(embedded_store)) == tables_before  # the scratch copy is gone

    def test_the_generated_entities_are_searched(self, vectorized_demo: None) -> None:
        team = Team.objects.get(name="Burrow")
        record = DomainVersion.objects.get(domain="event_definition", embedding_version=1)
        base = get_store()
        with store_with_distractors(base, [(record, [team.id])], 50) as store:
            hits = store.text_search("event_definition", team.id, "$pageleave", 5, 1)
            assert hits[0].properties["name"] == "$pageleave"
            rows = store.latest_rows("event_definition")
            assert {row.team_id for row in rows} == {team.id}  # only the team searched is copied
            real = [row for row in base.latest_rows("event_definition") if row.team_id == team.id]
            assert len(rows) == len(real) + 50

    def test_a_negative_count_is_refused(self, offline: None) -> None:
        with pytest.raises(CommandError, match=r"--distractors=-1: must be from 0 to 1,000,000"):
            run_command("evaluate_search", "--distractors", "-1")


def table_names(store: EmbeddingStore) -> list[str]:
    """Every table of the store's database."""
    return [
        str(found[0])
        for found in store._query(  # type: ignore[attr-defined]
            "SELECT name FROM system.tables WHERE database = currentDatabase()", {}
        )
    ]
