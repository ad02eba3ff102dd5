"""Where the pipeline's services are (the queue, the broker, Redis, ClickHouse, OpenAI) and how runs execute."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.conf import settings

from entity_vectors.conf.readers import (
    _bool,
    _choice,
    _float,
    _int,
    _raw,
    parse_name,
    parse_text,
    parse_url,
    problem,
)

DEFAULT_QUEUE = "max-ai-task-queue"


DEFAULT_TABLE = "pg_embeddings"
DEFAULT_APPROXIMATE_SEARCH_MIN_ROWS = 100_000
DEFAULT_APPROXIMATE_SEARCH_EF = 1024


# A Celery queue: what Redis and RabbitMQ both take without quoting.
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}")


def queue() -> str:
    """The Celery queue every entity-vectors task is routed to."""
    value = _raw("ENTITY_VECTORS_QUEUE")
    if value is None:
        return DEFAULT_QUEUE
    return parse_name(
        "ENTITY_VECTORS_QUEUE", value, _QUEUE_NAME, "a queue name (letters, digits, _ . : @ -; at most 200)"
    )


def fast_queue() -> str:
    """The Celery queue of interactive work (fast-lane passes): `<queue>-fast` unless set.

    A queue of its own, so that a pass never waits in the broker behind the thousands of batch
    tasks of a large run; a worker consumes both queues, or a small one only this one.
    """
    value = _raw("ENTITY_VECTORS_FAST_QUEUE")
    if value is None:
        return f"{queue()}-fast"
    return parse_name(
        "ENTITY_VECTORS_FAST_QUEUE", value, _QUEUE_NAME, "a queue name (letters, digits, _ . : @ -; at most 200)"
    )


# An API key travels in an HTTP header: printable ASCII without spaces.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]{1,1000}")


def openai_api_key() -> str | None:
    """The OpenAI key (the SDK's own variable), if any."""
    value = _raw("OPENAI_API_KEY")
    if value is None:
        return None
    if not isinstance(value, str) or not _HEADER_TOKEN.fullmatch(value.strip()):
        # The value is a secret: the message describes it without showing it.
        raise problem(
            "OPENAI_API_KEY",
            value,
            "must be 1 to 1000 printable ASCII characters without spaces",
            secret=True,
        )
    return value.strip()


def openai_base_url() -> str | None:
    """An OpenAI-compatible server's base URL (the SDK's own variable), if any."""
    value = _raw("OPENAI_BASE_URL")
    if value is None:
        return None
    return parse_url("OPENAI_BASE_URL", value, ("http", "https")).geturl()


REDIS_SCHEMES = ("redis", "rediss", "unix")


def limiter_url() -> str | None:
    """Redis URL of the run-wide request limiter; defaults to a Redis broker's URL."""
    value = _raw("ENTITY_VECTORS_LIMITER_URL")
    if value is not None:
        parts = parse_url("ENTITY_VECTORS_LIMITER_URL", value, REDIS_SCHEMES, need_host=False)
        if parts.scheme != "unix" and not parts.hostname:
            raise problem("ENTITY_VECTORS_LIMITER_URL", value, "has no host")
        return parts.geturl()
    broker = broker_url()
    return broker if broker.startswith(tuple(f"{scheme}://" for scheme in REDIS_SCHEMES)) else None


DEFAULT_BROKER_URL = "redis://localhost:6379/0"
# A kombu transport or Celery result backend: `redis://...`, `amqp://...`, `sqla+postgresql://...`;
# a result backend may also be an alias alone (`rpc://`, `django-db`).
_SERVICE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_BACKEND_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9+._-]*")


def broker_url() -> str:
    """CELERY_BROKER_URL: Celery's broker (celeryconfig reads it here)."""
    value = _raw("CELERY_BROKER_URL")
    if value is None:
        return DEFAULT_BROKER_URL
    url = parse_name("CELERY_BROKER_URL", value, _SERVICE_URL, "a broker URL (redis://host:6379/0)", 4000)
    _check_ports("CELERY_BROKER_URL", url)
    return url


def result_backend() -> str:
    """CELERY_RESULT_BACKEND: where Celery keeps task results (celeryconfig reads it here)."""
    value = _raw("CELERY_RESULT_BACKEND")
    if value is None:
        return DEFAULT_BROKER_URL
    text = parse_text("CELERY_RESULT_BACKEND", value, 4000, spaces=False)
    if not (_SERVICE_URL.fullmatch(text) or _BACKEND_ALIAS.fullmatch(text)):
        raise problem("CELERY_RESULT_BACKEND", value, "must be a result backend URL (redis://host:6379/0)")
    _check_ports("CELERY_RESULT_BACKEND", text)
    return text


def _check_ports(name: str, urls: str) -> None:
    """Each URL of `urls` (kombu's failover form: `redis://a:6379;redis://b:6379`) has a valid port."""
    for url in urls.split(";"):
        try:
            urlsplit(url).port  # noqa: B018 - raises ValueError on a port that is not 0 to 65535
        except ValueError:
            raise problem(name, urls, "has an invalid port (a number from 0 to 65535)") from None


DEFAULT_METRICS_PREFIX = "entity-vectors:metrics"
# A bearer token or key prefix: printable ASCII without spaces (no NUL, no control characters).
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def metrics_token() -> str | None:
    """The bearer token that may read /metrics; unset, only staff sessions may."""
    value = _raw("ENTITY_VECTORS_METRICS_TOKEN")
    if value is None:
        return None
    if not isinstance(value, str) or not 16 <= len(value) <= 200 or not _PRINTABLE.fullmatch(value):
        # The value is a secret: the message describes it without showing it.
        raise problem(
            "ENTITY_VECTORS_METRICS_TOKEN",
            value,
            "must be 16 to 200 printable ASCII characters without spaces",
            secret=True,
        )
    return value


def metrics_prefix() -> str:
    """Prefix of the Redis keys holding the workers' task counts and durations."""
    value = _raw("ENTITY_VECTORS_METRICS_PREFIX")
    if value is None:
        return DEFAULT_METRICS_PREFIX
    return parse_name(
        "ENTITY_VECTORS_METRICS_PREFIX",
        value,
        _PRINTABLE,
        "1 to 200 printable ASCII characters without spaces",
    )


EXECUTIONS = ("auto", "inline", "distributed")


def execution() -> str:
    """How runs execute: `inline` (this process), `distributed` (workers), or `auto`.

    `auto` is inline on the embedded store (it cannot be shared with workers) and distributed
    otherwise; a task called eagerly (`task_always_eager`, `.apply()`) always runs inline.
    """
    return _choice("ENTITY_VECTORS_EXECUTION", "auto", EXECUTIONS, "is not understood")


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


def embedded_share() -> bool:
    """Whether a process that holds the embedded ClickHouse (chdb://) serves it on loopback to the
    user's other processes (web, commands, workers, beat), which then connect to it."""
    return _bool("ENTITY_VECTORS_EMBEDDED_SHARE", True)


def clickhouse_connect_timeout() -> float:
    """Seconds to wait for a ClickHouse server to answer before saying it is unreachable."""
    return _float("ENTITY_VECTORS_CLICKHOUSE_CONNECT_TIMEOUT", 3.0, minimum=0.1, maximum=600)


# Derived tables add suffixes (`_local`, the approximate-search copies) within ClickHouse's limits.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


def clickhouse_table() -> str:
    """The ClickHouse table of vectors."""
    value = _raw("ENTITY_VECTORS_CLICKHOUSE_TABLE")
    if value is None:
        return DEFAULT_TABLE
    return parse_name(
        "ENTITY_VECTORS_CLICKHOUSE_TABLE",
        value,
        _TABLE_NAME,
        "a plain identifier (letters, digits, _; not starting with a digit; at most 100)",
    )


_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")


def clickhouse_cluster() -> str:
    """The ClickHouse cluster (a `remote_servers` name) the tables live on; empty for one server.

    Set, the tables are ReplicatedReplacingMergeTree `<name>_local` tables created ON CLUSTER, with
    Distributed tables in front sharded by `cityHash64(team_id)`; inserts and reads go through the
    Distributed tables (see `entity_vectors.store.schema`). A server store only: the embedded
    engine is one process.
    """
    value = _raw("ENTITY_VECTORS_CLICKHOUSE_CLUSTER")
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    return parse_name(
        "ENTITY_VECTORS_CLICKHOUSE_CLUSTER",
        value,
        _CLUSTER_NAME,
        "a cluster name from the servers' remote_servers (letters, digits, _ . -)",
    )


def approximate_search_min_rows() -> int:
    """Rows from which a group's vector searches go through an HNSW index; 0 = always exact.

    A group is one team's rows of one domain at one embedding version (tombstones and superseded
    rows count until merged). Below the threshold a vector search is exact: a scan of the
    group's latest rows, a few milliseconds per 10k vectors. From it on, the group's first vector
    search copies its live rows into an approximate-search table whose HNSW index (ClickHouse's
    `vector_similarity`, ClickHouse 25.8 or newer) is built in the background; later searches take
    candidates from the index and re-rank them exactly. The copy doubles the group's storage.
    """
    return _int(
        "ENTITY_VECTORS_APPROXIMATE_SEARCH_MIN_ROWS",
        DEFAULT_APPROXIMATE_SEARCH_MIN_ROWS,
        minimum=0,
        maximum=10**12,
    )


def approximate_search_ef() -> int:
    """HNSW candidate list size of a search through the index (`ef_search`): recall against speed.

    The index's candidates are re-ranked exactly, so recall is lost only where the graph search
    misses a true neighbour; a larger list misses fewer and takes longer. Embeddings of real text
    cluster and need less than random vectors do.
    """
    return _int(
        "ENTITY_VECTORS_APPROXIMATE_SEARCH_EF", DEFAULT_APPROXIMATE_SEARCH_EF, minimum=16, maximum=100_000
    )


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
    value = _raw("CLICKHOUSE_URL")
    if value is None:
        return f"chdb://{default_data_dir() / 'clickhouse'}"
    return parse_text("CLICKHOUSE_URL", value, 4000, spaces=False)


def clickhouse_target() -> ClickHouseTarget:
    """CLICKHOUSE_URL parsed: `chdb:///path` or `http(s)://user:pass@host:port/db`."""
    return parse_clickhouse_url(clickhouse_url())


def parse_clickhouse_url(url: str) -> ClickHouseTarget:
    """Parse a ClickHouse URL, with an error that shows the accepted forms."""
    forms = "use chdb:///absolute/path or http(s)://user:password@host:port/database"
    url = parse_text("CLICKHOUSE_URL", url, 4000, spaces=False)
    if url.startswith("chdb://"):
        path = url[len("chdb://") :]
        if not path:
            raise problem("CLICKHOUSE_URL", url, f"has no path; {forms}")
        return ClickHouseTarget(kind="chdb", path=str(Path(path).expanduser().resolve()))
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise problem("CLICKHOUSE_URL", url, f"is not understood; {forms}")
    try:
        port = parts.port or (8443 if parts.scheme == "https" else 8123)
    except ValueError:
        raise problem("CLICKHOUSE_URL", url, f"has an invalid port; {forms}") from None
    return ClickHouseTarget(
        kind="http",
        host=parts.hostname,
        port=port,
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        database=parts.path.strip("/") or "default",
        secure=parts.scheme == "https",
    )
