"""Settings, read lazily: a Django setting of the same name wins over the environment.

Every accessor parses and validates its value, so a typo fails with a message that names the
setting; `checks.py` calls them at start-up to report problems before the first run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings

from entity_vectors.exceptions import ConfigurationError

DEFAULT_QUEUE = "max-ai-task-queue"
DEFAULT_TABLE = "pg_embeddings"
DEFAULT_CHAT_MODEL = "gpt-4.1-mini"
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"
DEFAULT_EMBEDDING_DIMENSIONS = 1536
DEFAULT_SCHEDULE_SECONDS = 30 * 60
SUMMARIZERS = ("openai", "template")
EMBEDDERS = ("openai", "hashing")


def _raw(name: str) -> Any:
    """The Django setting `name` if defined, else the environment variable, else None."""
    if settings.configured and hasattr(settings, name):
        value = getattr(settings, name)
        if value is not None and value != "":
            return value
    env = os.environ.get(name)
    return env if env not in (None, "") else None


def _str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None else str(value)


def _int(name: str, default: int, minimum: int = 0) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise ConfigurationError(f"{name}={number} must be at least {minimum}")
    return number


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={value!r} is not a number") from None
    if number < minimum:
        raise ConfigurationError(f"{name}={number} must be at least {minimum}")
    return number


def _bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={value!r} is not a boolean (use true or false)")


def queue() -> str:
    """The Celery queue every entity-vectors task is routed to."""
    return _str("ENTITY_VECTORS_QUEUE", DEFAULT_QUEUE)


def openai_api_key() -> str | None:
    """The OpenAI key (the SDK's own variable), if any."""
    value = _raw("OPENAI_API_KEY")
    return None if value is None else str(value)


def openai_base_url() -> str | None:
    """An OpenAI-compatible server's base URL (the SDK's own variable), if any."""
    value = _raw("OPENAI_BASE_URL")
    return None if value is None else str(value)


def summarizer_name() -> str:
    """`openai` or `template`; `openai` by default when a key is set."""
    default = "openai" if openai_api_key() else "template"
    name = _str("ENTITY_VECTORS_SUMMARIZER", default).strip().lower()
    if name not in SUMMARIZERS:
        raise ConfigurationError(
            f"ENTITY_VECTORS_SUMMARIZER={name!r} is not a known summarizer; choose one of {', '.join(SUMMARIZERS)}"
        )
    return name


def embedder_name() -> str:
    """`openai` or `hashing`; `openai` by default when a key is set."""
    default = "openai" if openai_api_key() else "hashing"
    name = _str("ENTITY_VECTORS_EMBEDDER", default).strip().lower()
    if name not in EMBEDDERS:
        raise ConfigurationError(
            f"ENTITY_VECTORS_EMBEDDER={name!r} is not a known embedder; choose one of {', '.join(EMBEDDERS)}"
        )
    return name


def chat_model() -> str:
    """The chat model that writes summaries."""
    return _str("ENTITY_VECTORS_CHAT_MODEL", DEFAULT_CHAT_MODEL)


def embedding_model() -> str:
    """The embedding model."""
    return _str("ENTITY_VECTORS_EMBEDDING_MODEL", DEFAULT_EMBEDDING_MODEL)


def embedding_dimensions() -> int:
    """The vector size asked of the embedder."""
    return _int("ENTITY_VECTORS_EMBEDDING_DIMENSIONS", DEFAULT_EMBEDDING_DIMENSIONS, minimum=1)


def embedding_version() -> int:
    """The current embedding version: what runs write and searches read by default."""
    return _int("ENTITY_VECTORS_EMBEDDING_VERSION", 1, minimum=1)


def provider_timeout() -> float:
    """Seconds one provider request may take."""
    return _float("ENTITY_VECTORS_PROVIDER_TIMEOUT", 60.0, minimum=0.01)


def provider_max_retries() -> int:
    """Retries of one provider request on 429, 5xx and timeouts."""
    return _int("ENTITY_VECTORS_PROVIDER_MAX_RETRIES", 4)


def provider_max_backoff() -> float:
    """Longest wait between two attempts of one provider request, Retry-After included."""
    return _float("ENTITY_VECTORS_PROVIDER_MAX_BACKOFF", 60.0, minimum=0.0)


def task_max_retries() -> int:
    """Task-level retries of a transient failure (after the provider's own retries)."""
    return _int("ENTITY_VECTORS_TASK_MAX_RETRIES", 5)


def task_retry_backoff() -> float:
    """Base of a task retry's exponential backoff, in seconds (doubles each retry, with jitter)."""
    return _float("ENTITY_VECTORS_TASK_RETRY_BACKOFF", 2.0, minimum=0.0)


def max_summary_input_tokens() -> int:
    """Estimated tokens of an entity description sent to the chat model; longer is truncated."""
    return _int("ENTITY_VECTORS_MAX_SUMMARY_INPUT_TOKENS", 6000, minimum=16)


def max_embedding_input_tokens() -> int:
    """Estimated tokens of one text sent to the embedding model (its limit is 8191)."""
    return _int("ENTITY_VECTORS_MAX_EMBEDDING_INPUT_TOKENS", 8000, minimum=16)


def schedule_seconds(domain: str | None = None) -> int:
    """Beat interval of a domain: ENTITY_VECTORS_SCHEDULES[domain], else the common one."""
    if domain is not None:
        per_domain = schedules()
        if domain in per_domain:
            return per_domain[domain]
    return _int("ENTITY_VECTORS_SCHEDULE_SECONDS", DEFAULT_SCHEDULE_SECONDS, minimum=1)


def schedules() -> dict[str, int]:
    """Per-domain beat intervals in seconds (a dict setting, or JSON in the environment)."""
    value = _raw("ENTITY_VECTORS_SCHEDULES")
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"ENTITY_VECTORS_SCHEDULES is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigurationError("ENTITY_VECTORS_SCHEDULES must map domain names to seconds")
    parsed: dict[str, int] = {}
    for domain, seconds in value.items():
        try:
            parsed[str(domain)] = int(seconds)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"ENTITY_VECTORS_SCHEDULES[{domain!r}]={seconds!r} is not seconds"
            ) from None
        if parsed[str(domain)] < 1:
            raise ConfigurationError(f"ENTITY_VECTORS_SCHEDULES[{domain!r}] must be at least 1 second")
    return parsed


def run_lease_seconds() -> int:
    """How long a run may go without progress before its lock is considered abandoned."""
    return _int("ENTITY_VECTORS_RUN_LEASE_SECONDS", 60 * 60, minimum=5)


def max_countdown_seconds() -> int:
    """Longest ETA a task is given; must stay well under the broker's visibility timeout."""
    return _int("ENTITY_VECTORS_MAX_COUNTDOWN", 15 * 60, minimum=1)


def reconcile_enabled() -> bool:
    """Whether each run sweeps ClickHouse for entities hard-deleted behind the signals' back."""
    return _bool("ENTITY_VECTORS_RECONCILE", True)


def limiter_url() -> str | None:
    """Redis URL of the run-wide request limiter; defaults to a Redis broker's URL."""
    value = _raw("ENTITY_VECTORS_LIMITER_URL")
    if value is not None:
        return str(value)
    broker = _raw("CELERY_BROKER_URL")
    if broker is None:
        broker = "redis://localhost:6379/0"
    broker = str(broker)
    return broker if broker.startswith(("redis://", "rediss://", "unix://")) else None


def eager_runs() -> bool:
    """Whether runs execute in-process (the embedded store cannot be shared by workers)."""
    value = _raw("ENTITY_VECTORS_EAGER")
    if value is None:
        return clickhouse_target().kind == "chdb"
    return _bool("ENTITY_VECTORS_EAGER", False)


def clickhouse_table() -> str:
    """The ClickHouse table of vectors."""
    name = _str("ENTITY_VECTORS_CLICKHOUSE_TABLE", DEFAULT_TABLE)
    if not name.replace("_", "").isalnum() or name[0].isdigit():
        raise ConfigurationError(
            f"ENTITY_VECTORS_CLICKHOUSE_TABLE={name!r} must be a plain identifier (letters, digits, _)"
        )
    return name


@dataclass(frozen=True)
class ClickHouseTarget:
    """A parsed CLICKHOUSE_URL."""

    kind: str  # "chdb" or "http"
    path: str = ""
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = ""
    database: str = "default"
    secure: bool = False


def default_data_dir() -> Path:
    """`var/` beside the host project (BASE_DIR), or under the working directory."""
    base = getattr(settings, "BASE_DIR", None) if settings.configured else None
    return Path(base or Path.cwd()) / "var"


def clickhouse_url() -> str:
    """CLICKHOUSE_URL, defaulting to the embedded engine under var/clickhouse."""
    return _str("CLICKHOUSE_URL", f"chdb://{default_data_dir() / 'clickhouse'}")


def clickhouse_target() -> ClickHouseTarget:
    """CLICKHOUSE_URL parsed: `chdb:///path` or `http(s)://user:pass@host:port/db`."""
    return parse_clickhouse_url(clickhouse_url())


def parse_clickhouse_url(url: str) -> ClickHouseTarget:
    """Parse a ClickHouse URL, with an error that shows the accepted forms."""
    forms = "use chdb:///absolute/path or http(s)://user:password@host:port/database"
    if url.startswith("chdb://"):
        path = url[len("chdb://") :]
        if not path:
            raise ConfigurationError(f"CLICKHOUSE_URL={url!r} has no path; {forms}")
        return ClickHouseTarget(kind="chdb", path=str(Path(path).expanduser().resolve()))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"CLICKHOUSE_URL={url!r} is not understood; {forms}")
    try:
        port = parts.port or (8443 if parts.scheme == "https" else 8123)
    except ValueError:
        raise ConfigurationError(f"CLICKHOUSE_URL={url!r} has an invalid port; {forms}") from None
    return ClickHouseTarget(
        kind="http",
        host=parts.hostname,
        port=port,
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        database=parts.path.strip("/") or "default",
        secure=parts.scheme == "https",
    )
