"""A dry run: what a run started now would do and cost, with no provider call and no write.

It takes the same snapshot a run would (the same selection), loads each batch the way a batch
does, and decides each entity against the ledger the same way; where a summary would have to be
written, it cannot know the summary, so it counts a summary and an embedding at every version.
Tokens are counted with the real tokenizer; the completion of a summary and the embedding of a
summary not yet written are counted at their cap (so the cost is an upper bound there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from django.utils import timezone

from entity_vectors import conf
from entity_vectors.core.embedding_versions import get_version, tracked_versions
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.core.registry import get_entity_config
from entity_vectors.exceptions import InvalidInputsError
from entity_vectors.models import DomainVersion, SyncRun
from entity_vectors.providers import configured_embedder_spec
from entity_vectors.providers.openai import summary_prompt_tokens
from entity_vectors.providers.pricing import cost
from entity_vectors.providers.text import MAX_SUMMARY_TOKENS, count_tokens
from entity_vectors.workflow import ledger
from entity_vectors.workflow.context import BatchOutcome, EmbeddingVersionSpec, RunContext
from entity_vectors.workflow.load import load_batch
from entity_vectors.workflow.plan import (
    AWAITING_BATCH_API,
    EMBED,
    FAILING,
    OVER_BUDGET,
    PARKED,
    REWRITE,
    SKIP,
    SUMMARIZE,
    TOMBSTONE,
    decide_gone,
    decide_live,
    disposition,
)
from entity_vectors.workflow.selection import select_entity_ids

# A disposition (`plan.disposition`) -> the team's figure it counts in.
_REPORTED = {
    SUMMARIZE: "summarize",
    EMBED: "embed_only",
    REWRITE: "rewrite",
    TOMBSTONE: "tombstone",
    SKIP: "skip",
    PARKED: "parked",
    OVER_BUDGET: "parked",
    AWAITING_BATCH_API: "parked",
    FAILING: "failing",
}


@dataclass
class TeamPlan:
    """One team's share of a dry run."""

    summarize: int = 0
    embed_only: int = 0
    rewrite: int = 0
    tombstone: int = 0
    skip: int = 0
    parked: int = 0
    failing: int = 0


@dataclass
class DryRunReport:
    """What a run started now would do and cost."""

    domain: str
    versions: list[int]
    selected: int = 0
    teams: dict[int, TeamPlan] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    embedding_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def total(self) -> TeamPlan:
        """The teams' figures added up."""
        total = TeamPlan()
        for team in self.teams.values():
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(team, name))
        return total


def planned_versions(
    inputs: SyncEntityVectorsInputs,
) -> tuple[tuple[EmbeddingVersionSpec, ...], tuple[int, ...]]:
    """The versions a run of `inputs` would write, without recording anything: each by the embedder
    it recorded; a version not made yet by the environment's default embedder, as a run would."""
    record = get_version(inputs.domain, inputs.embedding_version)
    records = tracked_versions(inputs.domain)
    tracked = [EmbeddingVersionSpec.of(version) for version in records]
    first = DomainVersion.objects.filter(domain=inputs.domain).count() + (record is None) == 1
    backfilling = [
        version.embedding_version
        for version in records
        if version.backfilled_at is None and not (first and version.is_served)
    ]
    if record is None:
        serving = DomainVersion.objects.filter(
            domain=inputs.domain, state=DomainVersion.State.SERVING
        ).exists()
        tracked.append(
            EmbeddingVersionSpec(
                version=inputs.embedding_version, embedder=configured_embedder_spec(), served=not serving
            )
        )
        if serving:
            backfilling.append(inputs.embedding_version)
    elif record.state == DomainVersion.State.RETIRED:
        raise InvalidInputsError(
            "embedding_version", inputs.embedding_version, "was retired; use a newer one"
        )
    return tuple(tracked), tuple(backfilling)


def planning_context(inputs: SyncEntityVectorsInputs, run_id: str = "dry-run") -> RunContext:
    """The context a run of `inputs` would have, recording nothing (no run, no version)."""
    versions, backfilling = planned_versions(inputs)
    return RunContext(
        run_id=run_id,
        domain=inputs.domain,
        config=get_entity_config(inputs.domain),
        inputs=inputs,
        start_dt=inputs.resolved_start_dt(),
        started_at=timezone.now(),
        mode=SyncRun.Mode.INLINE,
        versions=versions,
        backfilling=backfilling,
    )


def dry_run(inputs: SyncEntityVectorsInputs) -> DryRunReport:
    """Plan a run of `inputs` and price it, reading only."""
    context = planning_context(inputs)
    config = context.config
    versions = context.versions
    report = DryRunReport(domain=inputs.domain, versions=[spec.version for spec in versions])
    pks = select_entity_ids(context, record=False)
    report.selected = len(pks)
    chat_model = conf.chat_model() if conf.summarizer_name() == "openai" else ""
    prompt = config.get_summary_prompt()
    for offset in range(0, len(pks), inputs.summarize_batch_size):
        chunk = pks[offset : offset + inputs.summarize_batch_size]
        works = load_batch(context, chunk, BatchOutcome(), readonly=True)
        entries = ledger.load_entries(inputs.domain, [work.key for work in works], report.versions)
        for work in works:
            team = report.teams.setdefault(int(work.team_id or 0), TeamPlan())
            mine = {spec.version: entries.get((work.key, spec.version)) for spec in versions}
            if not work.live:
                decide_gone(work, mine, versions)
            elif work.summary is not None and not work.parked and not work.error:
                decide_live(config, work, mine, versions)
            kind = disposition(work)
            setattr(team, _REPORTED[kind], getattr(team, _REPORTED[kind]) + 1)
            if kind == SUMMARIZE:
                # The summary is not known: its prompt is counted, its completion and its embedding
                # at their caps.
                if chat_model:
                    report.prompt_tokens += summary_prompt_tokens(prompt, work.description, chat_model)
                    report.completion_tokens += MAX_SUMMARY_TOKENS
                for spec in versions:
                    _price_embedding(report, spec, MAX_SUMMARY_TOKENS)
            for version_work in work.versions.values():
                if version_work.action == EMBED and work.summary is not None:
                    tokens = count_tokens(work.summary, version_work.spec.embedder.model)
                    _price_embedding(report, version_work.spec, tokens)
    if chat_model:
        report.cost_usd += cost(chat_model, report.prompt_tokens, report.completion_tokens)
    return report


def _price_embedding(report: DryRunReport, spec: EmbeddingVersionSpec, tokens: int) -> None:
    if spec.embedder.name != "openai":
        return
    report.embedding_tokens += tokens
    report.cost_usd += cost(spec.embedder.model, tokens)


def describe(report: DryRunReport) -> str:
    """The report as the command prints it."""
    total = report.total()
    lines = [
        f"{report.domain}: a run started now would look at {report.selected} entities "
        f"(embedding versions {', '.join(str(version) for version in report.versions)})",
        f"  summarize {total.summarize}, embed only {total.embed_only}, rewrite without a provider call "
        f"{total.rewrite}, tombstone {total.tombstone}, skip {total.skip}, parked {total.parked}"
        + (f", cannot describe {total.failing}" if total.failing else ""),
    ]
    for team_id, team in sorted(report.teams.items()):
        lines.append(
            f"    team {team_id}: summarize {team.summarize}, embed only {team.embed_only}, rewrite {team.rewrite}, "
            f"tombstone {team.tombstone}, skip {team.skip}, parked {team.parked}"
        )
    lines.append(
        f"  estimated tokens: prompt {report.prompt_tokens}, completion up to {report.completion_tokens}, "
        f"embedding up to {report.embedding_tokens}; estimated cost up to {conf.format_usd(report.cost_usd)}"
    )
    return "\n".join(lines)


__all__ = ["DryRunReport", "TeamPlan", "describe", "dry_run"]
