"""What a batch remembers besides its rows: summaries, the host's mirror columns, failures.

Summaries are the pipeline's own (a host's save cannot lose one that was paid for); the host's
columns are brought up to date wherever they differ; an entity that keeps failing is parked."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from entity_vectors.bulk import update_rows, upsert_rows
from entity_vectors.models import EntitySummary
from entity_vectors.workflow.context import RunContext
from entity_vectors.workflow.plan import SKIP, EntityWork


def save_summaries(context: RunContext, works: list[EntityWork]) -> None:
    """Keep new summaries (the pipeline's copy) and bring the host's mirror columns up to date.

    The mirror is rewritten wherever it differs from what the pipeline knows, so a stale
    instance saved over an entity gets its columns back even when nothing else changed.
    """
    fresh = [work for work in works if work.summarized_now and work.summary is not None]
    checked = [work for work in works if work.live and work.summary is not None]
    if not checked:
        return
    now = timezone.now()
    served = {spec.version for spec in context.versions if spec.served}
    manager = context.config.model_class._default_manager
    with transaction.atomic(savepoint=False):  # the batch's own transaction, if any
        upsert_rows(
            EntitySummary,
            ["domain", "entity_id"],
            [
                {
                    "domain": context.domain,
                    "entity_id": work.key,
                    "summary": work.summary or "",
                    "input_hash": work.input_hash,
                    "summarized_by": work.summarized_by,
                    "summarized_at": now,
                }
                for work in fresh
            ],
            ["summary", "input_hash", "summarized_by", "summarized_at"],
        )
        # One statement for the mirror, row by row (no signals, no auto_now: it is not an edit,
        # and the capture triggers ignore these columns). `last_summarized_at` makes the seed's
        # filter stop selecting what was just checked.
        fields = ["summary", "summary_input_hash", "summarized_by", "last_summarized_at"]
        update_rows(
            context.config.model_class,
            {
                work.pk: {
                    "summary": work.summary,
                    "summary_input_hash": work.input_hash,
                    "summarized_by": work.summarized_by,
                    "last_summarized_at": context.start_dt,
                }
                for work in checked
            },
            fields,
        )
        current = [
            work.pk
            for work in checked
            for version, version_work in work.versions.items()
            if version in served
            and version_work.action == SKIP
            and not version_work.error
            and (work.instance.embedding_last_synced_at is None or work.instance.embedding_version != version)
        ]
        for version in served:
            manager.filter(pk__in=current).update(embedding_last_synced_at=now, embedding_version=version)
