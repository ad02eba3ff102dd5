"""Running the ClickHouse HTTP adapter as a process: its banner, signals, a subprocess for tests.

`python -m entity_vectors.store.devserver_run --path DIR [--port N] [--password PW]` serves DIR and
prints one `READY <url>` line, the URL carrying the password; `manage.py serve_clickhouse` is the
command people use. The adapter itself is `devserver.ClickHouseHTTPAdapter`.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from entity_vectors.store.devserver import ClickHouseHTTPAdapter
from entity_vectors.store.devserver_http import is_loopback

logger = logging.getLogger(__name__)


def banner(adapter: ClickHouseHTTPAdapter) -> list[str]:
    """What `serve_clickhouse` prints once it serves: what this is, who may connect, the URL to use."""
    lines = [
        f"Serving the embedded ClickHouse (chdb) at {adapter.data_path} over HTTP on {adapter.host}:{adapter.port}.",
        "FOR DEVELOPMENT ONLY: no TLS, one query at a time. Queries need the password in the URL below "
        "(new at every start unless --password is given); requests from web pages (an Origin header, "
        "another Host) are refused, GET only reads, and nothing may reach files or other servers. Use a "
        "ClickHouse server in production.",
    ]
    if not is_loopback(adapter.host):
        lines.append(
            f"WARNING: listening on {adapter.host}, not only on loopback: anyone who can reach this port and "
            "has the password can read and change every table, and the password crosses the network in "
            "clear text. Clients on other machines address it by IP address (DNS names are refused)."
        )
    lines += [
        "Run the worker, beat, web and CLI processes with:",
        f"  CLICKHOUSE_URL={adapter.url}",
        "Stop with Ctrl-C.",
    ]
    return lines


def serve_until_stopped(adapter: ClickHouseHTTPAdapter, on_ready: Callable[[], None]) -> None:
    """Start `adapter`, call `on_ready`, serve until SIGTERM or SIGINT, then stop cleanly."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        adapter.start()
        try:
            on_ready()
            while not stopping.wait(0.5):  # a timed wait lets the signal handler run promptly
                pass
        finally:
            adapter.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_subprocess(data_path: str, timeout: float = 30) -> tuple[subprocess.Popen[str], str]:
    """Run the server in a child process (so this process may use chdb elsewhere); return it and its URL.

    The URL carries the password the child made.
    """
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "entity_vectors.store.devserver_run", "--path", data_path],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return proc, line.split(" ", 1)[1].strip()
            if not line:  # EOF: the child died before becoming ready
                break
    stop_subprocess(proc)
    raise RuntimeError(f"ClickHouse HTTP development server did not start (exit code {proc.returncode})")


def stop_subprocess(proc: subprocess.Popen[str], timeout: float = 15) -> None:
    """Terminate a server started by start_subprocess, killing it if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground until SIGTERM or SIGINT, printing one `READY <url>` line (for scripts)."""
    parser = argparse.ArgumentParser(
        description="FOR DEVELOPMENT: serve a chdb data directory over ClickHouse's HTTP interface. "
        "People use `python manage.py serve_clickhouse`."
    )
    parser.add_argument("--path", required=True, help="chdb data directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    parser.add_argument(
        "--password", default=None, help="the password of user default (default: a new random one)"
    )
    args = parser.parse_args(argv)
    if not args.allow_remote and not is_loopback(args.host):
        parser.error(f"--host {args.host} is not a loopback address; pass --allow-remote if you mean it")
    if args.password == "":
        parser.error("--password must not be empty")
    adapter = ClickHouseHTTPAdapter(args.path, host=args.host, port=args.port, password=args.password)
    serve_until_stopped(adapter, lambda: print(f"READY {adapter.url}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
