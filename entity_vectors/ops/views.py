"""`GET /metrics`: the Prometheus exposition, for the metrics bearer token or a logged-in staff user.

Prometheus sends `Authorization: Bearer <ENTITY_VECTORS_METRICS_TOKEN>` (`authorization` in a
scrape config); a person can look from a browser while logged in to the admin as staff. Anything
else gets 401: metrics are never served anonymously, and without the setting only staff may look.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

import structlog
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError
from entity_vectors.ops.metrics import exposition

log = structlog.get_logger("entity_vectors")
# A token is printable ASCII without spaces; anything else (NUL, control characters) is not one.
_TOKEN = re.compile(r"[\x21-\x7e]{1,200}")


def bearer_token_valid(header: str) -> bool:
    """Whether an `Authorization` header carries the metrics token (compared in constant time)."""
    scheme, _, token = header.partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
        return False
    try:
        expected = conf.metrics_token()
    except ConfigurationError as exc:
        log.error("metrics.token_misconfigured", error=str(exc))
        return False
    if expected is None:
        return False
    return hmac.compare_digest(token.encode("ascii"), expected.encode("ascii"))


def _staff(request: HttpRequest) -> bool:
    user: Any = getattr(request, "user", None)  # absent without AuthenticationMiddleware
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition of every entity-vectors metric, computed now."""
    if not (bearer_token_valid(request.headers.get("Authorization", "")) or _staff(request)):
        response = HttpResponse(
            "authentication required: send 'Authorization: Bearer <metrics token>' or log in as staff\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="entity-vectors-metrics"'
        return response
    response = HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
