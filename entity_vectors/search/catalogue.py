"""Generated entities of a product-analytics app: the catalogue a real team accumulates.

`evaluate_search --distractors N` adds N of these to every team the labelled set searches: the
actions, cohorts and event definitions a real team accumulates (`dashboard_shared`,
`$pageleave`, "Exported a report from the mobile app", "Dormant admins in EMEA"), named and
described the way people name and describe them, many of them close to the labelled entities
on purpose. Deterministic: the same seed gives the same entities.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from entity_vectors.store.fulltext import STOP_WORDS, words

# What people in a product act on.
OBJECTS = (
    "file", "folder", "document", "dashboard", "insight", "report", "chart", "notebook", "survey",
    "feature flag", "experiment", "session recording", "invoice", "subscription", "plan",
    "payment method", "coupon", "team", "workspace", "project", "organization", "integration",
    "webhook", "API key", "password", "email address", "profile", "avatar", "comment", "mention",
    "notification", "export", "import", "data warehouse table", "annotation", "alert",
    "billing address", "seat", "license", "trial", "product tour", "tooltip", "checklist",
    "template", "tag", "playlist", "share link", "invite", "custom domain", "SSO connection", "role",
    "permission", "plugin", "pipeline", "destination", "saved query", "filter", "bookmark", "cart",
    "order", "product", "checkout", "refund", "shipment", "review", "message", "support ticket",
    "help article", "video", "course", "lesson", "quiz", "certificate", "calendar event", "task",
    "board", "sprint", "release", "deployment", "environment", "secret", "backup", "audit log",
)  # fmt: skip
# What they do to it, as an action's or an event's verb: (past tense, event suffix).
VERBS = (
    ("created", "created"), ("viewed", "viewed"), ("opened", "opened"), ("edited", "edited"),
    ("updated", "updated"), ("renamed", "renamed"), ("deleted", "deleted"), ("archived", "archived"),
    ("restored", "restored"), ("shared", "shared"), ("duplicated", "duplicated"),
    ("exported", "exported"), ("imported", "imported"), ("downloaded", "downloaded"),
    ("uploaded", "uploaded"), ("published", "published"), ("moved", "moved"), ("pinned", "pinned"),
    ("starred", "starred"), ("commented on", "commented"), ("subscribed to", "subscribed"),
    ("unsubscribed from", "unsubscribed"), ("connected", "connected"),
    ("disconnected", "disconnected"), ("enabled", "enabled"), ("disabled", "disabled"),
    ("completed", "completed"), ("started", "started"), ("failed to save", "save_failed"),
    ("dismissed", "dismissed"), ("approved", "approved"), ("rejected", "rejected"),
    ("requested", "requested"), ("purchased", "purchased"), ("cancelled", "cancelled"),
    ("refunded", "refunded"), ("upgraded", "upgraded"), ("downgraded", "downgraded"),
    ("renewed", "renewed"), ("verified", "verified"), ("reset", "reset"), ("scheduled", "scheduled"),
    ("searched", "searched"), ("filtered", "filtered"), ("sorted", "sorted"), ("copied", "copied"),
)  # fmt: skip
# Where or how it happened.
CONTEXTS = (
    "", "", "", "from the mobile app", "on iOS", "on Android", "via the API", "from the desktop client",
    "in settings", "from the sidebar", "from the command palette", "during onboarding",
    "from an email link", "with a keyboard shortcut", "in bulk", "from the home page",
    "from a Slack notification", "on the pricing page", "in the admin panel", "from the browser extension",
)  # fmt: skip
PAGES = (
    "/pricing", "/signup", "/login", "/settings", "/billing", "/dashboard", "/onboarding", "/docs",
    "/blog", "/careers", "/checkout", "/account", "/integrations", "/changelog", "/status", "/contact",
    "/features", "/customers", "/security", "/api", "/templates", "/help", "/invite", "/welcome",
)  # fmt: skip
# Events that analytics libraries send by themselves.
BUILTIN_EVENTS = (
    ("$pageleave", "A page was left: the tab closed or the user navigated away."),
    ("$screen", "A screen was shown in the mobile app."),
    ("$identify", "An anonymous visitor was identified as a known person."),
    ("$groupidentify", "A person was associated with a company or workspace group."),
    ("$autocapture", "A click, change or submit captured automatically in the browser."),
    ("$rageclick", "Several rapid clicks in one spot: a sign of frustration."),
    ("$exception", "An uncaught error in the browser or the app."),
    ("$feature_flag_called", "A feature flag was evaluated for a person."),
    ("$survey_shown", "A survey was displayed to a person."),
    ("$survey_sent", "A person answered a survey."),
    ("$survey_dismissed", "A person closed a survey without answering."),
    ("$web_vitals", "Core web vitals measured on a page load."),
    ("$set", "Person properties were updated."),
    ("$create_alias", "Two person identities were merged."),
    ("$opt_in", "A person opted in to tracking."),
    ("$dead_click", "A click that changed nothing on the page."),
    ("$copy_autocapture", "Text was copied or cut on a page."),
    ("$session_start", "A new session began."),
    ("$session_end", "A session ended after inactivity."),
    ("$app_installed", "The mobile app was installed."),
    ("$app_opened", "The mobile app was opened."),
    ("$app_backgrounded", "The mobile app went to the background."),
    ("$app_updated", "The mobile app was updated to a new version."),
    ("$ai_generation", "A call to a language model, with its tokens and cost."),
)  # fmt: skip
# People a cohort may group.
PERSONAS = (
    "users", "admins", "owners", "editors", "viewers", "developers", "designers", "marketers",
    "customers", "subscribers", "visitors", "trial users", "free plan users", "paying customers",
    "annual subscribers", "monthly subscribers", "mobile users", "desktop users", "new users",
    "returning users", "team leads", "students", "teachers", "agencies", "partners", "resellers",
)  # fmt: skip
QUALIFIERS = (
    "Active", "Dormant", "Engaged", "Inactive", "At-risk", "Churned", "Loyal", "High-value",
    "Low-activity", "Recently activated", "Highly engaged", "Occasional", "Weekly active",
    "Monthly active", "Daily active", "Newly onboarded", "Long-time", "Reactivated", "Unverified",
    "Verified", "Invited", "Self-serve", "Sales-led",
)  # fmt: skip
PLACES = (
    ("France", "FR"), ("the United States", "US"), ("the United Kingdom", "GB"), ("Spain", "ES"),
    ("Italy", "IT"), ("Japan", "JP"), ("Brazil", "BR"), ("India", "IN"), ("Canada", "CA"),
    ("Australia", "AU"), ("the Netherlands", "NL"), ("Sweden", "SE"), ("Poland", "PL"),
    ("Mexico", "MX"), ("South Korea", "KR"), ("Austria", "AT"), ("Switzerland", "CH"),
    ("EMEA", "EMEA"), ("APAC", "APAC"), ("North America", "NA"), ("LATAM", "LATAM"),
)  # fmt: skip
WINDOWS = ((7, "last week"), (14, "last two weeks"), (30, "last month"), (90, "last quarter"))
TEAMS = ("growth", "billing", "platform", "mobile", "data", "support", "design", "sales", "success")
PROPERTIES = (
    "plan",
    "source",
    "browser",
    "os",
    "locale",
    "size",
    "duration_ms",
    "count",
    "referrer",
    "status",
)
VALUES = ("pro", "free", "Chrome", "iOS", "en-US", "large", "success", "error", "google", "1")
PLANS = ("free", "starter", "pro", "business", "enterprise", "teams")
SURFACES = ("web", "mobile", "api", "desktop", "admin", "ios", "android", "extension", "email", "server")
TAGS = ("web", "mobile", "billing", "growth", "core", "collaboration", "engagement", "retention", "revenue")


@dataclass(frozen=True)
class Distractor:
    """One generated entity: its id (unique among generated ones), name and rendered text."""

    id: str
    name: str
    description: str
    text: str

    def properties(self) -> str:
        """The row's properties as JSON: its name and description, as the host configs write them."""
        return json.dumps({"name": self.name, "description": self.description})


def _sentence(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def _indefinite(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


def _object_phrase(rng: random.Random, obj: str) -> str:
    return rng.choice((_indefinite(obj), f"the {obj}", f"a new {obj}", f"an existing {obj}"))


def _event_name(obj: str, suffix: str) -> str:
    return f"{obj.replace(' ', '_').lower()}_{suffix}"


def _step(rng: random.Random, obj: str, suffix: str) -> str:
    """One match group of an action, as the host's rendering writes it."""
    shape = rng.randrange(4)
    if shape == 0:
        return f"event is `$pageview` AND URL contains `{rng.choice(PAGES)}`"
    if shape == 1:
        return (
            f"event is `$autocapture` AND element text is `{rng.choice(VERBS)[0].capitalize()} {obj}` "
            f"AND URL contains `{rng.choice(PAGES)}`"
        )
    step = f"event is `{_event_name(obj, suffix)}`"
    if rng.random() < 0.5:
        step += f" AND event property `{rng.choice(PROPERTIES)}` is `{rng.choice(VALUES)}`"
    return step


def _action(rng: random.Random) -> tuple[str, str, str]:
    obj = rng.choice(OBJECTS)
    past, suffix = rng.choice(VERBS)
    context = rng.choice(CONTEXTS)
    name = f"{past.capitalize()} {rng.choice((_indefinite(obj), obj, f'the {obj}'))}" + (
        f" {context}" if context else ""
    )
    first = rng.choice(
        (
            f"A user {past} {_object_phrase(rng, obj)}{' ' + context if context else ''}.",
            f"Counts every {obj} {past.split()[0]}, once per session.",
            f"Someone {past} {_object_phrase(rng, obj)} in the {rng.choice(SURFACES)} app.",
        )
    )
    second = rng.choice(
        ("", f"Owned by the {rng.choice(TEAMS)} team.", f"Used in the {rng.choice(TEAMS)} weekly review.")
    )
    description = "" if rng.random() < 0.15 else f"{first} {second}".strip()
    groups = [f"event is `{_event_name(obj, suffix)}`"] + [
        _step(rng, obj, suffix) for _ in range(rng.randrange(3))
    ]
    lines = [f'Action "{name}".']
    if description:
        lines.append(f"Description: {_sentence(description)}")
    if len(groups) == 1:
        lines.append(f"It matches when {groups[0]}.")
    else:
        lines.append("It matches when any of these happens:")
        lines.extend(f"{'- ' if index == 0 else '- OR '}{group}" for index, group in enumerate(groups))
    return name, description, "\n".join(lines)


def _cohort(rng: random.Random) -> tuple[str, str, str]:
    persona = rng.choice(PERSONAS)
    shape = rng.randrange(4)
    days, window = rng.choice(WINDOWS)
    obj = rng.choice(OBJECTS)
    past, suffix = rng.choice(VERBS)
    event = _event_name(obj, suffix)
    plan = rng.choice(PLANS)
    place, code = rng.choice(PLACES)
    behaviour = f"performed event `{event}` in the last {days} days"
    if shape == 0:
        name = f"{rng.choice(QUALIFIERS)} {persona} in {place}"
        condition = f"(person property `$geoip_country_code` is `{code}` AND {behaviour})"
        description = f"{persona.capitalize()} from {place} who {past} {_object_phrase(rng, obj)} recently."
    elif shape == 1:
        name = f"{persona.capitalize()} who {past} {_object_phrase(rng, obj)} in the {window}"
        condition = behaviour
        description = f"For the {rng.choice(TEAMS)} team's follow-up with {persona}."
    elif shape == 2:
        name = f"{rng.choice(QUALIFIERS)} {plan} plan {persona}"
        condition = f"(person property `plan` is `{plan}` AND {behaviour})"
        description = f"{persona.capitalize()} on the {plan} plan, by how often they use {obj}s."
    else:
        count = rng.choice((3, 5, 10, 20, 50))
        name = f"{rng.choice(QUALIFIERS)} {persona}: {obj} {suffix.replace('_', ' ')} {count}+ times"
        condition = f"performed event `{event}` at least {count} times in the last {days} days"
        description = f"{persona.capitalize()} who {past} {obj}s again and again."
    if rng.random() < 0.2:
        description = ""
    lines = [f'Cohort "{name}".']
    if description:
        lines.append(f"Description: {_sentence(description)}")
    lines.append(f"Persons who match: {condition}.")
    return name, description, " ".join(lines)


def _event(rng: random.Random) -> tuple[str, str, str]:
    obj = rng.choice(OBJECTS)
    past, suffix = rng.choice(VERBS)
    style = rng.randrange(4)
    base = obj.lower().replace(" ", "_")
    if style == 0:
        name = f"{base}_{suffix}"
    elif style == 3:
        name = f"{rng.choice(SURFACES)}_{base}_{suffix}"
    elif style == 1:
        name = f"{obj.lower()} {past}"
    else:
        name = f"{''.join(part.capitalize() for part in obj.split())} {past.capitalize()}"
    description = rng.choice(
        (
            f"{_object_phrase(rng, obj).capitalize()} was {past}; `{rng.choice(PROPERTIES)}` is a property.",
            f"{_object_phrase(rng, obj).capitalize()} was {past} {rng.choice(CONTEXTS[3:])}.",
            f"Sent by the {rng.choice(TEAMS)} team's code when {_object_phrase(rng, obj)} is {past}.",
            "",
        )
    )
    tags = sorted(rng.sample(TAGS, rng.randrange(3)))
    lines = [f"Event `{name}`."]
    if description:
        lines.append(f"Description: {_sentence(description)}")
    if tags:
        lines.append(f"Tags: {', '.join(tags)}.")
    return name, description, " ".join(lines)


def _kind(domain: str) -> str:
    if "cohort" in domain:
        return "cohort"
    if "event" in domain:
        return "event"
    return "action"


def _stems(name: str) -> set[str]:
    """The content words of a name, cut to five letters (uploaders ~ uploaded, folders ~ folder)."""
    return {word[:5] for word in words(name) if word not in STOP_WORDS and not word.isdigit()}


def generate(domain: str, count: int, *, seed: int = 0, exclude: Iterable[str] = ()) -> Iterator[Distractor]:
    """`count` distinct generated entities of `domain`: event definitions for a domain named like
    events, cohorts for one named like cohorts, actions otherwise.

    None shares a content word with a name in `exclude` (the team's own entities): they are other
    entities of the product, not other answers to what is asked of those (a generated "Deleted a
    file" beside a real "Uploaded a file" would be one more entity about files, which a labelled
    query about files could rightly find first).
    """
    rng = random.Random(f"{domain}:{seed}")
    kind = _kind(domain)
    make = {"action": _action, "cohort": _cohort, "event": _event}[kind]
    names = list(exclude)
    taken = {name.casefold() for name in names}
    avoided = set().union(*(_stems(name) for name in names)) if names else set()
    made = 0
    if kind == "event":
        for name, description in BUILTIN_EVENTS:
            if made == count:
                return
            if name.casefold() not in taken and not _stems(name) & avoided:
                taken.add(name.casefold())
                yield Distractor(
                    f"distractor-{made}", name, description, f"Event `{name}`. Description: {description}"
                )
                made += 1
    misses = 0
    while made < count:
        name, description, text = make(rng)
        if name.casefold() in taken or _stems(name) & avoided:
            misses += 1
            if misses > 100 * (count + 100):
                raise ValueError(f"cannot generate {count} distinct {kind} names")
            continue
        taken.add(name.casefold())
        yield Distractor(f"distractor-{made}", name, description, text)
        made += 1
