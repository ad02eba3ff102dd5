"""SQL helpers of the benchmark: bulk seeding of actions, and a recorder of the queries a run issues.

Seeding is one `INSERT ... SELECT` over `generate_series` (PostgreSQL) or a recursive CTE
(SQLite), so a million actions take seconds, not an ORM loop.

The recorder is a Django `execute_wrapper` on every connection of the process (present and
future, any thread). In the benchmark's own process it collects into a list; in Celery workers,
which import this module through `--include bench_sql`, it is installed in each pool process when
`BENCH_QUERY_LOG` names a directory, and records (pickled, one file per process) only while the
file `<dir>/on` exists. `explain_host_selects` then EXPLAINs every recorded SELECT that reads the
host table and reports those that scan it fully.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

QUERY_LOG_ENV = "BENCH_QUERY_LOG"
HOST_TABLE = "app_action"
WORDS = (
    "signup", "checkout", "invoice", "upload", "share", "folder",
    "pricing", "trial", "cancel", "invite", "export", "report",
)  # fmt: skip
Record = tuple[str, Any, bool]  # (sql, params, many)


def _case(expression: str, values: Iterable[str]) -> str:
    """`CASE <expression> WHEN 0 THEN v0 ... END`: an array lookup that PostgreSQL and SQLite share."""
    whens = " ".join(f"WHEN {index} THEN {value}" for index, value in enumerate(values))
    return f"(CASE {expression} {whens} END)"


def seed_actions(count: int, team_ids: list[int]) -> None:
    """Insert `count` actions spread over the teams, in one statement, updated an hour ago."""
    from django.db import connection

    words = [f"'{word}'" for word in WORDS]
    size = len(WORDS)
    name = f"'action ' || i || ' ' || {_case(f'i %% {size}', words)} || ' ' || {_case(f'(i * 7) %% {size}', words)}"
    description = f"'Tracks ' || {_case(f'(i * 3) %% {size}', words)} || ' events of flow ' || (i %% 97)"
    event = f"{_case(f'i %% {size}', words)} || '_done'"
    url = f"'/' || {_case(f'(i * 5) %% {size}', words)}"
    team = _case(f"i %% {len(team_ids)}", [str(team_id) for team_id in team_ids])
    columns = "name, description, steps, deleted, created_at, updated_at, team_id, summary_input_hash, summarized_by"
    when = datetime.now(UTC) - timedelta(hours=1)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            steps = f"jsonb_build_array(jsonb_build_object('event', {event}, 'url', {url}))"
            cursor.execute(
                f"INSERT INTO {HOST_TABLE} ({columns}) SELECT {name}, {description}, {steps}, false, %s, %s, "
                f"{team}, '', '' FROM generate_series(1, %s) AS s(i)",
                [when, when, count],
            )
        else:
            steps = f"json_array(json_object('event', {event}, 'url', {url}))"
            stamp = when.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
            cursor.execute(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < %s) "
                f"INSERT INTO {HOST_TABLE} ({columns}) SELECT {name}, {description}, {steps}, 0, %s, %s, "
                f"{team}, '', '' FROM s",
                [count, stamp, stamp],
            )
    analyze()


def analyze() -> None:
    """Refresh the planner's statistics (as autovacuum would have by the next scheduled run)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {HOST_TABLE}" if connection.vendor == "postgresql" else "ANALYZE")


# -- the recorder -------------------------------------------------------------------------------


class Recorder:
    """An execute_wrapper that hands (sql, params, many) to `sink` while `enabled()` says so."""

    def __init__(self, sink: Callable[[Record], None], enabled: Callable[[], bool]) -> None:
        self.sink = sink
        self.enabled = enabled

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if self.enabled():
            self.sink((sql, params, many))
        return execute(sql, params, many, context)


def attach(recorder: Recorder) -> None:
    """Wrap every connection of this process: those open now and those made later (other threads)."""
    from django.db import connections
    from django.db.backends.signals import connection_created

    def wrap(connection: Any) -> None:
        if recorder not in connection.execute_wrappers:
            connection.execute_wrappers.append(recorder)

    for connection in connections.all():
        wrap(connection)

    def on_created(sender: Any, connection: Any, **kwargs: Any) -> None:
        wrap(connection)

    connection_created.connect(on_created, weak=False)


def _file_sink(directory: Path) -> Callable[[Record], None]:
    path = directory / f"queries-{os.getpid()}.pkl"

    def sink(record: Record) -> None:
        try:
            data = pickle.dumps(record)
        except Exception:  # a parameter that does not pickle: keep the query, not its parameters
            data = pickle.dumps((record[0], None, record[2]))
        with path.open("ab") as handle:
            handle.write(data)

    return sink


def read_worker_records(directory: Path) -> list[Record]:
    """Everything the workers recorded into `directory`."""
    records: list[Record] = []
    for path in sorted(directory.glob("queries-*.pkl")):
        with path.open("rb") as handle:
            while True:
                try:
                    records.append(pickle.load(handle))
                except EOFError:
                    break
    return records


def clear_worker_records(directory: Path) -> None:
    """Forget what the workers recorded so far."""
    for path in directory.glob("queries-*.pkl"):
        path.unlink()


def _install_in_worker() -> None:
    directory = os.environ.get(QUERY_LOG_ENV)
    if not directory:
        return
    from celery.signals import worker_process_init

    flag = Path(directory) / "on"

    def on_process_init(**kwargs: Any) -> None:
        attach(Recorder(_file_sink(Path(directory)), flag.exists))

    worker_process_init.connect(on_process_init, weak=False)


_install_in_worker()


# -- what the recorded queries did ------------------------------------------------------------


def explain_host_selects(records: list[Record]) -> tuple[int, list[str]]:
    """EXPLAIN each recorded SELECT on the host table: (how many were explained, "plan line <- sql" of
    each that scans it fully).

    PostgreSQL: a plan with `Seq Scan on app_action`. SQLite: `SCAN app_action` (a pass over the
    whole table or one of its indexes, as opposed to `SEARCH`).
    """
    from django.db import connection

    explained = 0
    scans: list[str] = []
    pattern = re.compile(
        rf"Seq Scan on {HOST_TABLE}\b" if connection.vendor == "postgresql" else rf"\bSCAN {HOST_TABLE}\b"
    )
    prefix = "EXPLAIN " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
    for sql, params, many in records:
        if many or (params is None and "%s" in sql):
            continue
        if not sql.lstrip().upper().startswith("SELECT") or HOST_TABLE not in sql:
            continue
        with contextlib.suppress(Exception), connection.cursor() as cursor:
            cursor.execute(prefix + sql, params)
            plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
            explained += 1
            match = next((line for line in plan.splitlines() if pattern.search(line)), None)
            if match is not None:
                scans.append(f"{match.strip()} <- {' '.join(sql.split())[:400]}")
    return explained, scans
