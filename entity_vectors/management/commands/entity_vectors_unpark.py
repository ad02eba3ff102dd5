"""`manage.py entity_vectors_unpark --domain D (--id ID ... | --all)`: give parked entities another chance."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from entity_vectors.capture.changelog import record_changes
from entity_vectors.core.registry import get_entity_config
from entity_vectors.exceptions import EntityVectorsError, shorten
from entity_vectors.management.base import OneLineChecks
from entity_vectors.management.options import text
from entity_vectors.models import EntityFailure


class Command(OneLineChecks, BaseCommand):
    help = (
        "Unpark entities that failed too many runs in a row: their failure count is reset and they "
        "are queued for the next run (or the fast lane)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--domain", required=True)
        parser.add_argument("--id", action="append", dest="ids", default=[], help="an entity id (repeatable)")
        parser.add_argument("--all", action="store_true", help="every parked entity of the domain")

    def handle(self, *args: Any, **options: Any) -> None:
        text("--domain", options["domain"], 64)
        for entity_id in options["ids"]:
            text("--id", entity_id, 255)  # an entity id as the failures table keeps it
        try:
            config = get_entity_config(options["domain"])
        except EntityVectorsError as exc:
            raise CommandError(str(exc)) from exc
        if bool(options["ids"]) == bool(options["all"]):
            raise CommandError("give --id ID (repeatable) or --all")
        parked = EntityFailure.objects.filter(domain=config.domain_name, parked_at__isnull=False)
        if options["ids"]:
            parked = parked.filter(entity_id__in=options["ids"])
            missing = sorted(set(options["ids"]) - set(parked.values_list("entity_id", flat=True)))
            if missing:
                raise CommandError(f"not parked in {config.domain_name}: {shorten(', '.join(missing))}")
        keys = list(parked.values_list("entity_id", flat=True))
        parked.delete()
        record_changes(config.domain_name, keys)
        self.stdout.write(f"{config.domain_name}: unparked {len(keys)} entities; the next run takes them")
