"""`manage.py search_entities --domain action --team 1 "users who signed up"`."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from entity_vectors import conf
from entity_vectors.exceptions import EntityVectorsError
from entity_vectors.management.base import OneLineChecks
from entity_vectors.management.options import MAX_DATABASE_ID, whole_number
from entity_vectors.management.options import text as text_option
from entity_vectors.search.query import search_entities


class Command(OneLineChecks, BaseCommand):
    help = "Find a team's entities of a domain by meaning, nearest first."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("query", nargs="+", help="what to look for")
        parser.add_argument("--domain", required=True)
        parser.add_argument("--team", type=int, required=True, help="team id")
        parser.add_argument("--limit", type=int, default=5)
        parser.add_argument("--embedding-version", type=int, default=None)
        parser.add_argument(
            "--mode", default=None, help="vector, text or hybrid (default: ENTITY_VECTORS_SEARCH_MODE)"
        )
        parser.add_argument("--json", action="store_true", help="print the hits as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        query = " ".join(options["query"])
        text_option("--domain", options["domain"], 64)
        whole_number("--team", options["team"], 0, MAX_DATABASE_ID)
        try:
            hits = search_entities(
                options["domain"],
                options["team"],
                query,
                limit=options["limit"],
                embedding_version=options["embedding_version"],
                mode=options["mode"],
            )
        except (EntityVectorsError, ValueError) as exc:
            # One line (an unreachable ClickHouse names itself and its URL, password redacted).
            raise CommandError(conf.redact(" ".join(str(exc).split()))) from exc
        if options["json"]:
            self.stdout.write(json.dumps([hit.__dict__ for hit in hits], ensure_ascii=False, indent=2))
            return
        if not hits:
            self.stdout.write(f"no {options['domain']} of team {options['team']} matches {query!r}")
            return
        for rank, hit in enumerate(hits, start=1):
            name = hit.properties.get("name") or hit.id
            text = " ".join(hit.text.split())
            self.stdout.write(f"{rank}. {name} (id {hit.id}, distance {hit.distance:.3f})")
            self.stdout.write(f"   {text[:300]}{'…' if len(text) > 300 else ''}")
