"""Search is scoped to one team, whatever another team holds."""

from __future__ import annotations

import pytest

from entity_vectors import search_entities
from entity_vectors.exceptions import SearchError
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_team
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db


class TestTenancy:
    """Every search sees one team only."""

    def test_same_text_in_two_teams_is_found_only_by_its_own_team(
        self, llm: OpenAIServer, embedded_store: EmbeddingStore
    ) -> None:
        first, second = make_team(), make_team()
        mine = make_action(first, name="Exported a report", description="CSV export of a dashboard")
        theirs = make_action(second, name="Exported a report", description="CSV export of a dashboard")
        run_workflow("action")

        first_hits = search_entities("action", first.id, "export report")
        second_hits = search_entities("action", second.id, "export report")

        assert [(hit.id, hit.team_id) for hit in first_hits] == [(str(mine.pk), first.id)]
        assert [(hit.id, hit.team_id) for hit in second_hits] == [(str(theirs.pk), second.id)]
        with pytest.raises(SearchError, match="no such team"):
            search_entities("action", 999_999, "export report")
