"""The error tree: split by whether a retry can help.

EntityVectorsError
+-- TransientError            a retry later may succeed
|   +-- ProviderRateLimited   the provider said 429 (after our own retries)
|   +-- ProviderUnavailable   5xx, timeouts, connection errors (after our own retries)
|   |   +-- ProviderUnreachable   no connection at all, several times in a row: the run stops
|   +-- StoreUnavailable      ClickHouse could not be reached or refused a write
|   +-- InfrastructureUnavailable  Redis, the database or a connection failed under a batch
+-- PermanentError            retrying the same call cannot help
    +-- UnknownDomainError    no config registered under that domain (also a ValueError)
    +-- InvalidInputsError    a run's inputs are invalid (also a ValueError)
    +-- DuplicateDomainError  a second, different config for a taken domain (also a ValueError)
    +-- ConfigurationError    settings that cannot work together
    +-- ProviderRejected      the provider refused the request (a bad request)
    |   +-- ProviderAccessDenied  ... refused our key, permission or model (401, 403, 404)
    +-- ProviderProtocolError the provider answered what cannot be true (negative token counts)
    +-- EmbeddedStoreLocked   another process holds the embedded ClickHouse directory
    +-- SearchError           a search that cannot be answered as asked (also a ValueError)
        +-- ConsentRequired   the team's organization has not approved AI processing
"""

from __future__ import annotations

# What an error repeats of an input (a domain, a mode, an option): enough to recognise it.
ECHO_CHARS = 80


def shorten(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, "..." marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def echo(value: object) -> str:
    """How an error repeats an input: its repr, shortened (a 100 KB parameter is not sent back)."""
    return shorten(repr(value))


class EntityVectorsError(Exception):
    """Base of every error raised by entity_vectors."""


class TransientError(EntityVectorsError):
    """A failure that a later retry may not meet."""


class ProviderRateLimited(TransientError):
    """The provider kept answering 429 after our retries."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderUnavailable(TransientError):
    """The provider kept failing (5xx, timeout, connection) after our retries."""


class ProviderUnreachable(ProviderUnavailable):
    """No connection to the provider could be made (refused, no such host, no connection within
    the connect timeout) several times in a row: nothing more is sent to it in this run, which
    stops and leaves its work pending. `host` is the provider's host:port, `reason` what failed,
    `run_id` the run it stopped (once stopped)."""

    def __init__(self, message: str, host: str = "", reason: str = "", run_id: str = "") -> None:
        super().__init__(message)
        self.host = host
        self.reason = reason
        self.run_id = run_id


class StoreUnavailable(TransientError):
    """ClickHouse could not be reached or failed a statement."""


class InfrastructureUnavailable(TransientError):
    """A service a batch relies on (Redis, the database, a connection) failed: never the entity's fault."""


class PermanentError(EntityVectorsError):
    """A failure that retrying the same call cannot fix."""


class UnknownDomainError(PermanentError, ValueError):
    """No EntityConfig is registered under the requested domain."""


class DuplicateDomainError(PermanentError, ValueError):
    """A different EntityConfig is already registered under that domain."""


class InvalidInputsError(PermanentError, ValueError):
    """A run's inputs are invalid; the message names the field and the value."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        # The parts are the args, so that Celery can rebuild the error from a task's result.
        super().__init__(field, value, problem)
        self.field = field
        self.value = value
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.field}={echo(self.value)}: {self.problem}"


class ConfigurationError(PermanentError):
    """Settings that cannot work (unknown provider, malformed URL, ...)."""


class ProviderRejected(PermanentError):
    """The provider refused the request (bad key, bad request): retrying cannot help."""


class ProviderAccessDenied(ProviderRejected):
    """The provider refused our credentials, a permission or the model (401, 403, 404): the setup's
    fault, never an entity's; the batch fails with this error and nothing counts toward parking."""


class ProviderProtocolError(PermanentError):
    """The provider's answer breaks the API's own rules (usage figures that cannot be): its fault,
    not the entity's; the batch fails with this error and nothing counts toward parking."""


class EmbeddedStoreLocked(PermanentError):
    """The embedded ClickHouse directory is held by another process."""


class SearchError(PermanentError, ValueError):
    """A search request that cannot be answered as asked (bad limit, empty query, ...)."""


class ConsentRequired(SearchError):
    """The team's data (its search queries included) may not be sent to a provider."""
