"""`manage.py team_api_token --team ID [--show-hint]`: issue a team's API token, or show its hint."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from app.models import Team
from entity_vectors import conf
from entity_vectors.management.base import OneLineChecks
from entity_vectors.management.options import MAX_DATABASE_ID, whole_number


class Command(OneLineChecks, BaseCommand):
    help = (
        "Rotate a team's API token (for GET /api/entity-vectors/search) and print the new one once: "
        "only its hash is stored, and the old token stops working at once. --show-hint prints the "
        "stored first characters of the current token without rotating it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--team", type=int, required=True, help="team id")
        parser.add_argument(
            "--show-hint",
            action="store_true",
            help="print only the current token's first characters (as stored); change nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        team_id = whole_number("--team", options["team"], 0, MAX_DATABASE_ID)
        try:
            team = Team.objects.filter(pk=team_id).first()
            if team is None:
                known = list(Team.objects.order_by("pk").values_list("pk", flat=True)[:20])
                listed = ", ".join(str(pk) for pk in known) if known else "none yet"
                raise CommandError(f"--team {team_id}: no such team (team ids: {listed})")
            if options["show_hint"]:
                self._show_hint(team)
                return
            token = team.rotate_api_token()
        except DatabaseError as exc:
            raise CommandError(_database_problem(exc)) from exc
        # The token alone on stdout (TOKEN=$(manage.py team_api_token --team 1)); the notice on stderr.
        self.stdout.write(token)
        self.stderr.write(
            f"New API token of team {team.pk} ({team.name!r}), shown only this once: only its hash is stored. "
            "The previous token stopped working now. Send it as 'Authorization: Bearer <token>'.",
            style_func=self.style.WARNING,
        )

    def _show_hint(self, team: Team) -> None:
        if not team.api_token_hint:
            self.stdout.write(
                f"team {team.pk} ({team.name!r}): no hint stored; rotate the token to issue one"
            )
            return
        self.stdout.write(
            f"team {team.pk} ({team.name!r}): the current token starts with {team.api_token_hint}… "
            "(the token itself is not stored; rotate it to get a new one)"
        )


def _database_problem(error: DatabaseError) -> str:
    """One line naming the database (its URL without the password) and what went wrong."""
    from django.db import connection

    settings_dict = connection.settings_dict
    where = settings_dict.get("HOST") or settings_dict.get("NAME")
    return conf.redact(
        f"the database ({connection.vendor} at {where}) failed: {' '.join(str(error).split())}; "
        "start it, or set DATABASE_URL"
    )
