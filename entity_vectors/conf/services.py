"""Where the pipeline's services are (the queue, Redis, ClickHouse, OpenAI), how runs execute, and redaction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.conf import settings

from entity_vectors.conf.readers import _float, _int, _raw, _str
from entity_vectors.exceptions import ConfigurationError

DEFAULT_QUEUE = "max-ai-task-queue"


DEFAULT_TABLE = "pg_embeddings"
DEFAULT_APPROXIMATE_SEARCH_MIN_ROWS = 100_000
DEFAULT_APPROXIMATE_SEARCH_EF = 1024


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


DEFAULT_METRICS_PREFIX = "entity-vectors:metrics"
# A bearer token or key prefix: printable ASCII without spaces (no NUL, no control characters).
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def metrics_token() -> str | None:
    """The bearer token that may read /metrics; unset, only staff sessions may."""
    value = _raw("ENTITY_VECTORS_METRICS_TOKEN")
    if value is None:
        return None
    token = str(value)
    if not 16 <= len(token) <= 200 or not _PRINTABLE.fullmatch(token):
        # The value is a secret: the message describes it without showing it.
        raise ConfigurationError(
            "ENTITY_VECTORS_METRICS_TOKEN must be 16 to 200 printable ASCII characters without spaces"
        )
    return token


def metrics_prefix() -> str:
    """Prefix of the Redis keys holding the workers' task counts and durations."""
    prefix = _str("ENTITY_VECTORS_METRICS_PREFIX", DEFAULT_METRICS_PREFIX)
    if len(prefix) > 200 or not _PRINTABLE.fullmatch(prefix):
        raise ConfigurationError(
            f"ENTITY_VECTORS_METRICS_PREFIX={prefix[:40]!r} must be 1 to 200 printable ASCII "
            "characters without spaces"
        )
    return prefix


EXECUTIONS = ("auto", "inline", "distributed")


def execution() -> str:
    """How runs execute: `inline` (this process), `distributed` (workers), or `auto`.

    `auto` is inline on the embedded store (it cannot be shared with workers) and distributed
    otherwise; a task called eagerly (`task_always_eager`, `.apply()`) always runs inline.
    """
    name = _str("ENTITY_VECTORS_EXECUTION", "auto").strip().lower()
    if name not in EXECUTIONS:
        raise ConfigurationError(
            f"ENTITY_VECTORS_EXECUTION={name!r} is not understood; choose one of {', '.join(EXECUTIONS)}"
        )
    return name


def inline_by_default() -> bool:
    """Whether runs execute in this process: the one place the execution mode is decided.

    Inline when ENTITY_VECTORS_EXECUTION says so, on the embedded store (`auto`: it cannot be
    shared with workers), and whenever the Celery app runs tasks eagerly (`task_always_eager`, the
    usual test setting of a Django shop: there are no workers to send anything to).
    """
    from celery import current_app

    if current_app.conf.task_always_eager:
        return True
    mode = execution()
    if mode == "auto":
        return clickhouse_target().kind == "chdb"
    return mode == "inline"


def clickhouse_connect_timeout() -> float:
    """Seconds to wait for a ClickHouse server to answer before saying it is unreachable."""
    return _float("ENTITY_VECTORS_CLICKHOUSE_CONNECT_TIMEOUT", 3.0, minimum=0.1)


def clickhouse_table() -> str:
    """The ClickHouse table of vectors."""
    name = _str("ENTITY_VECTORS_CLICKHOUSE_TABLE", DEFAULT_TABLE)
    if not name.replace("_", "").isalnum() or name[0].isdigit():
        raise ConfigurationError(
            f"ENTITY_VECTORS_CLICKHOUSE_TABLE={name!r} must be a plain identifier (letters, digits, _)"
        )
    return name


_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


def clickhouse_cluster() -> str:
    """The ClickHouse cluster (a `remote_servers` name) the tables live on; empty for one server.

    Set, the tables are ReplicatedReplacingMergeTree `<name>_local` tables created ON CLUSTER, with
    Distributed tables in front sharded by `cityHash64(team_id)`; inserts and reads go through the
    Distributed tables (see `entity_vectors.store.schema`). A server store only: the embedded
    engine is one process.
    """
    name = _str("ENTITY_VECTORS_CLICKHOUSE_CLUSTER", "").strip()
    if name and not _CLUSTER_NAME.fullmatch(name):
        raise ConfigurationError(
            f"ENTITY_VECTORS_CLICKHOUSE_CLUSTER={name[:40]!r} must be a cluster name from the servers' "
            "remote_servers (letters, digits, _ . -)"
        )
    return name


def approximate_search_min_rows() -> int:
    """Rows from which a group's vector searches go through an HNSW index; 0 = always exact.

    A group is one team's rows of one domain at one embedding version (tombstones and superseded
    rows count until merged). Below the threshold a vector search is exact: a scan of the
    group's latest rows, a few milliseconds per 10k vectors. From it on, the group's first vector
    search copies its live rows into an approximate-search table whose HNSW index (ClickHouse's
    `vector_similarity`, ClickHouse 25.8 or newer) is built in the background; later searches take
    candidates from the index and re-rank them exactly. The copy doubles the group's storage.
    """
    return _int("ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS", DEFAULT_APPROXIMATE_SEARCH_MIN_ROWS)


def approximate_search_ef() -> int:
    """HNSW candidate list size of a search through the index (`ef_search`): recall against speed.

    The index's candidates are re-ranked exactly, so recall is lost only where the graph search
    misses a true neighbour; a larger list misses fewer and takes longer. Embeddings of real text
    cluster and need less than random vectors do.
    """
    return _int("ENTITY_VECTORS_APPROXIMATE_SEARCH_EF", DEFAULT_APPROXIMATE_SEARCH_EF, minimum=16)


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


_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@/\s]+)@", re.I)


_SECRET_SETTINGS = (
    "OPENAI_API_KEY",
    "DJANGO_SECRET_KEY",
    "FLOWER_BASIC_AUTH",
    "ENTITY_VECTORS_METRICS_TOKEN",
)


def redact(text: str) -> str:
    """`text` with every URL password and known secret replaced by `***`.

    Used wherever text may be printed or stored: errors, logs, SyncRun.error, check messages.
    """
    text = _CREDENTIALS.sub(lambda match: f"{match['scheme']}{match['user']}:***@", text)
    for name in _SECRET_SETTINGS:
        value = _raw(name)
        if isinstance(value, str) and len(value) >= 6:
            text = text.replace(value, "***")
            if ":" in value:  # user:password pairs: the password alone too
                secret = value.split(":", 1)[1]
                if len(secret) >= 6:
                    text = text.replace(secret, "***")
    for name in ("CLICKHOUSE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL"):
        value = _raw(name)
        if isinstance(value, str):
            password = urlsplit(value).password if "://" in value else None
            if password and len(password) >= 4:
                text = text.replace(unquote(password), "***").replace(password, "***")
    return text


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
