"""Promote an embedding version: full coverage and the search evaluation gate, then one switch.

The second step of a model migration (`backfill` backfills, `retirement`
retires). The served version lives in the database, so every process switches at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from entity_vectors.core.embedding_versions import get_version, served_version
from entity_vectors.core.registry import get_entity_config
from entity_vectors.exceptions import SearchError
from entity_vectors.lifecycle.backfill import (
    Coverage,
    MigrationError,
    _check_version_number,
    _registered,
    coverage,
)
from entity_vectors.models import DomainVersion

DEFAULT_MAX_RECALL_DROP = 0.02


@dataclass(frozen=True)
class Gate:
    """The search evaluation gate: recall@5 of the candidate against the served version."""

    status: str  # "passed", "failed" or "skipped"
    candidate_recall: float | None = None
    served_recall: float | None = None
    queries: int = 0
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP
    note: str = ""

    @property
    def passed(self) -> bool:
        """Whether the gate lets the promotion through (a skipped gate does)."""
        return self.status != "failed"

    def describe(self, version: int, served: int) -> str:
        """One line for the command's output."""
        if self.status == "skipped":
            return f"evaluation gate skipped: {self.note}"
        served_text = "n/a" if self.served_recall is None else f"{self.served_recall:.3f}"
        line = (
            f"evaluation gate {self.status}: recall@5 {self.candidate_recall or 0.0:.3f} at v{version} "
            f"vs {served_text} at v{served} ({self.queries} labelled queries, allowed drop "
            f"{self.max_recall_drop:.3f})"
        )
        return f"{line}; {self.note}" if self.note else line


@dataclass(frozen=True)
class PromotionCheck:
    """Whether version N may be promoted: its coverage and the evaluation gate (unless forced)."""

    domain: str
    version: int
    served: int
    coverage: Coverage
    gate: Gate | None
    forced: bool = False
    already_serving: bool = False

    @property
    def problems(self) -> list[str]:
        """Why the promotion is refused (empty when it may go ahead)."""
        if self.forced or self.already_serving:
            return []
        problems = []
        if not self.coverage.complete:
            problems.append(
                f"{self.coverage.missing} of {self.coverage.live} live {self.domain} entities have no "
                f"confirmed row at version {self.version} (covered {self.coverage.covered}); run "
                f"`manage.py migrate_embeddings --domain {self.domain} --to-version {self.version}` again "
                "(or wait for the next scheduled run, which writes every tracked version)"
            )
        if self.gate is not None and not self.gate.passed:
            problems.append(self.gate.describe(self.version, self.served))
        return problems

    @property
    def passed(self) -> bool:
        """Whether the promotion may go ahead."""
        return not self.problems


@dataclass(frozen=True)
class Promotion:
    """What `promote` did: the check, and whether N now serves (and which version it replaced)."""

    check: PromotionCheck
    promoted: bool
    previous: int | None = None


def _recall(domain: str, version: int, queries_path: Path | str | None) -> tuple[float, int]:
    from entity_vectors.search.evaluation import evaluate

    results = evaluate(
        domains=[domain], modes=("vector",), queries_path=queries_path, embedding_version=version
    )
    result = next(item for item in results if item.domain == domain)
    return result.recall_at_5, result.queries


def evaluation_gate(
    domain: str,
    version: int,
    served: int,
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP,
    queries_path: Path | str | None = None,
) -> Gate:
    """recall@5 of `version` against `served` on the labelled queries of `domain` (vector search).

    Skipped (with a note) when the labelled set has no queries for the domain; failed when the
    candidate loses more than `max_recall_drop`, or when it cannot be evaluated at all.
    """
    from entity_vectors.search.evaluation import EvaluationError, load_queries

    try:
        labelled = {query.domain for query in load_queries(queries_path)}
    except EvaluationError as exc:
        return Gate(
            "failed", max_recall_drop=max_recall_drop, note=f"the labelled queries cannot be read: {exc}"
        )
    if domain not in labelled:
        return Gate(
            "skipped",
            max_recall_drop=max_recall_drop,
            note=f"the labelled query set has no queries for {domain} (ENTITY_VECTORS_EVAL_QUERIES)",
        )
    try:
        candidate, queries = _recall(domain, version, queries_path)
    except (EvaluationError, SearchError) as exc:
        return Gate(
            "failed",
            max_recall_drop=max_recall_drop,
            note=(
                f"version {version} cannot be evaluated: {exc}; point ENTITY_VECTORS_EVAL_QUERIES at "
                "labelled queries of your data, or pass --skip-evaluation"
            ),
        )
    note = ""
    baseline: float | None
    try:
        baseline, _ = _recall(domain, served, queries_path)
    except SearchError as exc:  # the served version cannot be searched as configured: nothing to keep
        baseline, note = None, f"the served version could not be evaluated ({exc})"
    passed = baseline is None or candidate >= baseline - max_recall_drop - 1e-9
    return Gate(
        "passed" if passed else "failed",
        candidate_recall=candidate,
        served_recall=baseline,
        queries=queries,
        max_recall_drop=max_recall_drop,
        note=note,
    )


def _promotable(domain: str, version: int) -> DomainVersion:
    get_entity_config(domain)
    _check_version_number(version)
    record = get_version(domain, version)
    if record is None:
        raise MigrationError(
            f"--to-version={version}: version {version} of {domain} was never registered (registered: "
            f"{_registered(domain)}); backfill it first: manage.py migrate_embeddings --domain {domain} "
            f"--to-version {version}"
        )
    if record.state == DomainVersion.State.RETIRED:
        raise MigrationError(
            f"--to-version={version}: version {version} of {domain} was retired; it cannot serve"
        )
    return record


def check_promotion(
    domain: str,
    version: int,
    *,
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP,
    force: bool = False,
    evaluate: bool = True,
    queries_path: Path | str | None = None,
) -> PromotionCheck:
    """Whether `version` may serve `domain`: full coverage and the evaluation gate (`force` skips both,
    `evaluate=False` only the gate). Raises MigrationError for a version that cannot serve at all."""
    if isinstance(max_recall_drop, bool) or not 0.0 <= max_recall_drop <= 1.0:
        raise MigrationError(f"--max-recall-drop={max_recall_drop!r}: must be a number from 0 to 1")
    record = _promotable(domain, version)
    served = served_version(domain)
    covered = coverage(domain, version)
    if record.is_served:
        return PromotionCheck(domain, version, served, covered, None, forced=force, already_serving=True)
    gate = None
    if evaluate and not force:
        gate = evaluation_gate(domain, version, served, max_recall_drop, queries_path)
    elif not force:
        gate = Gate("skipped", max_recall_drop=max_recall_drop, note="--skip-evaluation was given")
    return PromotionCheck(domain, version, served, covered, gate, forced=force)


def promote(
    domain: str,
    version: int,
    *,
    max_recall_drop: float = DEFAULT_MAX_RECALL_DROP,
    force: bool = False,
    evaluate: bool = True,
    queries_path: Path | str | None = None,
) -> Promotion:
    """Make `version` the one search serves, if `check_promotion` allows (or `force`), in one transaction.

    The previously served version becomes backfilling: still written by every run until retired.
    """
    check = check_promotion(
        domain,
        version,
        max_recall_drop=max_recall_drop,
        force=force,
        evaluate=evaluate,
        queries_path=queries_path,
    )
    if check.already_serving or not check.passed:
        return Promotion(check=check, promoted=False)
    with transaction.atomic():
        records = list(DomainVersion.objects.select_for_update().filter(domain=domain).order_by("pk"))
        target = next((record for record in records if record.embedding_version == version), None)
        if target is None or target.state == DomainVersion.State.RETIRED:
            raise MigrationError(
                f"version {version} of {domain} was retired or removed meanwhile; not promoted"
            )
        if target.is_served:
            return Promotion(check=check, promoted=False)
        previous = [record for record in records if record.is_served]
        for record in previous:
            record.state = DomainVersion.State.BACKFILLING
            record.save(update_fields=["state"])
        target.state = DomainVersion.State.SERVING
        target.promoted_at = timezone.now()
        target.save(update_fields=["state", "promoted_at"])
    return Promotion(
        check=check, promoted=True, previous=previous[0].embedding_version if previous else check.served
    )


__all__ = [
    "DEFAULT_MAX_RECALL_DROP",
    "Gate",
    "Promotion",
    "PromotionCheck",
    "check_promotion",
    "evaluation_gate",
    "promote",
]
