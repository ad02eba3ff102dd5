"""Small model factories: every test builds exactly the entities it talks about."""

from __future__ import annotations

import itertools
import re
from typing import Any

from app.models import Action, Cohort, EventDefinition, Organization, Team

_sequence = itertools.count(1)


def _slug(name: str) -> str:
    return re.sub(r"\W+", "_", name.lower()).strip("_")


def make_team(approved: bool = True, name: str | None = None) -> Team:
    """A team in a new organization, approved for AI processing unless told otherwise.

    Its API token is issued at once and kept on the instance as `api_token` (only its hash is stored).
    """
    number = next(_sequence)
    organization = Organization.objects.create(name=f"Org {number}", is_ai_data_processing_approved=approved)
    team = Team.objects.create(organization=organization, name=name or f"Team {number}")
    team.api_token = team.rotate_api_token()  # type: ignore[attr-defined]
    return team


def make_action(team: Team, name: str | None = None, **fields: Any) -> Action:
    """An action with one match group unless `steps` is given.

    A named action's event comes from its name, so that its text (and its vector) is the same
    whatever ran before it; an unnamed one is numbered, name and event alike.
    """
    number = next(_sequence)
    event = _slug(name) if name else f"event_{number}"
    fields.setdefault("steps", [{"event": event}])
    return Action.objects.create(team=team, name=name if name is not None else f"Action {number}", **fields)


def make_cohort(team: Team, name: str | None = None, **fields: Any) -> Cohort:
    """A cohort of persons with one property filter unless `filters` is given (its value from the
    name, as `make_action`'s event)."""
    number = next(_sequence)
    fields.setdefault(
        "filters",
        {
            "properties": {
                "type": "AND",
                "values": [
                    {"type": "person", "key": "plan", "value": _slug(name) if name else f"plan_{number}"}
                ],
            }
        },
    )
    return Cohort.objects.create(team=team, name=name if name is not None else f"Cohort {number}", **fields)


def make_event_definition(team: Team, name: str | None = None, **fields: Any) -> EventDefinition:
    """An event definition."""
    number = next(_sequence)
    return EventDefinition.objects.create(
        team=team, name=name if name is not None else f"event_{number}", **fields
    )
