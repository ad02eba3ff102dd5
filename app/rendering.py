"""Deterministic natural-language renderings of the host entities.

The rendering is the LLM's input and the `template` summarizer's output, so it must be stable
(same entity, same text) and say what the entity means, not how it is stored.
"""

from __future__ import annotations

from typing import Any

_MATCHING = {
    "contains": "contains",
    "icontains": "contains",
    "exact": "is",
    "regex": "matches the pattern",
    "not_icontains": "does not contain",
    "is_not": "is not",
}
_OPERATORS = {
    "exact": "is",
    "is_not": "is not",
    "icontains": "contains",
    "not_icontains": "does not contain",
    "regex": "matches the pattern",
    "not_regex": "does not match the pattern",
    "gt": "is greater than",
    "gte": "is at least",
    "lt": "is less than",
    "lte": "is at most",
    "is_set": "is set",
    "is_not_set": "is not set",
    "is_date_before": "is before",
    "is_date_after": "is after",
}
# Behaviour -> (what a match did, what a negated match did not do).
_BEHAVIOURS = {
    "performed_event": ("performed event", "did not perform event"),
    "performed_event_multiple": ("performed event", "did not perform event"),
    "performed_event_first_time": (
        "performed for the first time event",
        "did not perform for the first time event",
    ),
    "performed_event_regularly": ("regularly performed event", "did not regularly perform event"),
    "stopped_performing_event": ("stopped performing event", "did not stop performing event"),
    "restarted_performing_event": ("restarted performing event", "did not restart performing event"),
}
_COUNT_OPERATORS = {
    "gte": "at least",
    "lte": "at most",
    "exact": "exactly",
    "gt": "more than",
    "lt": "fewer than",
}


def _code(value: Any) -> str:
    text = ", ".join(str(item) for item in value) if isinstance(value, list) else str(value)
    return f"`{text}`"


def render_property_filter(prop: dict[str, Any], subject: str = "property") -> str:
    """`property `plan` is `pro``-style text for one property filter."""
    key = prop.get("key", "?")
    kind = prop.get("type")
    noun = f"{kind} property" if kind in ("person", "event", "element", "group", "session") else subject
    operator = _OPERATORS.get(str(prop.get("operator") or "exact"), str(prop.get("operator")))
    if prop.get("operator") in ("is_set", "is_not_set"):
        return f"{noun} `{key}` {operator}"
    return f"{noun} `{key}` {operator} {_code(prop.get('value', ''))}"


def render_action_step(step: dict[str, Any]) -> str:
    """One match group: its conditions joined by AND."""
    parts: list[str] = []
    if step.get("event"):
        parts.append(f"event is {_code(step['event'])}")
    if step.get("url"):
        parts.append(
            f"URL {_MATCHING.get(str(step.get('url_matching') or 'contains'), 'contains')} {_code(step['url'])}"
        )
    if step.get("text"):
        parts.append(
            f"element text {_MATCHING.get(str(step.get('text_matching') or 'exact'), 'is')} {_code(step['text'])}"
        )
    if step.get("href"):
        parts.append(
            f"link target {_MATCHING.get(str(step.get('href_matching') or 'exact'), 'is')} {_code(step['href'])}"
        )
    if step.get("selector"):
        parts.append(f"element matches selector {_code(step['selector'])}")
    for prop in step.get("properties") or []:
        if isinstance(prop, dict):
            parts.append(render_property_filter(prop, "event property"))
    return " AND ".join(parts) if parts else "any event"


def render_action(name: str, description: str, steps: list[dict[str, Any]]) -> str:
    """An action: its name, description, and its match groups with OR between them."""
    lines = [f"Action {_quote(name)}."]
    if description.strip():
        lines.append(f"Description: {_sentence(description)}")
    groups = [render_action_step(step) for step in steps if isinstance(step, dict)]
    if len(groups) == 1:
        lines.append(f"It matches when {groups[0]}.")
    elif groups:
        lines.append("It matches when any of these happens:")
        lines.extend(f"{'- ' if index == 0 else '- OR '}{group}" for index, group in enumerate(groups))
    else:
        lines.append("It has no match groups yet.")
    return "\n".join(lines)


def render_cohort_node(node: Any) -> str:
    """A cohort filter node: a group (AND/OR of children) or a single filter."""
    if not isinstance(node, dict):
        return "an unrecognised condition"
    if node.get("type") in ("AND", "OR") or (
        "values" in node and node.get("type") not in ("person", "behavioral", "cohort")
    ):
        joiner = " OR " if node.get("type") == "OR" else " AND "
        children = [render_cohort_node(child) for child in node.get("values") or []]
        if not children:
            return "everyone"
        text = joiner.join(children)
        return f"({text})" if len(children) > 1 else text
    negated = bool(node.get("negation"))
    kind = node.get("type")
    if kind == "behavioral":
        positive, negative = _BEHAVIOURS.get(str(node.get("value")), _BEHAVIOURS["performed_event"])
        text = f"{negative if negated else positive} {_code(node.get('key', '?'))}"
        if node.get("value") == "performed_event_multiple" and node.get("operator_value") is not None:
            count = _COUNT_OPERATORS.get(str(node.get("operator") or "gte"), "at least")
            text += f" {count} {node['operator_value']} times"
        if node.get("time_value") and node.get("time_interval"):
            text += f" in the last {node['time_value']} {node['time_interval']}s"
        return text
    if kind == "cohort":
        text = f"is in cohort {node.get('value', '?')}"
        return f"is not in cohort {node.get('value', '?')}" if negated else text
    text = render_property_filter(node, "person property")
    return f"not ({text})" if negated else text


def render_cohort(name: str, description: str, filters: dict[str, Any], is_static: bool) -> str:
    """A cohort: its name, description, and who is in it (not its size, which changes constantly)."""
    lines = [f"Cohort {_quote(name)}."]
    if description.strip():
        lines.append(f"Description: {_sentence(description)}")
    if is_static:
        lines.append("A static cohort: a fixed list of persons uploaded or saved at one point in time.")
    else:
        root = filters.get("properties") if isinstance(filters, dict) else None
        lines.append(f"Persons who match: {render_cohort_node(root) if root else 'everyone'}.")
    return "\n".join(lines)


def render_event_definition(name: str, description: str, tags: list[str]) -> str:
    """An event definition: its name, documentation and tags."""
    lines = [f"Event {_code(name)}."]
    if description.strip():
        lines.append(f"Description: {_sentence(description)}")
    clean_tags = [str(tag) for tag in tags or [] if str(tag).strip()]
    if clean_tags:
        lines.append(f"Tags: {', '.join(clean_tags)}.")
    return "\n".join(lines)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?", "。")) else text + "."


def _quote(name: str) -> str:
    return f'"{name}"' if name.strip() else "(unnamed)"
