"""The generated product-analytics entities that `evaluate_search --distractors` adds."""

from __future__ import annotations

import re

import pytest

from entity_vectors.search.catalogue import generate

WORDS_ONLY = re.compile(r"^[$A-Za-z][A-Za-z0-9_ :+,.'-]*$")


class TestGenerate:
    """Distinct, deterministic, realistic, and about other things than the team's own entities."""

    @pytest.mark.parametrize("domain", ["action", "cohort", "event_definition"])
    def test_ten_thousand_distinct_realistic_entities(self, domain: str) -> None:
        made = list(generate(domain, 10_000))

        assert len({item.name.casefold() for item in made}) == 10_000
        assert len({item.id for item in made}) == 10_000
        assert all(WORDS_ONLY.match(item.name) for item in made), [
            i.name for i in made if not WORDS_ONLY.match(i.name)
        ][:5]
        assert all(item.name in item.text for item in made)
        assert [item.name for item in generate(domain, 50)] == [item.name for item in made[:50]]

    def test_the_kind_follows_the_domain(self) -> None:
        (action,) = generate("action", 1)
        (cohort,) = generate("cohort", 1)
        (event,) = generate("event_definition", 1)

        assert action.text.startswith("Action ") and "It matches when" in action.text
        assert cohort.text.startswith("Cohort ") and "Persons who match" in cohort.text
        assert event.text.startswith("Event `$")  # the libraries' own events come first

    def test_nothing_shares_a_word_with_the_team_s_entities(self) -> None:
        made = list(generate("event_definition", 2000, exclude=["$pageview", "file uploaded", "Invite sent"]))

        assert not [
            item.name for item in made if re.search(r"pagev|\bfile|upload|invit|\bsent\b", item.name, re.I)
        ]
