"""GET /api/entity-vectors/search: one team's entities, by its API token."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_team

pytestmark = pytest.mark.django_db
URL = "/api/entity-vectors/search"


@pytest.fixture
def two_teams(offline: None, embedded_store: EmbeddingStore) -> tuple[Any, Any]:
    """Two teams with the same action, vectorized."""
    first, second = make_team(), make_team()
    make_action(first, name="Signed up", description="Account created")
    make_action(second, name="Signed up", description="Account created")
    make_action(first, name="Paid invoice")
    run_workflow("action")
    return first, second


def get(client: Client, token: str | None, **params: Any) -> Any:
    """A GET with the bearer token, if any."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get(URL, params, headers=headers)


class TestSearchEndpoint:
    """Answers only the calling team; 401 without a valid token; 400 with a message."""

    def test_returns_only_the_token_owners_entities(self, client: Client, two_teams: tuple[Any, Any]) -> None:
        first, second = two_teams

        response = get(client, first.api_token, domain="action", q="signed up", limit=5)

        assert response.status_code == 200
        body = response.json()
        assert body["team_id"] == first.id
        assert body["results"][0]["properties"]["name"] == "Signed up"
        assert {hit["team_id"] for hit in body["results"]} == {first.id}
        assert set(body["results"][0]) == {"id", "team_id", "domain", "text", "properties", "distance"}
        other = get(client, second.api_token, domain="action", q="signed up").json()
        assert {hit["team_id"] for hit in other["results"]} == {second.id}
        assert len(other["results"]) == 1

    def test_limit_is_honoured(self, client: Client, two_teams: tuple[Any, Any]) -> None:
        first, _ = two_teams
        assert len(get(client, first.api_token, domain="action", q="signed", limit=1).json()["results"]) == 1

    @pytest.mark.parametrize(
        "token",
        [
            pytest.param(None, id="missing"),
            pytest.param("ev_not-a-token", id="wrong"),
            pytest.param("", id="empty"),
        ],
    )
    def test_missing_or_wrong_token_is_401(
        self, client: Client, two_teams: tuple[Any, Any], token: str | None
    ) -> None:
        response = get(client, token, domain="action", q="signed up")

        assert response.status_code == 401
        assert "API token" in response.json()["error"]
        assert response["WWW-Authenticate"].startswith("Bearer")

    def test_a_basic_auth_header_is_401(self, client: Client, two_teams: tuple[Any, Any]) -> None:
        first, _ = two_teams
        response = client.get(
            URL, {"domain": "action", "q": "x"}, headers={"Authorization": f"Basic {first.api_token}"}
        )
        assert response.status_code == 401

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            pytest.param({"q": "signed up"}, "domain: required", id="no-domain"),
            pytest.param({"domain": "action"}, "q: required", id="no-query"),
            pytest.param({"domain": "action", "q": "   "}, "q: required", id="blank-query"),
            pytest.param(
                {"domain": "dashboard", "q": "x"},
                "unknown domain 'dashboard'; registered domains",
                id="unknown",
            ),
            pytest.param(
                {"domain": "action", "q": "x", "limit": "ten"},
                "limit='ten': must be a whole number",
                id="text-limit",
            ),
            pytest.param(
                {"domain": "action", "q": "x", "limit": "0"}, "limit=0: must be between 1 and 100", id="zero"
            ),
            pytest.param(
                {"domain": "action", "q": "x", "limit": "500"},
                "limit=500: must be between 1 and 100",
                id="big",
            ),
            pytest.param(
                {"domain": "action", "q": "x", "embedding_version": "-1"},
                "embedding_version=-1",
                id="bad-version",
            ),
        ],
    )
    def test_bad_parameters_are_400_with_a_message(
        self, client: Client, two_teams: tuple[Any, Any], params: dict[str, str], message: str
    ) -> None:
        first, _ = two_teams

        response = get(client, first.api_token, **params)

        assert response.status_code == 400
        assert message in response.json()["error"]

    def test_a_server_side_problem_is_a_503_without_details(
        self, client: Client, two_teams: tuple[Any, Any], settings: Any
    ) -> None:
        first, _ = two_teams
        settings.ENTITY_VECTORS_EMBEDDER = "openai"
        settings.OPENAI_API_KEY = ""

        response = get(client, first.api_token, domain="action", q="signed up")

        assert response.status_code == 503
        assert response.json() == {"error": "search is unavailable right now; the error is logged"}

    def test_only_get_is_allowed(self, client: Client, two_teams: tuple[Any, Any]) -> None:
        first, _ = two_teams
        response = client.post(
            URL, {"domain": "action", "q": "x"}, headers={"Authorization": f"Bearer {first.api_token}"}
        )
        assert response.status_code == 405
