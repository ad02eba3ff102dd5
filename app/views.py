"""The search endpoint: `GET /api/entity-vectors/search`, authenticated by a team's API token."""

from __future__ import annotations

import dataclasses
import hmac
import re

import structlog
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from app.models import Team, hash_api_token
from entity_vectors import conf, search_entities
from entity_vectors.exceptions import (
    ConsentRequired,
    EntityVectorsError,
    SearchError,
    UnknownDomainError,
    echo,
    shorten,
)
from entity_vectors.search.query import effective_mode

log = structlog.get_logger("app")
MAX_LIMIT = 100
# A token is printable ASCII without spaces; anything else (NUL, control characters) is not one.
_TOKEN = re.compile(r"^[\x21-\x7e]{1,200}$")


def team_for_token(header: str) -> Team | None:
    """The team whose token is in an `Authorization: Bearer <token>` header, or None.

    The token's hash is looked up (the token itself is never stored) and compared in constant time.
    """
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _TOKEN.match(token):
        return None
    hashed = hash_api_token(token)
    team = Team.objects.filter(api_token_hash=hashed).first()
    if team is None or not hmac.compare_digest(team.api_token_hash, hashed):
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
        raise SearchError(f"{name}={echo(raw)}: must be a whole number") from None
    if not low <= value <= high:
        raise SearchError(f"{name}={shorten(str(value))}: must be between {low} and {high}")
    return value


@require_GET
def search(request: HttpRequest) -> JsonResponse:
    """The calling team's entities of `domain` that best match `q`."""
    team = team_for_token(request.headers.get("Authorization", ""))
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
        mode = request.GET.get("mode") or None
        hits = search_entities(
            domain, team.id, query, limit=limit or 10, embedding_version=version, mode=mode
        )
    except ConsentRequired as exc:
        return _error(403, str(exc))
    except (SearchError, UnknownDomainError) as exc:
        return _error(400, str(exc))
    except EntityVectorsError as exc:
        log.error(
            "search.failed",
            domain=shorten(domain),
            team_id=team.id,
            error=conf.redact(f"{type(exc).__name__}: {exc}"),
        )
        return _error(503, "search is unavailable right now; the error is logged")
    return JsonResponse(
        {
            "domain": domain,
            "team_id": team.id,
            "query": query,
            "mode": effective_mode(domain, mode, version),
            "results": [dataclasses.asdict(hit) for hit in hits],
        }
    )
