"""Load a batch: its entities in the config's order, their state and the summaries kept for them.

Lookups by key are one index lookup per key whatever the tables' statistics say
(`bulk.KeyLookup`); eligibility comes from the config's filters, evaluated by the database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db.models import BooleanField, ExpressionWrapper

from entity_vectors.bulk import KeyLookup
from entity_vectors.capture.changelog import change_seqs, key_of
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


@dataclass(frozen=True)
class _Kept:
    """What the pipeline keeps for a batch's entities: summaries and failure counts, by key."""

    summaries: dict[str, tuple[str, str, str]]  # summary, input hash, summarized by
    failures: dict[str, tuple[str, bool]]  # input hash, parked

    @classmethod
    def of(cls, domain: str, keys: list[str]) -> _Kept:
        """Read them, one index lookup per key."""
        summaries = KeyLookup(
            EntitySummary,
            {"domain": domain},
            "entity_id",
            ["entity_id", "summary", "input_hash", "summarized_by"],
        ).rows(keys)
        failures = KeyLookup(
            EntityFailure, {"domain": domain}, "entity_id", ["entity_id", "input_hash", "parked_at"]
        ).rows(keys)
        return cls(
            summaries={entity_id: (summary, hashed, by) for entity_id, summary, hashed, by in summaries},
            failures={
                entity_id: (hashed, parked_at is not None) for entity_id, hashed, parked_at in failures
            },
        )


def load_batch(
    context: RunContext, pks: Sequence[Any], outcome: BatchOutcome, readonly: bool = False
) -> list[EntityWork]:
    """The batch's entities in the config's order (missing ones last), with their summaries.

    `readonly` (a dry run): an entity whose content changed since it was parked is reported as it
    would be handled, but not unparked.
    """
    keys = [key_of(pk) for pk in pks]
    seqs = change_seqs(context.domain, keys)
    instances, read_values = _instances(context, pks)
    kept = _Kept.of(context.domain, keys)
    identity = configured_summarizer_identity()
    prompt = context.config.get_summary_prompt()
    works: list[EntityWork] = []
    unparked: list[str] = []
    for instance in instances:
        key = key_of(instance.pk)
        state = "live" if instance.ev_eligible else ("deleted" if instance.ev_consented else "consent")
        work = EntityWork(
            pk=instance.pk, key=key, seq=seqs.get(key, 0), state=state, team_id=instance.team_id
        )
        works.append(work)
        if (
            work.live
            and _describe(context, work, instance, read_values)
            and _recall(work, kept, identity, prompt)
        ):
            unparked.append(key)  # its content changed since it was parked: another chance
    if unparked and not readonly:
        EntityFailure.objects.filter(domain=context.domain, entity_id__in=unparked).delete()
    seen = {work.key for work in works}
    for pk, key in zip(pks, keys, strict=True):
        if key not in seen:
            works.append(EntityWork(pk=pk, key=key, seq=seqs.get(key, 0), state="gone"))
    return works


def _instances(context: RunContext, pks: Sequence[Any]) -> tuple[list[Any], Callable[[Any], dict[str, Any]]]:
    """The batch's host rows in the config's order, annotated with their eligibility and consent, and
    how to read a row's sync values: off the instance, or from one query where a field is a lookup
    across relations."""
    config = context.config
    queryset = config.get_queryset().filter(pk__in=list(pks))
    instances = list(
        queryset.annotate(
            ev_eligible=ExpressionWrapper(eligible_filter(config), output_field=BooleanField()),
            ev_consented=ExpressionWrapper(config.get_consent_filter(), output_field=BooleanField()),
        ).order_by(*config.get_queryset_ordering())
    )
    fields = _values_fields(context)
    attributes = _instance_values(config.model_class, fields)
    if attributes is not None:

        def off_instance(instance: Any) -> dict[str, Any]:
            values = {"id": instance.pk, "pk": instance.pk}
            values.update((name, getattr(instance, attribute)) for name, attribute in attributes.items())
            return values

        return instances, off_instance
    eligible = [instance.pk for instance in instances if instance.ev_eligible]
    rows = {row["pk"]: row for row in queryset.filter(pk__in=eligible).values("pk", *fields)}
    return instances, lambda instance: {"id": instance.pk, **rows[instance.pk]}


def _describe(
    context: RunContext, work: EntityWork, instance: Any, read_values: Callable[[Any], dict[str, Any]]
) -> bool:
    """Give a live entity its sync values and its description; False if the config cannot describe it."""
    work.instance = instance
    work.values = read_values(instance)
    try:
        work.description = context.config.describe(instance)
    except Exception as exc:
        work.error = f"describe() failed: {error_text(exc)}"
        return False
    return True


def _recall(work: EntityWork, kept: _Kept, identity: str, prompt: str) -> bool:
    """Give the entity its kept summary (if still right) and its failure state; True if it was parked
    for content it no longer has (it gets another chance)."""
    work.input_hash = summary_input_hash(identity, prompt, work.description)
    stored = kept.summaries.get(work.key)
    if stored is not None and stored[1] == work.input_hash and stored[0]:
        work.summary, work.summarized_by = stored[0], stored[2]
    failed = kept.failures.get(work.key)
    work.failures_counted = failed is not None
    if failed is None or not failed[1]:
        return False
    work.parked = failed[0] == work.input_hash
    return not work.parked
