"""The host models in the Django admin."""

from __future__ import annotations

from django.contrib import admin

from app.models import Action, Cohort, EventDefinition, Organization, Team

admin.site.register(Organization)
admin.site.register(Team)


@admin.register(Action, Cohort, EventDefinition)
class EntityAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Entities with their vectorization state."""

    list_display = ("name", "team", "last_summarized_at", "embedding_last_synced_at", "embedding_version")
    list_filter = ("team",)
    search_fields = ("name", "description", "summary")
