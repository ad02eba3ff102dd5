"""A small, realistic demo dataset: three organizations (one without AI approval) and their entities."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from app.models import Action, Cohort, EventDefinition, Organization, Team

DEMO_PREFIX = "Demo: "

_ACTIONS: list[dict[str, Any]] = [
    {
        "name": "Signed up",
        "description": "A visitor created an account, from the signup page or the invite flow.",
        "steps": [
            {"event": "$pageview", "url": "/signup/complete", "url_matching": "contains"},
            {"event": "user signed up"},
        ],
    },
    {
        "name": "Upgraded to paid plan",
        "description": "Checkout for a paid subscription succeeded.",
        "steps": [
            {
                "event": "subscription_started",
                "properties": [
                    {"key": "plan", "value": ["pro", "business"], "operator": "exact", "type": "event"}
                ],
            }
        ],
    },
    {
        "name": "Clicked pricing CTA",
        "description": "",
        "steps": [
            {
                "event": "$autocapture",
                "url": "/pricing",
                "url_matching": "contains",
                "text": "Start free trial",
            },
            {
                "event": "$autocapture",
                "selector": "a.pricing-cta",
                "href": "/signup",
                "href_matching": "contains",
            },
        ],
    },
    {
        "name": "Uploaded a file",
        "description": "Any successful upload, web or desktop client.",
        "steps": [{"event": "file uploaded"}, {"event": "desktop_sync_completed"}],
    },
    {
        "name": "Shared a folder",
        "description": "A user shared a folder with a teammate or by public link.",
        "steps": [{"event": "folder shared"}],
    },
    {
        "name": "Viewed onboarding checklist",
        "description": "",
        "steps": [{"event": "$pageview", "url": "/onboarding", "url_matching": "contains"}],
    },
    {
        "name": "Cancelled subscription",
        "description": "The customer cancelled from billing settings; churn signal.",
        "steps": [{"event": "subscription_cancelled"}],
    },
]

_COHORTS: list[dict[str, Any]] = [
    {
        "name": "Power uploaders",
        "description": "People who upload files several times a week.",
        "filters": {
            "properties": {
                "type": "AND",
                "values": [
                    {
                        "type": "behavioral",
                        "key": "file uploaded",
                        "value": "performed_event_multiple",
                        "operator": "gte",
                        "operator_value": 10,
                        "time_value": 30,
                        "time_interval": "day",
                    }
                ],
            }
        },
        "count": 412,
    },
    {
        "name": "Churn risk: paid, inactive",
        "description": "Paying customers who stopped uploading.",
        "filters": {
            "properties": {
                "type": "AND",
                "values": [
                    {"type": "person", "key": "plan", "operator": "exact", "value": ["pro", "business"]},
                    {
                        "type": "behavioral",
                        "key": "file uploaded",
                        "value": "performed_event",
                        "time_value": 14,
                        "time_interval": "day",
                        "negation": True,
                    },
                ],
            }
        },
        "count": 57,
    },
    {
        "name": "Enterprise trial users",
        "description": "",
        "filters": {
            "properties": {
                "type": "OR",
                "values": [
                    {"type": "person", "key": "company_size", "operator": "gte", "value": 500},
                    {"type": "person", "key": "email", "operator": "icontains", "value": "@bigcorp.com"},
                ],
            }
        },
        "count": 23,
    },
    {
        "name": "Beta testers",
        "description": "Hand-picked users who test new features early.",
        "filters": {},
        "is_static": True,
        "count": 120,
    },
    {
        "name": "New signups from Germany",
        "description": "",
        "filters": {
            "properties": {
                "type": "AND",
                "values": [
                    {"type": "person", "key": "$geoip_country_code", "operator": "exact", "value": "DE"},
                    {
                        "type": "behavioral",
                        "key": "user signed up",
                        "value": "performed_event",
                        "time_value": 7,
                        "time_interval": "day",
                    },
                ],
            }
        },
        "count": 31,
    },
]

_EVENT_DEFINITIONS: list[dict[str, Any]] = [
    {"name": "$pageview", "description": "A page was viewed in the web app.", "tags": ["web", "autocapture"]},
    {"name": "user signed up", "description": "Account created; fired once per person.", "tags": ["growth"]},
    {
        "name": "subscription_started",
        "description": "A paid subscription began.",
        "tags": ["billing", "revenue"],
    },
    {
        "name": "subscription_cancelled",
        "description": "A subscription was cancelled.",
        "tags": ["billing", "churn"],
    },
    {
        "name": "file uploaded",
        "description": "A file finished uploading; size in bytes is a property.",
        "tags": ["core"],
    },
    {"name": "folder shared", "description": "A folder was shared with someone.", "tags": ["collaboration"]},
    {"name": "desktop_sync_completed", "description": "", "tags": ["desktop"]},
    {
        "name": "invite sent",
        "description": "A user invited a teammate by email.",
        "tags": ["growth", "collaboration"],
    },
    {"name": "search performed", "description": "Someone searched their files.", "tags": []},
    {"name": "ファイル共有", "description": "日本語 UI でファイルが共有されました。", "tags": ["i18n"]},
]

# (organization, approved, [team names])
_ORGANIZATIONS = [
    ("Hedgebox", True, ["Hedgebox Web", "Hedgebox Desktop"]),
    ("Burrow Analytics", True, ["Burrow"]),
    ("Quiet Corp", False, ["Quiet Corp Main"]),
]


@transaction.atomic
def seed_demo() -> list[Team]:
    """Create the demo organizations, teams and entities once; return the teams."""
    teams: list[Team] = []
    for org_name, approved, team_names in _ORGANIZATIONS:
        organization, _ = Organization.objects.get_or_create(
            name=DEMO_PREFIX + org_name, defaults={"is_ai_data_processing_approved": approved}
        )
        for team_name in team_names:
            team, team_created = Team.objects.get_or_create(organization=organization, name=team_name)
            teams.append(team)
            if not team_created:
                continue
            Action.objects.bulk_create([Action(team=team, **fields) for fields in _ACTIONS])
            Cohort.objects.bulk_create([Cohort(team=team, **fields) for fields in _COHORTS])
            EventDefinition.objects.bulk_create(
                [EventDefinition(team=team, **fields) for fields in _EVENT_DEFINITIONS]
            )
    return teams
