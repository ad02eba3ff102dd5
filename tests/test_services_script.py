"""scripts/services.sh, run by `make test`, `make bench` and CI: the PostgreSQL and Redis the tests
use are started when installed but not running, and a missing one is one line saying what to install."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.processes import ROOT

SCRIPT = ROOT / "scripts" / "services.sh"
# What the script runs besides the servers' own tools (a PATH of these alone has no server).
BASICS = ("bash", "env", "seq", "sleep", "awk", "tail")


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=90, check=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def path_with(tmp_path: Path, *tools: str) -> str:
    """A PATH holding only `tools` (those installed here)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found:
            (directory / tool).symlink_to(found)
    return str(directory)


@pytest.fixture
def redis_port() -> Iterator[int]:
    """A free local port; a Redis the script started on it is shut down afterwards."""
    port = free_port()
    yield port
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"SHUTDOWN NOSAVE\r\n")
            connection.recv(64)  # the server closes the connection as it exits
    except OSError:
        pass  # not started, or already gone


class TestServicesScript:
    """What a developer sees from `make test` before the suite starts."""

    def test_silent_when_both_answer(self) -> None:
        finished = run(dict(os.environ))

        assert finished.returncode == 0, finished.stderr
        assert finished.stdout == finished.stderr == ""

    @pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
    def test_starts_redis_when_installed_but_not_running(self, redis_port: int) -> None:
        env = {**os.environ, "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0"}
        env.pop("CELERY_RESULT_BACKEND", None)

        first = run(env)
        second = run(env)

        assert first.returncode == 0, first.stderr
        assert first.stderr == f"services: started Redis on 127.0.0.1:{redis_port} (no persistence)\n"
        assert redis.Redis(host="127.0.0.1", port=redis_port).ping()
        assert second.returncode == 0 and second.stderr == "", second.stderr

    def test_redis_not_installed_is_one_line_saying_what_to_install(self, tmp_path: Path) -> None:
        env = {
            **os.environ,
            "PATH": path_with(tmp_path, *BASICS, "pg_isready", "pg_ctlcluster", "pg_lsclusters"),
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        }
        env.pop("CELERY_RESULT_BACKEND", None)

        finished = run(env)

        assert finished.returncode == 1
        assert finished.stderr.splitlines() == [
            "services: Redis is not installed: install it (Debian/Ubuntu: apt-get install redis-server; "
            "macOS: brew install redis)"
        ]

    def test_postgres_not_installed_is_one_line_saying_what_to_install(self, tmp_path: Path) -> None:
        env = {
            **os.environ,
            "PATH": path_with(tmp_path, *BASICS),
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/entity_vectors",
        }

        finished = run(env)

        assert finished.returncode == 1
        (line,) = finished.stderr.splitlines()
        assert line.startswith(
            "services: PostgreSQL is not installed: install it (Debian/Ubuntu: apt-get install"
        )

    @pytest.mark.skipif(
        shutil.which("pg_lsclusters") is None, reason="Debian's PostgreSQL tools are not installed"
    )
    def test_no_cluster_on_the_port_is_one_line(self) -> None:
        port = free_port()
        env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/entity_vectors"}

        finished = run(env)

        assert finished.returncode == 1
        (line,) = finished.stderr.splitlines()
        assert f"no PostgreSQL cluster listens on port {port}" in line
