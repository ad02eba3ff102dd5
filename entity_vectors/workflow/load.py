"""Load a batch: its entities in the config's order, their state and the summaries kept for them.

Lookups by key are one index lookup per key whatever the tables' statistics say
(`bulk.select_by_keys`); eligibility comes from the config's filters, evaluated by the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db.models import BooleanField, ExpressionWrapper

from entity_vectors.bulk import select_by_keys
from entity_vectors.changes import change_seqs, key_of
from entity_vectors.models import EntityFailure, EntitySummary
from entity_vectors.providers import configured_summarizer_identity
from entity_vectors.workflow.context import BatchOutcome, RunContext
from entity_vectors.workflow.plan import EntityWork, summary_input_hash
from entity_vectors.workflow.selection import eligible_filter
from entity_vectors.workflow.vectorize import error_text


def _values_fields(context: RunContext) -> list[str]:
    fields = ["team_id"]
    for name in context.config.get_sync_values_fields():
        if name not in fields and name not in ("summary", "pk"):
            fields.append(name)
    return fields


def _instance_values(model: type[Any], fields: list[str]) -> dict[str, str] | None:
    """Field name -> attribute, if every field can be read off an instance (no lookups across relations)."""
    attributes = {}
    for name in fields:
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            field = next((f for f in model._meta.concrete_fields if f.attname == name), None)
        if field is None or not getattr(field, "concrete", False) or field.many_to_many:
            return None
        attributes[name] = name if name == field.attname else field.attname
    return attributes


def load_batch(
    context: RunContext, pks: Sequence[Any], outcome: BatchOutcome, readonly: bool = False
) -> list[EntityWork]:
    """The batch's entities in the config's order (missing ones last), with their summaries.

    `readonly` (a dry run): an entity whose content changed since it was parked is reported as it
    would be handled, but not unparked.
    """
    config = context.config
    keys = [key_of(pk) for pk in pks]
    seqs = change_seqs(context.domain, keys)
    queryset = config.get_queryset().filter(pk__in=list(pks))
    instances = list(
        queryset.annotate(
            ev_eligible=ExpressionWrapper(eligible_filter(config), output_field=BooleanField()),
            ev_consented=ExpressionWrapper(config.get_consent_filter(), output_field=BooleanField()),
        ).order_by(*config.get_queryset_ordering())
    )
    fields = _values_fields(context)
    attributes = _instance_values(config.model_class, fields)
    values: dict[Any, dict[str, Any]] = {}
    if attributes is None:  # lookups across relations: ask the database
        eligible = [instance.pk for instance in instances if instance.ev_eligible]
        values = {row["pk"]: row for row in queryset.filter(pk__in=eligible).values("pk", *fields)}
    summaries = {
        entity_id: (summary, input_hash, summarized_by)
        for entity_id, summary, input_hash, summarized_by in select_by_keys(
            EntitySummary,
            {"domain": context.domain},
            "entity_id",
            keys,
            ["entity_id", "summary", "input_hash", "summarized_by"],
        )
    }
    failures = {
        entity_id: (input_hash, parked_at is not None)
        for entity_id, input_hash, parked_at in select_by_keys(
            EntityFailure,
            {"domain": context.domain},
            "entity_id",
            keys,
            ["entity_id", "input_hash", "parked_at"],
        )
    }
    identity = configured_summarizer_identity()
    prompt = config.get_summary_prompt()
    works: list[EntityWork] = []
    seen: set[str] = set()
    unparked: list[str] = []
    for instance in instances:
        key = key_of(instance.pk)
        seen.add(key)
        state = "live" if instance.ev_eligible else ("deleted" if instance.ev_consented else "consent")
        work = EntityWork(
            pk=instance.pk, key=key, seq=seqs.get(key, 0), state=state, team_id=instance.team_id
        )
        works.append(work)
        if not work.live:
            continue
        work.instance = instance
        if attributes is None:
            work.values = {"id": instance.pk, **values[instance.pk]}
        else:
            work.values = {"id": instance.pk, "pk": instance.pk}
            work.values.update((name, getattr(instance, attribute)) for name, attribute in attributes.items())
        try:
            work.description = config.describe(instance)
        except Exception as exc:
            work.error = f"describe() failed: {error_text(exc)}"
            continue
        work.input_hash = summary_input_hash(identity, prompt, work.description)
        stored = summaries.get(key)
        if stored is not None and stored[1] == work.input_hash and stored[0]:
            work.summary, work.summarized_by = stored[0], stored[2]
        failed = failures.get(key)
        work.failures_counted = failed is not None
        if failed is not None and failed[1]:  # parked
            if failed[0] == work.input_hash:
                work.parked = True
            else:  # its content changed since it was parked: give it another chance
                unparked.append(key)
    if unparked and not readonly:
        EntityFailure.objects.filter(domain=context.domain, entity_id__in=unparked).delete()
    for pk, key in zip(pks, keys, strict=True):
        if key not in seen:
            works.append(EntityWork(pk=pk, key=key, seq=seqs.get(key, 0), state="gone"))
    return works
