"""The pipeline in the Django admin: runs with their cost, each domain's versions with coverage,
freshness and spend, the entities that keep failing (parked ones can be unparked), Batch API jobs.

Every page only reads: the pipeline writes these rows, and deleting one would make it forget what
it did (a run's batches, a version's embedder). The lists fit a 1400-pixel window beside Django's
navigation and filters: short times, counts in one column, long text cut (whole on the row's page)
and wrapped; costs in dollars as the commands show them (`conf.format_usd`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from entity_vectors import conf
from entity_vectors.capture.changelog import record_changes
from entity_vectors.exceptions import shorten
from entity_vectors.models import (
    BatchApiJob,
    DomainVersion,
    EntityFailure,
    ProviderBatch,
    SyncRun,
    SyncRunBatch,
)
from entity_vectors.ops.status import SPEND_DAYS, domain_status

# What a list shows of a long text (an error): its first line, cut; the row's page has it whole.
LIST_TEXT_CHARS = 120


def short_time(value: datetime | None) -> str:
    """A time in a list column: local, to the minute, the year only if it is not this one."""
    if value is None:
        return "-"
    local = timezone.localtime(value)
    year = "" if local.year == timezone.localtime().year else f" {local.year}"
    return f"{local:%b} {local.day}{year} {local:%H:%M}"


def duration(start: datetime | None, end: datetime | None) -> str:
    """How long from `start` to `end`: seconds, minutes or hours; "-" while it has not ended."""
    if start is None or end is None:
        return "-"
    return seconds_text(max(0.0, (end - start).total_seconds()))


def seconds_text(seconds: float) -> str:
    """A number of seconds as seconds, minutes or hours."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def list_text(text: str) -> str:
    """A long text in a list column: its first line, cut to LIST_TEXT_CHARS."""
    lines = text.strip().splitlines()
    return shorten(" ".join(lines[0].split()), LIST_TEXT_CHARS) if lines else ""


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Rows written by the pipeline: the admin only reads them (no add, change or delete)."""

    class Media:
        css = {"all": ("entity_vectors/admin.css",)}

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SyncRunBatchInline(admin.TabularInline):  # type: ignore[type-arg]
    """A run's batches, without their staged payloads."""

    model = SyncRunBatch
    verbose_name_plural = "batches"
    fields = ("index", "status", "attempts", "what_it_did", "error", "started_at", "finished_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="counts")
    def what_it_did(self, batch: SyncRunBatch) -> str:
        """Its counts that are not 0, and its cost, on a line that wraps."""
        counts = dict(batch.counts or {})
        cost = counts.pop("cost_usd", None)
        shown = [f"{name.replace('_', ' ')} {value}" for name, value in counts.items() if value]
        if cost is not None:
            shown.append(f"cost {conf.format_usd(cost)}")
        return ", ".join(shown) or "-"


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    """Runs with what they did and what they cost."""

    list_display = ("run", "outcome", "started", "entities", "cost", "error_start")
    list_filter = ("domain", "status", "kind", "mode")
    search_fields = ("id", "task_id", "error")
    fields = readonly_fields = tuple(
        field.name if field.name != "cost_usd" else "cost" for field in SyncRun._meta.fields
    )
    inlines = (SyncRunBatchInline,)
    date_hierarchy = "started_at"

    @admin.display(description="run", ordering="domain")
    def run(self, run: SyncRun) -> str:
        """Its domain, and its kind unless it is a plain run."""
        return (
            run.domain if run.kind == SyncRun.Kind.RUN else f"{run.domain}, {run.get_kind_display().lower()}"
        )

    @admin.display(description="status", ordering="status")
    def outcome(self, run: SyncRun) -> str:
        """Its status, and how long it took once it ended."""
        took = duration(run.started_at, run.finished_at)
        return run.get_status_display() if took == "-" else f"{run.get_status_display()} in {took}"

    @admin.display(description="started", ordering="started_at")
    def started(self, run: SyncRun) -> str:
        return short_time(run.started_at)

    @admin.display(description="entities")
    def entities(self, run: SyncRun) -> str:
        """Selected, then what became of them: written, tombstoned, failed, parked."""
        failed = run.summary_failures + run.embedding_failures
        shown = [f"{run.selected} selected", f"{run.inserted} inserted", f"{run.tombstoned} tombstoned"]
        shown += [f"{count} {what}" for count, what in ((failed, "failed"), (run.parked, "parked")) if count]
        return ", ".join(shown)

    @admin.display(description="cost", ordering="cost_usd")
    def cost(self, run: SyncRun) -> str:
        return conf.format_usd(run.cost_usd)

    @admin.display(description="error")
    def error_start(self, run: SyncRun) -> str:
        return list_text(run.error)


@admin.register(DomainVersion)
class DomainVersionAdmin(ReadOnlyAdmin):
    """Each domain's embedding versions, with the domain's coverage, freshness and spend."""

    # A handful of rows (domains times versions): no filters, their room goes to the figures.
    list_display = ("version", "embedder_of", "coverage", "pending", "failures", "spend")
    fields = (
        "domain",
        "embedding_version",
        "state",
        "embedder",
        "embedding_model",
        "dimensions",
        "embedder_chosen_by",
        "created_at",
        "backfilled_at",
        "promoted_at",
        "retired_at",
    )
    readonly_fields = fields

    def _status(self, record: DomainVersion) -> Any:
        cache: dict[str, Any] = self.__dict__.setdefault("_status_cache", {})
        if record.domain not in cache:
            cache[record.domain] = domain_status(record.domain, runs=0)
        return cache[record.domain]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        self.__dict__["_status_cache"] = {}  # fresh figures on every page
        return super().changelist_view(request, extra_context)

    @admin.display(description="version", ordering="domain")
    def version(self, record: DomainVersion) -> str:
        """The domain, the embedding version and its state: `action v1, serving`."""
        return f"{record.domain} v{record.embedding_version}, {record.get_state_display().lower()}"

    @admin.display(description="embedder")
    def embedder_of(self, record: DomainVersion) -> str:
        """Its embedder and model, and the vectors' dimensions."""
        return f"{record.identity}, {record.dimensions} dimensions"

    @admin.display(description="embedder chosen by")
    def embedder_chosen_by(self, record: DomainVersion) -> str:
        """Where the version's embedder came from (the model's `explicit`); it keeps it either way."""
        if record.explicit:
            return "migrate_embeddings --embedder/--model/--dimensions, given on the command line"
        return (
            "the settings' default embedder (ENTITY_VECTORS_EMBEDDER) when the version was first written; "
            "the version keeps it whatever the default is now"
        )

    @admin.display(description="coverage")
    def coverage(self, record: DomainVersion) -> str:
        status = self._status(record)
        return f"{status.coverage:.1%}" if record.is_served else "-"

    @admin.display(description="pending")
    def pending(self, record: DomainVersion) -> str:
        """Entities waiting for a run, and for how long the oldest has waited."""
        status = self._status(record)
        if not status.pending:
            return "0"
        return f"{status.pending}, oldest {seconds_text(float(status.oldest_pending_seconds))}"

    @admin.display(description="failures")
    def failures(self, record: DomainVersion) -> str:
        """Entities that failed their last runs and are still tried, and those parked."""
        status = self._status(record)
        shown = [
            f"{count} {what}"
            for count, what in ((status.failing, "failing"), (status.parked, "parked"))
            if count
        ]
        return ", ".join(shown) or "0"

    @admin.display(description=f"spend, {SPEND_DAYS} days")
    def spend(self, record: DomainVersion) -> str:
        return conf.format_usd(self._status(record).spend_usd)


@admin.register(EntityFailure)
class EntityFailureAdmin(ReadOnlyAdmin):
    """Entities that failed runs in a row; parked ones are not sent to a provider again."""

    list_display = ("domain", "entity_id", "team_id", "failures", "parked", "last_failed", "error_start")
    list_filter = ("domain", ("parked_at", admin.EmptyFieldListFilter))
    search_fields = ("entity_id", "last_error")
    actions = ("unpark",)

    @admin.display(description="parked", ordering="parked_at")
    def parked(self, failure: EntityFailure) -> str:
        return short_time(failure.parked_at)

    @admin.display(description="last failed", ordering="last_failed_at")
    def last_failed(self, failure: EntityFailure) -> str:
        return short_time(failure.last_failed_at)

    @admin.display(description="last error")
    def error_start(self, failure: EntityFailure) -> str:
        return list_text(failure.last_error)

    @admin.action(description="Unpark (the next run takes them)")
    def unpark(self, request: HttpRequest, queryset: QuerySet[EntityFailure]) -> None:
        by_domain: dict[str, list[str]] = {}
        for domain, entity_id in queryset.values_list("domain", "entity_id"):
            by_domain.setdefault(domain, []).append(entity_id)
        queryset.delete()
        for domain, keys in by_domain.items():
            record_changes(domain, keys)
        self.message_user(request, f"unparked {sum(map(len, by_domain.values()))} entities", messages.SUCCESS)


class ProviderBatchInline(admin.TabularInline):  # type: ignore[type-arg]
    """A job's batches at the provider, without their files' content."""

    model = ProviderBatch
    verbose_name_plural = "provider batches"
    fields = (
        "endpoint",
        "status",
        "provider_status",
        "requests",
        "provider_batch_id",
        "created_at",
        "finished_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BatchApiJob)
class BatchApiJobAdmin(ReadOnlyAdmin):
    """Backfills through the Batch API: where each is, what failed, what it cost (at half price)."""

    list_display = ("domain", "outcome", "created", "requests_failed", "cost", "run_link", "error_start")
    list_filter = ("domain", "status")
    fields = readonly_fields = tuple(
        field.name if field.name != "cost_usd" else "cost"
        for field in BatchApiJob._meta.fields
        if field.name != "entity_ids"
    )
    inlines = (ProviderBatchInline,)

    @admin.display(description="created", ordering="created_at")
    def created(self, job: BatchApiJob) -> str:
        return short_time(job.created_at)

    @admin.display(description="status", ordering="status")
    def outcome(self, job: BatchApiJob) -> str:
        """Its status, and how long it took once it ended."""
        took = duration(job.created_at, job.finished_at)
        return job.get_status_display() if took == "-" else f"{job.get_status_display()} in {took}"

    @admin.display(description="requests", ordering="requests")
    def requests_failed(self, job: BatchApiJob) -> str:
        """Its requests, and how many of them failed."""
        return f"{job.requests}, {len(job.failed)} failed" if job.failed else str(job.requests)

    @admin.display(description="cost", ordering="cost_usd")
    def cost(self, job: BatchApiJob) -> str:
        return conf.format_usd(job.cost_usd)

    @admin.display(description="run")
    def run_link(self, job: BatchApiJob) -> str:
        """The run that writes its results, by the start of its id."""
        if job.run_id is None:
            return "-"
        url = reverse("admin:entity_vectors_syncrun_change", args=[job.run_id])
        return format_html('<a href="{}">{}</a>', url, str(job.run_id)[:8])

    @admin.display(description="error")
    def error_start(self, job: BatchApiJob) -> str:
        return list_text(job.error)
