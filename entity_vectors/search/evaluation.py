"""Score search against a hand-labelled query set: recall@1, recall@5 and MRR per domain and mode.

The labelled set is JSON: `{"queries": [{"domain", "team", "query", "expected", "kind"}, ...]}`,
where `team` is a team's name, `expected` the names of the entities a person would accept as an
answer, and `kind` what the query tests (exact, partial, typo, paraphrase, concept,
cross_lingual, ...). A query is a hit at k if any expected entity is among the first k results;
its reciprocal rank is 1 / the rank of the first expected entity in the top 10 (0 if absent).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.utils import timezone

from entity_vectors.conf.providers import eval_queries_path
from entity_vectors.core.embedding_versions import get_version, served_version
from entity_vectors.core.registry import get_entity_config
from entity_vectors.exceptions import PermanentError
from entity_vectors.models import DomainVersion
from entity_vectors.search.distractors import store_with_distractors
from entity_vectors.search.query import MODES, check_team_consent, rankings
from entity_vectors.search.tuning import CHOICES, Choice, choose, fusion_of
from entity_vectors.store import EmbeddingStore, EntityHit, get_store
from entity_vectors.store.base import HYBRID_TEXT_CANDIDATES, HYBRID_VECTOR_CANDIDATES
from entity_vectors.store.fusion import Fusion, fuse

ALL_DOMAINS = "all"
MRR_DEPTH = 10
SEARCH_LIMIT = max(5, MRR_DEPTH)
# Seconds between two progress reports within one domain and mode (each one's end is reported too).
PROGRESS_SECONDS = 2.0


class EvaluationError(PermanentError, ValueError):
    """The labelled set cannot be read or does not match the data (unknown team or entity name)."""


@dataclass(frozen=True)
class LabelledQuery:
    """One labelled query: what is asked, of which team and domain, and the acceptable answers."""

    domain: str
    team: str
    query: str
    expected: tuple[str, ...]
    kind: str


@dataclass(frozen=True)
class ResolvedQuery:
    """A labelled query with its team id and the ids (as search returns them) of its answers."""

    labelled: LabelledQuery
    team_id: int
    expected_ids: frozenset[str]


@dataclass(frozen=True)
class QueryOutcome:
    """Where one query's first expected entity ranked in one mode (None: not in the top 10)."""

    domain: str
    mode: str
    kind: str
    rank: int | None


@dataclass(frozen=True)
class KindScore:
    """The scores of the queries of one kind within a domain and mode."""

    kind: str
    queries: int
    recall_at_1: float
    recall_at_5: float
    mrr: float


@dataclass(frozen=True)
class EvaluationResult:
    """The scores of one domain (or `all`) searched in one mode, with a breakdown by query kind."""

    domain: str
    mode: str
    queries: int
    recall_at_1: float
    recall_at_5: float
    mrr: float
    kinds: tuple[KindScore, ...] = ()

    def recall_at(self, k: int) -> float:
        """recall@1 or recall@5."""
        if k == 1:
            return self.recall_at_1
        if k == 5:
            return self.recall_at_5
        raise ValueError(f"k={k!r}: recall is measured at 1 or 5")

    def kind(self, name: str) -> KindScore | None:
        """The scores of one query kind, or None if the set has none of that kind here."""
        return next((score for score in self.kinds if score.kind == name), None)


def _text(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise EvaluationError(f"{where}: {key!r} must be a non-empty text, got {value!r}")
    return value


def load_queries(path: Path | str | None = None) -> list[LabelledQuery]:
    """Read the labelled set (ENTITY_VECTORS_EVAL_QUERIES by default) and check its shape."""
    source = Path(path) if path is not None else eval_queries_path()
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvaluationError(f"labelled queries file {source} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"labelled queries file {source} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"labelled queries file {source} is not JSON: {exc}") from None
    entries = document.get("queries") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise EvaluationError(f'{source}: expected a non-empty list under "queries"')
    queries = []
    for position, entry in enumerate(entries):
        where = f"{source}: query {position}"
        if not isinstance(entry, dict):
            raise EvaluationError(f"{where}: must be an object, got {entry!r}")
        expected = entry.get("expected")
        if (
            not isinstance(expected, list)
            or not expected
            or not all(isinstance(name, str) and name for name in expected)
        ):
            raise EvaluationError(f"{where}: 'expected' must be a non-empty list of entity names")
        queries.append(
            LabelledQuery(
                domain=_text(entry, "domain", where),
                team=_text(entry, "team", where),
                query=_text(entry, "query", where),
                expected=tuple(expected),
                kind=str(entry.get("kind") or "unlabelled"),
            )
        )
    return queries


def resolve_queries(queries: Sequence[LabelledQuery]) -> list[ResolvedQuery]:
    """Look up each query's team and expected entities by name; EvaluationError lists every miss."""
    team_ids: dict[tuple[str, str], int] = {}
    resolved: list[ResolvedQuery] = []
    problems: list[str] = []
    for labelled in queries:
        config = get_entity_config(labelled.domain)
        key = (labelled.domain, labelled.team)
        if key not in team_ids:
            team_model: Any = config.model_class._meta.get_field("team").related_model
            teams = list(team_model._default_manager.filter(name=labelled.team).values_list("pk", flat=True))
            if len(teams) != 1:
                problems.append(
                    f"team {labelled.team!r}: {'no such team' if not teams else f'{len(teams)} teams have that name'}"
                )
                team_ids[key] = -1
                continue
            team_ids[key] = int(teams[0])
        team_id = team_ids[key]
        if team_id < 0:
            continue
        ids: set[str] = set()
        for name in labelled.expected:
            found = config.get_queryset().filter(team_id=team_id, name=name).values_list("pk", flat=True)
            if not found:
                problems.append(
                    f"{labelled.domain} {name!r} of team {labelled.team!r} (expected for {labelled.query!r}) "
                    "does not exist"
                )
            ids.update(str(pk) for pk in found)
        if ids:
            resolved.append(ResolvedQuery(labelled=labelled, team_id=team_id, expected_ids=frozenset(ids)))
    if problems:
        unique = list(dict.fromkeys(problems))
        shown = "; ".join(unique[:10]) + (f"; and {len(unique) - 10} more" if len(unique) > 10 else "")
        raise EvaluationError(f"the labelled queries do not match the data: {shown}")
    return resolved


def first_rank(hit_ids: Sequence[str], expected_ids: Iterable[str], depth: int = MRR_DEPTH) -> int | None:
    """The 1-based rank of the first expected id among the first `depth` hits, or None."""
    wanted = set(expected_ids)
    for rank, hit_id in enumerate(hit_ids[:depth], start=1):
        if hit_id in wanted:
            return rank
    return None


def _scores(outcomes: Sequence[QueryOutcome]) -> tuple[int, float, float, float]:
    count = len(outcomes)
    if not count:
        return 0, 0.0, 0.0, 0.0
    at_1 = sum(1 for outcome in outcomes if outcome.rank is not None and outcome.rank <= 1)
    at_5 = sum(1 for outcome in outcomes if outcome.rank is not None and outcome.rank <= 5)
    reciprocal = sum(1.0 / outcome.rank for outcome in outcomes if outcome.rank is not None)
    return count, at_1 / count, at_5 / count, reciprocal / count


def _result(domain: str, mode: str, outcomes: Sequence[QueryOutcome]) -> EvaluationResult:
    count, at_1, at_5, mrr = _scores(outcomes)
    kinds = []
    for kind in sorted({outcome.kind for outcome in outcomes}):
        kind_count, kind_at_1, kind_at_5, kind_mrr = _scores([o for o in outcomes if o.kind == kind])
        kinds.append(KindScore(kind, kind_count, kind_at_1, kind_at_5, kind_mrr))
    return EvaluationResult(domain, mode, count, at_1, at_5, mrr, tuple(kinds))


def summarize(
    outcomes: Sequence[QueryOutcome], domains: Sequence[str], modes: Sequence[str]
) -> list[EvaluationResult]:
    """One result per domain and mode (domains in order, modes within), then an `all` row per mode."""
    results = [
        _result(domain, mode, [o for o in outcomes if o.domain == domain and o.mode == mode])
        for domain in domains
        for mode in modes
    ]
    results += [_result(ALL_DOMAINS, mode, [o for o in outcomes if o.mode == mode]) for mode in modes]
    return results


@dataclass(frozen=True)
class Progress:
    """How far an evaluation is: the searches done of all it makes, and the domain and mode at hand.

    Reported once before the first search (`done` 0), at most every PROGRESS_SECONDS while a domain
    and mode are searched, and when each is done (`finished`: its scores).
    """

    domain: str
    mode: str
    queries_done: int
    queries: int
    done: int
    total: int
    elapsed: float
    finished: EvaluationResult | None = None


def _check_modes(modes: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(modes))
    if not chosen:
        raise EvaluationError("no search mode to evaluate")
    unknown = [mode for mode in chosen if mode not in MODES]
    if unknown:
        raise EvaluationError(f"unknown search mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    return chosen


@dataclass(frozen=True)
class Evaluation:
    """An evaluation's scores, and the fusions it chose (with `choose_fusion`)."""

    results: list[EvaluationResult]
    choices: list[Choice]


def evaluate(
    domains: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    queries_path: Path | str | None = None,
    embedding_version: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_seconds: float = PROGRESS_SECONDS,
) -> list[EvaluationResult]:
    """Search every labelled query of `domains` (all in the set by default) in each mode and score it.

    `on_progress` hears how far it is (see `Progress`): a search takes a provider call, and the
    shipped set makes hundreds.
    """
    return run_evaluation(
        domains, modes, queries_path, embedding_version, on_progress, progress_seconds
    ).results


def run_evaluation(
    domains: Sequence[str] | None = None,
    modes: Sequence[str] = MODES,
    queries_path: Path | str | None = None,
    embedding_version: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_seconds: float = PROGRESS_SECONDS,
    *,
    distractors: int = 0,
    choose_fusion: bool = False,
    on_setup: Callable[[str], None] | None = None,
) -> Evaluation:
    """`evaluate`, optionally among `distractors` generated entities more per team and domain (in a
    scratch copy of the searched rows, see `distractors.store_with_distractors`), and optionally
    choosing and recording each embedder's fusion (`choose_fusion`, see `tuning`).

    Each query's vector and text rankings are searched once (as deep as hybrid
    search takes them) and each mode is scored from them: hybrid fuses them as the version's
    recorded fusion says, exactly as `search_entities` does.
    """
    chosen_modes = _check_modes(modes)
    queries = load_queries(queries_path)
    labelled_domains = list(dict.fromkeys(query.domain for query in queries))
    chosen_domains = list(dict.fromkeys(domains)) if domains else labelled_domains
    for domain in chosen_domains:
        get_entity_config(domain)  # UnknownDomainError names the registered domains
        if domain not in labelled_domains:
            raise EvaluationError(
                f"the labelled set has no queries for domain {domain!r}; it has {', '.join(labelled_domains)}"
            )
    if distractors < 0:
        raise EvaluationError(f"distractors={distractors!r}: must be 0 or more")
    resolved = resolve_queries([query for query in queries if query.domain in chosen_domains])
    for domain, team_id in dict.fromkeys((item.labelled.domain, item.team_id) for item in resolved):
        check_team_consent(domain, team_id)  # a query is sent to the embeddings provider
    records: dict[str, DomainVersion | None] = {}
    for domain in chosen_domains:
        version = served_version(domain) if embedding_version is None else embedding_version
        records[domain] = get_version(domain, version)
    base = get_store()
    if not distractors:
        return _evaluate(
            base,
            resolved,
            chosen_domains,
            chosen_modes,
            records,
            on_progress,
            progress_seconds,
            choose_fusion,
        )
    groups = [
        (record, sorted({item.team_id for item in resolved if item.labelled.domain == domain}))
        for domain, record in records.items()
        if record is not None
    ]
    with store_with_distractors(base, groups, distractors, on_setup) as store:
        return _evaluate(
            store,
            resolved,
            chosen_domains,
            chosen_modes,
            records,
            on_progress,
            progress_seconds,
            choose_fusion,
        )


def _evaluate(
    store: EmbeddingStore,
    resolved: Sequence[ResolvedQuery],
    chosen_domains: Sequence[str],
    chosen_modes: Sequence[str],
    records: dict[str, DomainVersion | None],
    on_progress: Callable[[Progress], None] | None,
    progress_seconds: float,
    choose_fusion: bool,
) -> Evaluation:
    report = on_progress or (lambda progress: None)
    started = time.monotonic()
    total = len(resolved) * len(chosen_modes)
    done = 0
    report(Progress("", "", 0, 0, 0, total, 0.0))
    lists = _Rankings(store, records, both=choose_fusion)
    outcomes = []
    for domain in chosen_domains:
        items = [item for item in resolved if item.labelled.domain == domain]
        for mode in chosen_modes:
            group: list[QueryOutcome] = []
            reported = time.monotonic()
            for item in items:
                group.append(_outcome(item, mode, lists.ranking(item, mode)))
                done += 1
                now = time.monotonic()
                last = len(group) == len(items)
                if last or now - reported >= progress_seconds:
                    reported = now
                    report(
                        Progress(
                            domain,
                            mode,
                            len(group),
                            len(items),
                            done,
                            total,
                            now - started,
                            finished=_result(domain, mode, group) if last else None,
                        )
                    )
            outcomes.extend(group)
    choices: list[Choice] = []
    if choose_fusion:
        choices = lists.choose([item for item in resolved if item.labelled.domain in chosen_domains])
        if "hybrid" in chosen_modes:  # score hybrid again as the versions now fuse
            outcomes = [
                _outcome(item, "hybrid", lists.ranking(item, "hybrid"))
                if outcome.mode == "hybrid"
                else outcome
                for item, outcome in _pair(outcomes, resolved, chosen_domains, chosen_modes)
            ]
    return Evaluation(summarize(outcomes, chosen_domains, chosen_modes), choices)


def _pair(
    outcomes: Sequence[QueryOutcome],
    resolved: Sequence[ResolvedQuery],
    chosen_domains: Sequence[str],
    chosen_modes: Sequence[str],
) -> list[tuple[ResolvedQuery, QueryOutcome]]:
    """Each outcome with its query, in the order the outcomes were made."""
    order = [
        item
        for domain in chosen_domains
        for _mode in chosen_modes
        for item in resolved
        if item.labelled.domain == domain
    ]
    return list(zip(order, outcomes, strict=True))


class _Rankings:
    """Each query's vector and text rankings, searched once, and the modes made of them."""

    def __init__(self, store: EmbeddingStore, records: dict[str, DomainVersion | None], both: bool) -> None:
        self.store = store
        self.records = records
        self.both = both
        self.found: dict[tuple[int, str, str], tuple[list[EntityHit] | None, list[EntityHit] | None]] = {}

    def _lists(
        self, item: ResolvedQuery, vector: bool, text: bool
    ) -> tuple[list[EntityHit], list[EntityHit]]:
        key = (item.team_id, item.labelled.domain, item.labelled.query)
        vector_hits, text_hits = self.found.get(key, (None, None))
        record = self.records[item.labelled.domain]
        need_vector = (vector or self.both) and vector_hits is None
        need_text = (text or self.both) and text_hits is None
        if record is not None and (need_vector or need_text):
            new_vector, new_text = rankings(
                self.store,
                record,
                item.team_id,
                item.labelled.query,
                HYBRID_VECTOR_CANDIDATES,
                HYBRID_TEXT_CANDIDATES,
                vector=need_vector,
                text=need_text,
            )
            vector_hits = new_vector if need_vector else vector_hits
            text_hits = new_text if need_text else text_hits
            self.found[key] = (vector_hits, text_hits)
        return vector_hits or [], text_hits or []

    def ranking(self, item: ResolvedQuery, mode: str, fusion: Fusion | None = None) -> list[str]:
        """The ids `mode` ranks first for a query (SEARCH_LIMIT of them)."""
        vector_hits, text_hits = self._lists(item, mode != "text", mode != "vector")
        if mode == "vector":
            hits = vector_hits
        elif mode == "text":
            hits = text_hits
        else:
            chosen = fusion or fusion_of(self.records[item.labelled.domain])
            hits = fuse(vector_hits, text_hits, chosen, SEARCH_LIMIT)
        return [hit.id for hit in hits[:SEARCH_LIMIT]]

    def choose(self, items: Sequence[ResolvedQuery]) -> list[Choice]:
        """Per embedder, the best fusion of `CHOICES` over its queries, recorded with its versions."""
        by_embedder: dict[str, list[ResolvedQuery]] = {}
        for item in items:
            record = self.records[item.labelled.domain]
            if record is not None:
                by_embedder.setdefault(record.identity, []).append(item)
        choices = []
        for embedder, chosen_items in by_embedder.items():
            fused = {
                fusion: [
                    first_rank(self.ranking(item, "hybrid", fusion), item.expected_ids)
                    for item in chosen_items
                ]
                for fusion in CHOICES
            }
            choice = choose(
                embedder,
                [first_rank(self.ranking(item, "vector"), item.expected_ids) for item in chosen_items],
                [first_rank(self.ranking(item, "text"), item.expected_ids) for item in chosen_items],
                fused,
            )
            for record in {self.records[item.labelled.domain] for item in chosen_items}:
                if record is not None:
                    record.fusion = choice.fusion.as_dict()
                    record.search_mode = choice.mode
                    record.search_tuned_at = timezone.now()
                    record.save(update_fields=["fusion", "search_mode", "search_tuned_at"])
            choices.append(choice)
        return choices


def _outcome(item: ResolvedQuery, mode: str, ranked: Sequence[str]) -> QueryOutcome:
    """Where one query's first expected entity ranked in one mode."""
    return QueryOutcome(
        domain=item.labelled.domain,
        mode=mode,
        kind=item.labelled.kind,
        rank=first_rank(ranked, item.expected_ids),
    )
