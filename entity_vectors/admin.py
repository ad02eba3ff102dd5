"""The pipeline in the Django admin: runs with their cost, each domain's versions with coverage,
freshness and spend, the entities that keep failing (parked ones can be unparked), Batch API jobs."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from entity_vectors.capture.changelog import record_changes
from entity_vectors.models import (
    BatchApiJob,
    DomainVersion,
    EntityFailure,
    ProviderBatch,
    SyncRun,
    SyncRunBatch,
)
from entity_vectors.ops.status import SPEND_DAYS, domain_status


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Rows written by the pipeline: the admin only reads them."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SyncRunBatchInline(admin.TabularInline):  # type: ignore[type-arg]
    """A run's batches, without their staged payloads."""

    model = SyncRunBatch
    fields = ("index", "status", "attempts", "counts", "error", "started_at", "finished_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    """Runs with what they did and what they cost."""

    list_display = (
        "domain",
        "kind",
        "status",
        "started_at",
        "finished_at",
        "selected",
        "summarized",
        "summary_failures",
        "embedding_failures",
        "inserted",
        "tombstoned",
        "parked",
        "provider_requests",
        "cost_usd",
    )
    list_filter = ("domain", "status", "kind", "mode")
    search_fields = ("id", "task_id", "error")
    readonly_fields = [field.name for field in SyncRun._meta.fields]
    inlines = (SyncRunBatchInline,)
    date_hierarchy = "started_at"


@admin.register(DomainVersion)
class DomainVersionAdmin(ReadOnlyAdmin):
    """Each domain's embedding versions, with the domain's coverage, freshness and spend."""

    list_display = (
        "domain",
        "embedding_version",
        "state",
        "embedder",
        "embedding_model",
        "dimensions",
        "coverage",
        "pending",
        "oldest_pending",
        "failing",
        "parked",
        "spend",
    )
    list_filter = ("domain", "state")

    def _status(self, record: DomainVersion) -> Any:
        cache: dict[str, Any] = self.__dict__.setdefault("_status_cache", {})
        if record.domain not in cache:
            cache[record.domain] = domain_status(record.domain, runs=0)
        return cache[record.domain]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        self.__dict__["_status_cache"] = {}  # fresh figures on every page
        return super().changelist_view(request, extra_context)

    @admin.display(description="coverage")
    def coverage(self, record: DomainVersion) -> str:
        status = self._status(record)
        return f"{status.coverage:.1%}" if record.is_served else "-"

    @admin.display(description="pending")
    def pending(self, record: DomainVersion) -> int:
        return int(self._status(record).pending)

    @admin.display(description="oldest pending (s)")
    def oldest_pending(self, record: DomainVersion) -> int:
        seconds: float = self._status(record).oldest_pending_seconds
        return round(seconds)

    @admin.display(description="failing")
    def failing(self, record: DomainVersion) -> int:
        return int(self._status(record).failing)

    @admin.display(description="parked")
    def parked(self, record: DomainVersion) -> int:
        return int(self._status(record).parked)

    @admin.display(description=f"spend, {SPEND_DAYS} days ($)")
    def spend(self, record: DomainVersion) -> str:
        return f"{self._status(record).spend_usd:.4f}"


@admin.register(EntityFailure)
class EntityFailureAdmin(ReadOnlyAdmin):
    """Entities that failed runs in a row; parked ones are not sent to a provider again."""

    list_display = ("domain", "entity_id", "team_id", "failures", "parked_at", "last_failed_at", "last_error")
    list_filter = ("domain", ("parked_at", admin.EmptyFieldListFilter))
    search_fields = ("entity_id", "last_error")
    actions = ("unpark",)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

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

    list_display = (
        "domain",
        "status",
        "created_at",
        "finished_at",
        "requests",
        "failed_count",
        "cost_usd",
        "run",
    )
    list_filter = ("domain", "status")
    exclude = ("entity_ids",)
    readonly_fields = [field.name for field in BatchApiJob._meta.fields if field.name != "entity_ids"]
    inlines = (ProviderBatchInline,)

    @admin.display(description="failed")
    def failed_count(self, obj: BatchApiJob) -> int:
        return len(obj.failed)
