"""Run history in the Django admin."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from entity_vectors.models import SyncRun, SyncRunBatch


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
class SyncRunAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Runs are written by the workflow; the admin only reads them."""

    list_display = (
        "domain",
        "status",
        "started_at",
        "finished_at",
        "selected",
        "summarized",
        "summary_failures",
        "inserted",
        "tombstoned",
        "provider_requests",
    )
    list_filter = ("domain", "status")
    search_fields = ("id", "task_id", "error")
    readonly_fields = [field.name for field in SyncRun._meta.fields]
    inlines = (SyncRunBatchInline,)
    date_hierarchy = "started_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
