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
            pytest.param("ev_abc\x00def", id="nul"),
            pytest.param("ev_abc\x07def", id="control-character"),
            pytest.param("ev_" + "x" * 5000, id="huge"),
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
            pytest.param(
                {"domain": "action", "q": "x", "mode": "fuzzy"}, "mode='fuzzy': must be one of", id="mode"
            ),
            pytest.param({"domain": "action", "q": "a\x00b"}, "must not contain NUL", id="nul-query"),
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
        settings.CLICKHOUSE_URL = "http://default:s3cret-pw@127.0.0.1:9/default"  # nothing listens there

        response = get(client, first.api_token, domain="action", q="signed up")

        assert response.status_code == 503
        assert response.json() == {"error": "search is unavailable right now; the error is logged"}

    def test_a_team_without_approval_is_403_before_any_provider_call(
        self, client: Client, llm: Any, embedded_store: EmbeddingStore
    ) -> None:
        team = make_team(approved=False)

        response = get(client, team.api_token, domain="action", q="users who paid", mode="vector")

        assert response.status_code == 403
        assert "has not approved AI data processing" in response.json()["error"]
        assert llm.requests == []  # the query text never reached the embeddings provider

    @pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
    def test_every_mode_answers_the_team_only(
        self, client: Client, two_teams: tuple[Any, Any], mode: str
    ) -> None:
        first, _ = two_teams

        body = get(client, first.api_token, domain="action", q="signed up", mode=mode).json()

        assert body["mode"] == mode
        assert body["results"][0]["properties"]["name"] == "Signed up"
        assert {hit["team_id"] for hit in body["results"]} == {first.id}

    def test_the_token_is_not_stored(self, two_teams: tuple[Any, Any]) -> None:
        from app.models import Team

        first, _ = two_teams
        stored = Team.objects.filter(pk=first.pk).values()[0]
        assert first.api_token not in {str(value) for value in stored.values()}

    def test_only_get_is_allowed(self, client: Client, two_teams: tuple[Any, Any]) -> None:
        first, _ = two_teams
        response = client.post(
            URL, {"domain": "action", "q": "x"}, headers={"Authorization": f"Bearer {first.api_token}"}
        )
        assert response.status_code == 405
