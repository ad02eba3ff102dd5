"""`manage.py evaluate_search [--domain D ...] [--mode M ...] [--min-recall X] [--at 1|5] [--kinds]
[--distractors N] [--choose-fusion]`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from entity_vectors.conf.providers import eval_queries_path
from entity_vectors.core.embedding_versions import get_version, served_version
from entity_vectors.exceptions import EntityVectorsError, shorten
from entity_vectors.management.base import OneLineChecks
from entity_vectors.management.options import MAX_EMBEDDING_VERSION, text
from entity_vectors.search.evaluation import EvaluationResult, Progress, run_evaluation
from entity_vectors.search.query import MODES

HEADER = f"{'domain':<18} {'mode':<7} {'queries':>7} {'recall@1':>9} {'recall@5':>9} {'MRR':>6}"
MAX_DISTRACTORS = 1_000_000
KIND_ORDER = ("exact", "partial", "typo", "paraphrase", "concept", "cross_lingual")


def format_row(result: EvaluationResult) -> str:
    """One table line: domain, mode, queries, recall@1, recall@5, MRR."""
    return (
        f"{result.domain:<18} {result.mode:<7} {result.queries:>7} "
        f"{result.recall_at_1:>9.3f} {result.recall_at_5:>9.3f} {result.mrr:>6.3f}"
    )


def format_kinds(results: list[EvaluationResult]) -> list[str]:
    """recall@5 of each query kind, one line per domain and mode (`-`: no query of that kind)."""
    seen = {score.kind for result in results for score in result.kinds}
    kinds = [kind for kind in KIND_ORDER if kind in seen] + sorted(seen - set(KIND_ORDER))
    width = max(7, *(len(kind) for kind in kinds)) if kinds else 7
    lines = [f"{'domain':<18} {'mode':<7} " + " ".join(f"{kind:>{width}}" for kind in kinds)]
    for result in results:
        cells = []
        for kind in kinds:
            score = result.kind(kind)
            cells.append(f"{'-' if score is None else f'{score.recall_at_5:.3f}':>{width}}")
        lines.append(f"{result.domain:<18} {result.mode:<7} " + " ".join(cells))
    return lines


def format_progress(progress: Progress) -> str:
    """One progress line: the searches done, and the domain and mode at hand (its scores once done)."""
    overall = f"{progress.done}/{progress.total} searches, {progress.elapsed:.1f}s"
    if not progress.domain:
        return f"searching: {progress.total} searches (each labelled query in each mode)"
    where = f"  {progress.domain}/{progress.mode}: {progress.queries_done}/{progress.queries} queries"
    if progress.finished is None:
        return f"{where} ({overall})"
    return f"{where}, recall@5 {progress.finished.recall_at_5:.3f} ({overall})"


def describe_versions(domains: list[str], embedding_version: int | None) -> str:
    """The embedding version each domain is searched at, with the embedder that writes it."""
    described = []
    for domain in domains:
        version = embedding_version if embedding_version is not None else served_version(domain)
        record = get_version(domain, version)
        made_by = f"{record.identity}, {record.dimensions} dimensions" if record else "nothing written"
        described.append(f"{domain} v{version} ({made_by})")
    return ", ".join(described)


class Command(OneLineChecks, BaseCommand):
    help = "Score search against the labelled query set: recall@1, recall@5 and MRR per domain and mode."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--domain", action="append", dest="domains", help="a domain to evaluate (repeatable; default all)"
        )
        parser.add_argument(
            "--mode",
            action="append",
            dest="modes",
            help=f"a search mode (repeatable; default {', '.join(MODES)})",
        )
        parser.add_argument(
            "--min-recall",
            type=float,
            default=None,
            help="fail unless every domain and mode reaches this recall (0 to 1)",
        )
        parser.add_argument("--at", type=int, default=5, help="the recall --min-recall checks: 1 or 5")
        parser.add_argument(
            "--queries", default=None, help="the labelled queries (ENTITY_VECTORS_EVAL_QUERIES)"
        )
        parser.add_argument("--embedding-version", type=int, default=None, help="default: the served one")
        parser.add_argument("--kinds", action="store_true", help="also print recall@5 per query kind")
        parser.add_argument(
            "--distractors",
            type=int,
            default=0,
            help="add N generated entities per team and domain (in a scratch copy) and search among them",
        )
        parser.add_argument(
            "--choose-fusion",
            action="store_true",
            help="choose each embedder's hybrid fusion and default mode on these queries, and record them",
        )

    def _check(self, options: dict[str, Any]) -> Path:
        bar = options["min_recall"]
        if bar is not None and (math.isnan(bar) or not 0.0 <= bar <= 1.0):
            raise CommandError(f"--min-recall={bar}: must be a number from 0 to 1")
        if not 0 <= options["distractors"] <= MAX_DISTRACTORS:
            raise CommandError(
                f"--distractors={options['distractors']}: must be from 0 to {MAX_DISTRACTORS:,}"
            )
        if options["at"] not in (1, 5):
            raise CommandError(f"--at={options['at']}: recall is measured at 1 or 5")
        unknown = [mode for mode in options["modes"] or () if mode not in MODES]
        if unknown:
            raise CommandError(
                f"--mode={shorten(unknown[0])}: unknown search mode; choose from {', '.join(MODES)}"
            )
        version = options["embedding_version"]
        if version is not None and version < 1:
            raise CommandError(f"--embedding-version={version}: must be at least 1")
        if version is not None and version > MAX_EMBEDDING_VERSION:
            raise CommandError(f"--embedding-version={version}: must be at most {MAX_EMBEDDING_VERSION}")
        for domain in options["domains"] or ():
            text("--domain", domain, 64)
        text("--queries", options["queries"], 4096)
        try:
            path = Path(options["queries"]) if options["queries"] else eval_queries_path()
        except EntityVectorsError as exc:
            raise CommandError(str(exc)) from exc
        if not path.is_file():
            raise CommandError(f"--queries: labelled queries file {shorten(str(path))} does not exist")
        return path

    def handle(self, *args: Any, **options: Any) -> None:
        path = self._check(options)

        def show(progress: Progress) -> None:
            # Progress, not an error: stdout, flushed at once (a search is a provider call).
            self.stdout.write(format_progress(progress))
            self.stdout.flush()

        def setup(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        try:
            evaluation = run_evaluation(
                domains=options["domains"],
                modes=options["modes"] or MODES,
                queries_path=path,
                embedding_version=options["embedding_version"],
                on_progress=show,
                distractors=options["distractors"],
                choose_fusion=options["choose_fusion"],
                on_setup=setup,
            )
            results = evaluation.results
            domains = [result.domain for result in results if result.domain != "all"]
            described = describe_versions(list(dict.fromkeys(domains)), options["embedding_version"])
        except (EntityVectorsError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        total = next(result.queries for result in results if result.domain == "all")
        among = (
            f", among {options['distractors']:,} generated entities more per team and domain"
            if options["distractors"]
            else ""
        )
        self.stdout.write(f"{total} labelled queries from {path}; {described}{among}")
        self.stdout.write(HEADER)
        for result in results:
            self.stdout.write(format_row(result))
        for choice in evaluation.choices:
            self.stdout.write(f"recorded: {choice.describe()}")
        if options["kinds"]:
            self.stdout.write("\nrecall@5 by query kind")
            for line in format_kinds(results):
                self.stdout.write(line)
        bar = options["min_recall"]
        if bar is None:
            return
        at = options["at"]
        failing = [result for result in results if result.recall_at(at) < bar]
        if failing:
            below = ", ".join(
                f"{result.domain}/{result.mode} {result.recall_at(at):.3f}" for result in failing
            )
            raise CommandError(f"recall@{at} is below --min-recall {bar:g} for {below}")
        self.stdout.write(f"every domain and mode reaches recall@{at} >= {bar:g}")
