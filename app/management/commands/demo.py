"""`manage.py demo`: seed a demo dataset, vectorize every domain through the pipeline, search it."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from app.demo_data import DEMO_PREFIX, seed_demo
from app.models import Team
from entity_vectors import conf
from entity_vectors.exceptions import ConsentRequired
from entity_vectors.management.base import OneLineChecks
from entity_vectors.management.options import whole_number
from entity_vectors.management.services import check_services
from entity_vectors.models import DomainVersion
from entity_vectors.providers import configured_embedder_spec
from entity_vectors.search.query import MAX_LIMIT, search_entities

SEARCHES = [
    ("action", "users who signed up"),
    ("action", "customer stopped paying"),
    ("cohort", "paying customers at risk of churning"),
    ("cohort", "people from Germany"),
    ("event_definition", "billing events"),
    ("event_definition", "ファイル共有"),
]


def _embedders() -> str:
    """The embedders of the served versions (each version keeps its own), else the default one."""
    default = configured_embedder_spec().identity
    served = sorted(
        {record.identity for record in DomainVersion.objects.filter(state=DomainVersion.State.SERVING)}
    )
    if not served or served == [default]:
        return default
    return (
        f"{', '.join(served)} (the versions served; new versions get {default}: "
        "manage.py entity_vectors_status says how to move)"
    )


class Command(OneLineChecks, BaseCommand):
    help = "Seed demo data, run every domain through the Celery pipeline, print counts and example searches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=3, help="hits per example search")

    def handle(self, *args: Any, **options: Any) -> None:
        whole_number("--limit", options["limit"], 1, MAX_LIMIT)
        check_services(clickhouse=True, redis=not conf.inline_by_default())
        call_command("migrate", verbosity=0)
        teams = seed_demo()
        self.stdout.write(self.style.MIGRATE_HEADING("Demo dataset"))
        for team in teams:
            approved = (
                "approved" if team.organization.is_ai_data_processing_approved else "NOT approved for AI"
            )
            self.stdout.write(
                f"  team {team.id} {team.name!r} ({team.organization.name.removeprefix(DEMO_PREFIX)}, {approved}): "
                f"{team.actions.count()} actions, {team.cohorts.count()} cohorts, "
                f"{team.event_definitions.count()} event definitions"
            )
        self.stdout.write(
            f"  summarizer {conf.summarizer_name()}, embedder {_embedders()}, ClickHouse {conf.clickhouse_url()}"
        )

        where = (
            "in this process (inline: no worker needed)"
            if conf.inline_by_default()
            else f"queued for the Celery workers on {conf.queue()}, followed until done"
        )
        self.stdout.write(self.style.MIGRATE_HEADING(f"Vectorizing every domain, {where}"))
        call_command("sync_entity_vectors", all=True, wait=True, delay_between_batches=0, stdout=self.stdout)

        self.stdout.write(self.style.MIGRATE_HEADING("Example searches"))
        first = teams[0]
        for domain, query in SEARCHES:
            self._search(domain, first, query, options["limit"])
        unapproved = next(team for team in teams if not team.organization.is_ai_data_processing_approved)
        self.stdout.write(
            f"\n  Team {unapproved.name!r} is not approved for AI processing: nothing of it is indexed, "
            "and its searches are refused before any provider sees them:"
        )
        self._search("action", unapproved, "users who signed up", options["limit"])

    def _search(self, domain: str, team: Team, query: str, limit: int) -> None:
        self.stdout.write(f"\n  [{domain}] {query!r} in team {team.name!r}:")
        try:
            hits = search_entities(domain, team.id, query, limit=limit)
        except ConsentRequired:
            self.stdout.write("    (refused: its organization has not approved AI data processing)")
            return
        if not hits:
            self.stdout.write("    (no results)")
        for rank, hit in enumerate(hits, start=1):
            text = " ".join(hit.text.split())
            self.stdout.write(
                f"    {rank}. {hit.properties.get('name', hit.id)}  (distance {hit.distance:.3f})"
            )
            self.stdout.write(f"       {text[:160]}{'…' if len(text) > 160 else ''}")
