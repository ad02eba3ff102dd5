"""Typed values every stage shares: the run's context, built once per task, and a batch's outcome."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from entity_vectors.core.entity_config import EntityConfig
from entity_vectors.core.inputs import SyncEntityVectorsInputs
from entity_vectors.core.registry import get_entity_config
from entity_vectors.exceptions import InvalidInputsError
from entity_vectors.models import DomainVersion, SyncRun
from entity_vectors.providers import EmbedderSpec, ProviderUsage

# How many per-entity errors a batch keeps (the count is always exact).
MAX_ITEM_ERRORS = 20
# Contexts of recent runs kept by `RunContext.load` (a run's context never changes).
_LOADED_RUNS = 8


@dataclass(frozen=True)
class EmbeddingVersionSpec:
    """One embedding version a run writes, with the embedder that writes it."""

    version: int
    embedder: EmbedderSpec
    served: bool

    @classmethod
    def of(cls, record: DomainVersion) -> EmbeddingVersionSpec:
        """From the version's record."""
        return cls(
            version=record.embedding_version,
            embedder=EmbedderSpec(record.embedder, record.embedding_model, record.dimensions),
            served=record.is_served,
        )

    def as_json(self) -> dict[str, Any]:
        """For SyncRun.versions."""
        return {
            "version": self.version,
            "embedder": self.embedder.name,
            "model": self.embedder.model,
            "dimensions": self.embedder.dimensions,
            "served": self.served,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbeddingVersionSpec:
        """From SyncRun.versions."""
        return cls(
            version=int(data["version"]),
            embedder=EmbedderSpec(str(data["embedder"]), str(data["model"]), int(data["dimensions"])),
            served=bool(data["served"]),
        )


@dataclass(frozen=True)
class RunContext:
    """Everything a stage needs to know about its run, read once from the SyncRun row."""

    run_id: str
    domain: str
    config: EntityConfig[Any]
    inputs: SyncEntityVectorsInputs
    start_dt: datetime
    started_at: datetime
    mode: str
    versions: tuple[EmbeddingVersionSpec, ...]
    # Versions whose backfill is not complete: this run compares whole tables for them.
    backfilling: tuple[int, ...] = ()

    @classmethod
    def of(cls, run: SyncRun) -> RunContext:
        """The context of a recorded run."""
        inputs = SyncEntityVectorsInputs.from_kwargs(**run.inputs)
        return cls(
            run_id=str(run.id),
            domain=run.domain,
            config=get_entity_config(run.domain),
            inputs=inputs,
            start_dt=run.start_dt,
            started_at=run.started_at,
            mode=run.mode,
            versions=tuple(EmbeddingVersionSpec.from_json(item) for item in run.versions["write"]),
            backfilling=tuple(int(version) for version in run.versions.get("backfilling", [])),
        )

    @classmethod
    def load(cls, run_id: str | uuid.UUID) -> RunContext:
        """The context of run `run_id`; a clear error if there is no such run.

        Kept per process for the last few runs: every batch task of a run asks for it, and what
        it holds is fixed when the run starts.
        """
        try:
            key = uuid.UUID(str(run_id))
        except ValueError:
            raise InvalidInputsError("run_id", run_id, "is not a run id (a UUID)") from None
        cached = _LOADED.get(key)
        if cached is not None:
            return cached
        run = SyncRun.objects.filter(pk=key).first()
        if run is None:
            raise InvalidInputsError("run_id", run_id, "no such run")
        context = cls.of(run)
        _LOADED[key] = context
        while len(_LOADED) > _LOADED_RUNS:
            del _LOADED[next(iter(_LOADED))]
        return context

    @property
    def embedders(self) -> list[EmbedderSpec]:
        """The embedders of the versions this run writes."""
        return [spec.embedder for spec in self.versions]


_LOADED: dict[uuid.UUID, RunContext] = {}


@dataclass
class BatchOutcome:
    """What one batch did: counts, provider usage, and the first few per-entity errors."""

    summarized: int = 0
    summaries_reused: int = 0
    summary_failures: int = 0
    embedded: int = 0
    embedding_failures: int = 0
    vectors_reused: int = 0
    tombstoned: int = 0
    skipped: int = 0
    parked: int = 0
    over_budget: int = 0
    awaiting_batch_api: int = 0
    held_elsewhere: int = 0
    usage: ProviderUsage = field(default_factory=ProviderUsage)
    item_errors: list[dict[str, str]] = field(default_factory=list)

    COUNTS = (
        "summarized",
        "summaries_reused",
        "summary_failures",
        "embedded",
        "embedding_failures",
        "vectors_reused",
        "tombstoned",
        "skipped",
        "parked",
        "over_budget",
        "awaiting_batch_api",
        "held_elsewhere",
    )

    def item_error(self, entity_id: str, error: str) -> None:
        """Keep an entity's error (the first MAX_ITEM_ERRORS of a batch)."""
        if len(self.item_errors) < MAX_ITEM_ERRORS:
            self.item_errors.append({"id": entity_id, "error": error[:500]})

    @property
    def failures(self) -> int:
        """Entities that failed in this batch."""
        return self.summary_failures + self.embedding_failures

    def as_counts(self) -> dict[str, Any]:
        """The JSON stored in SyncRunBatch.counts (SyncRun's counter names)."""
        counts: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTS}
        counts.update(self.usage.as_counts())
        counts["cost_usd"] = str(self.usage.cost_usd)
        return counts

    @classmethod
    def from_counts(cls, counts: dict[str, Any]) -> BatchOutcome:
        """Back from SyncRunBatch.counts (an earlier attempt's spend is carried by a retry)."""
        outcome = cls()
        for name in cls.COUNTS:
            setattr(outcome, name, int(counts.get(name, 0)))
        outcome.usage = ProviderUsage(
            requests=int(counts.get("provider_requests", 0)),
            prompt_tokens=int(counts.get("prompt_tokens", 0)),
            completion_tokens=int(counts.get("completion_tokens", 0)),
            embedding_tokens=int(counts.get("embedding_tokens", 0)),
            cost_usd=Decimal(str(counts.get("cost_usd", "0"))),
        )
        return outcome

    def carried(self) -> BatchOutcome:
        """What a failed attempt paid for (summaries written, vectors made, spend): the retry adds it."""
        return BatchOutcome(
            summarized=self.summarized, embedded=self.embedded, usage=dataclasses.replace(self.usage)
        )

    def add(self, other: BatchOutcome) -> None:
        """Add another outcome's counts and spend to this one."""
        for name in self.COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("requests", "prompt_tokens", "completion_tokens", "embedding_tokens", "cost_usd"):
            setattr(self.usage, name, getattr(self.usage, name) + getattr(other.usage, name))
