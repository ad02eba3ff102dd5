"""The search endpoint: `GET /api/entity-vectors/search`, authenticated by a team's API token."""

from __future__ import annotations

import dataclasses
import hmac

import structlog
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from app.models import Team
from entity_vectors import search_entities
from entity_vectors.exceptions import EntityVectorsError, SearchError, UnknownDomainError

log = structlog.get_logger("app")
MAX_LIMIT = 100


def _team(request: HttpRequest) -> Team | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    team = Team.objects.filter(api_token=token).first()
    if team is None or not hmac.compare_digest(team.api_token, token):
        return None
    return team


def _error(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="entity-vectors"'
    return response


def _whole_number(name: str, raw: str | None, default: int | None, low: int, high: int) -> int | None:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SearchError(f"{name}={raw!r}: must be a whole number") from None
    if not low <= value <= high:
        raise SearchError(f"{name}={value}: must be between {low} and {high}")
    return value


@require_GET
def search(request: HttpRequest) -> JsonResponse:
    """The calling team's entities of `domain` nearest in meaning to `q`."""
    team = _team(request)
    if team is None:
        return _error(401, "missing or invalid API token: send 'Authorization: Bearer <team api token>'")
    domain = request.GET.get("domain", "").strip()
    query = request.GET.get("q", "")
    try:
        if not domain:
            raise SearchError("domain: required (e.g. domain=action)")
        if not query.strip():
            raise SearchError("q: required, the text to search for")
        limit = _whole_number("limit", request.GET.get("limit"), 10, 1, MAX_LIMIT)
        version = _whole_number("embedding_version", request.GET.get("embedding_version"), None, 1, 2**32 - 1)
        hits = search_entities(domain, team.id, query, limit=limit or 10, embedding_version=version)
    except (SearchError, UnknownDomainError) as exc:
        return _error(400, str(exc))
    except EntityVectorsError:
        log.exception("search.failed", domain=domain, team_id=team.id)
        return _error(503, "search is unavailable right now; the error is logged")
    return JsonResponse(
        {
            "domain": domain,
            "team_id": team.id,
            "query": query,
            "results": [dataclasses.asdict(hit) for hit in hits],
        }
    )
