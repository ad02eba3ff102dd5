"""The benchmark's services: scratch PostgreSQL, Redis, ClickHouse over HTTP, the OpenAI server, workers.

Used by the job processes (`bench_jobs.py`). Every process started here is written to
`<tmp>/pids.txt` as well, so that the driver (`bench.py`) can end it if a job dies without
cleaning up.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
QUEUE = "max-ai-task-queue"
_STARTED = time.monotonic()


def progress(message: str) -> None:
    """A progress line, with the seconds since this job started."""
    print(f"    [{time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


def emit(section: str, figure: str, value: str, params: str) -> None:
    """One figure, for the driver to print at once and again in the summary table."""
    payload = {"section": section, "figure": figure, "value": value, "params": params}
    print("BENCH-FIGURE " + json.dumps(payload), flush=True)


def register_pid(tmp: Path, pid: int) -> None:
    """Remember a process this benchmark started, so that the driver can end it if a job dies."""
    with (tmp / "pids.txt").open("a") as handle:
        handle.write(f"{pid}\n")


# -- PostgreSQL and Redis ---------------------------------------------------------------------


def drop_database(server_url: str, name: str) -> None:
    """DROP DATABASE IF EXISTS ... WITH (FORCE) (closes the connections still open to it)."""
    import psycopg

    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_database(server_url: str, name: str) -> Iterator[str]:
    """A new empty PostgreSQL database, dropped on exit; yields its URL."""
    import psycopg

    drop_database(server_url, name)
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server_url}/{name}"
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        drop_database(server_url, name)


def flush_redis(url: str) -> None:
    """Empty the benchmark's Redis database (broker queue, results, limiter keys)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


# -- ClickHouse and the OpenAI server ---------------------------------------------------------


@contextlib.contextmanager
def clickhouse_server(tmp: Path, name: str) -> Iterator[str]:
    """A ClickHouse HTTP endpoint over chdb on a new data directory; yields its URL."""
    sys.path.insert(0, str(ROOT))
    from tests.support.clickhouse_http import start_subprocess, stop_subprocess

    proc, url = start_subprocess(str(tmp / name))
    register_pid(tmp, proc.pid)
    try:
        yield url
    finally:
        stop_subprocess(proc)


class OpenAIProcess:
    """`bench_openai.py` in a child process: the loopback OpenAI server and its counters."""

    def __init__(self, tmp: Path, chat_latency: float, embedding_latency: float) -> None:
        command = [sys.executable, str(SCRIPTS / "bench_openai.py")]
        command += ["--chat-latency", str(chat_latency), "--embedding-latency", str(embedding_latency)]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        register_pid(tmp, self.process.pid)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the OpenAI server did not start: {line!r}")
        self.base_url = line.split(" ", 1)[1].strip()

    def _ask(self, command: str) -> dict[str, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return dict(json.loads(self.process.stdout.readline()))

    def stats(self) -> dict[str, int]:
        """Peak in flight since the last reset, request counts since the start."""
        return self._ask("stats")

    def reset_peak(self) -> dict[str, int]:
        """Restart peak tracking; returns the counters."""
        return self._ask("reset")

    def stop(self) -> None:
        """Close its stdin (it stops), terminate it if it lingers."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(10)


@contextlib.contextmanager
def openai_server(tmp: Path, chat_latency: float, embedding_latency: float) -> Iterator[OpenAIProcess]:
    """The loopback OpenAI server with these latencies, stopped on exit."""
    server = OpenAIProcess(tmp, chat_latency, embedding_latency)
    try:
        yield server
    finally:
        server.stop()


# -- the environment and the workers ----------------------------------------------------------


def service_env(
    database_url: str,
    clickhouse_url: str,
    redis_url: str,
    *,
    dimensions: int,
    execution: str,
    openai_url: str | None = None,
    fast_lane: bool = False,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of the job process and its workers (offline providers unless `openai_url`)."""
    env = {
        "DJANGO_SETTINGS_MODULE": "app.settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPTS)]),
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "CLICKHOUSE_URL": clickhouse_url,
        "ENTITY_VECTORS_SUMMARIZER": "openai" if openai_url else "template",
        "ENTITY_VECTORS_EMBEDDER": "openai" if openai_url else "hashing",
        "ENTITY_VECTORS_EMBEDDING_DIMENSIONS": str(dimensions),
        "ENTITY_VECTORS_EXECUTION": execution,
        "ENTITY_VECTORS_FAST_LANE": "true" if fast_lane else "false",
        "ENTITY_VECTORS_LOG_LEVEL": "WARNING",
    }
    if openai_url:
        env |= {"OPENAI_API_KEY": "bench-any-key", "OPENAI_BASE_URL": openai_url}
    return env | (extra or {})


def layout(processes: int, max_nodes: int) -> list[int]:
    """Pool sizes of the worker nodes for `processes` worker processes in all (nodes of equal size)."""
    nodes = max(1, min(max_nodes, processes))
    while processes % nodes:
        nodes -= 1
    return [processes // nodes] * nodes


def describe_layout(concurrencies: list[int], pool: str = "prefork") -> str:
    """E.g. `2 workers x 2 proc`, `1 worker x 4 threads`."""
    unit = "proc" if pool == "prefork" else pool
    return f"{len(concurrencies)} worker{'s' if len(concurrencies) > 1 else ''} x {concurrencies[0]} {unit}"


@contextlib.contextmanager
def workers(
    env: dict[str, str],
    concurrencies: list[int],
    tmp: Path,
    label: str,
    pool: str = "prefork",
    queues: list[str] | None = None,
) -> Iterator[list[Any]]:
    """Celery worker nodes (`pool`: prefork or threads) on the queue (or node i on `queues[i]`),
    up and answering pings; stopped on exit.

    Started with `--include bench_sql`, which records SQL queries when `BENCH_QUERY_LOG` is set.
    """
    from app.celery import app as celery_app
    from tests.support.processes import Service, start_celery

    logs = tmp / f"logs-{label}"
    logs.mkdir(exist_ok=True)
    nodes: list[Service] = []
    try:
        for index, concurrency in enumerate(concurrencies):
            queue = queues[index] if queues else QUEUE
            arguments = ["worker", "-Q", queue, "-P", pool, "-c", str(concurrency)]
            arguments += ["-n", f"bench{index + 1}@%h", "--without-mingle", "--without-gossip"]
            arguments += ["--loglevel", "WARNING", "--include", "bench_sql"]
            node = start_celery(f"worker{index + 1}", arguments, {**os.environ, **env}, logs)
            register_pid(tmp, node.process.pid)
            nodes.append(node)
        deadline = time.monotonic() + 90
        while len(celery_app.control.ping(timeout=0.5) or []) < len(nodes):
            dead = [node for node in nodes if node.process.poll() is not None]
            if dead or time.monotonic() > deadline:
                tail = "\n".join(node.log()[-3000:] for node in dead or nodes)
                raise RuntimeError(f"workers did not come up:\n{tail}")
        yield nodes
    finally:
        stop_all(nodes)


def stop_all(nodes: list[Any], timeout: float = 20) -> None:
    """Warm shutdown of every node at once (SIGTERM); SIGKILL to the process group of laggards."""
    for node in nodes:
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for node in nodes:
        try:
            node.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(5)


def interruptible() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt once (so cleanup runs), then are ignored.

    Set explicitly: a process started in the background by a non-interactive shell inherits an
    ignored SIGINT.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def pool_peak_rss_mb(nodes: list[Any]) -> float:
    """The highest VmHWM (peak RSS) among the pool processes of the worker nodes, in MB."""
    from tests.support.processes import pool_children

    peak = 0.0
    for node in nodes:
        for child in pool_children(node.process.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{child}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def _cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User plus system CPU seconds a process has used so far (0 once it is gone); with `reaped`,
    also those of its children that ended and were waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _pids_where(test: Any) -> list[int]:
    """Processes of this machine whose (comm, cmdline) pass `test`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_text().replace("\0", " ")
            if test(comm, cmdline):
                found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds used by the processes of a run through workers, by role, between two points.

    Where the machine's CPUs went: the workers' pool processes, their main processes (Celery's
    messaging and events), PostgreSQL (every process of the server, backends that start later
    included: it serves the run alone here) and the ClickHouse HTTP adapter on `data_dir`. On a
    shared 2-CPU machine these move by ~10% from run to run, like the wall time. A backend that
    ends in between still counts (in the postmaster's time of the children it waited for: a
    worker replaces a connection older than CONN_MAX_AGE between tasks); another process that
    ends in between loses its share.
    """

    # Roles whose processes' parent waits for them: counted as the role's total, reaped time included.
    _REAPED = frozenset({"PostgreSQL"})

    def __init__(self, nodes: list[Any], data_dir: str) -> None:
        from tests.support.processes import pool_children

        self._roles: dict[str, Any] = {
            "worker processes": lambda: [c for node in nodes for c in pool_children(node.process.pid)],
            "their main processes": lambda: [node.process.pid for node in nodes],
            "PostgreSQL": lambda: _pids_where(lambda comm, _: comm == "postgres"),
            "ClickHouse over HTTP": lambda: _pids_where(
                lambda _, cmd: "devserver_run" in cmd and data_dir in cmd
            ),
        }
        self._start = self._read()

    def _read(self) -> dict[str, dict[int, float]]:
        return {
            role: {pid: _cpu_seconds(pid, reaped=role in self._REAPED) for pid in pids()}
            for role, pids in self._roles.items()
        }

    def used(self) -> dict[str, float]:
        """CPU seconds per role since the meter was made (a process started since counts from 0)."""
        now = self._read()
        used = {}
        for role in self._roles:
            if role in self._REAPED:  # an ended process's time moved into its parent's
                used[role] = max(sum(now[role].values()) - sum(self._start[role].values()), 0.0)
            else:
                used[role] = sum(
                    max(seconds - self._start[role].get(pid, 0.0), 0.0) for pid, seconds in now[role].items()
                )
        return used


class MemorySampler:
    """Peak anonymous and file-backed RSS of this process, sampled every 20 ms in a thread.

    ru_maxrss counts the pages of mapped files too: with the embedded engine, ~300 MB of its
    library's code. The anonymous peak is the memory the run itself allocated.
    """

    def __init__(self) -> None:
        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for line in Path("/proc/self/status").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in self.peaks:
                    self.peaks[name] = max(self.peaks[name], int(value.split()[0]) // 1024)

    def stop(self) -> dict[str, int]:
        """Stop sampling; the peaks in MB."""
        self._stop.set()
        self._thread.join()
        return self.peaks


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
