"""`manage.py serve_clickhouse` as a person runs it: a process, its banner and the URL it prints."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import ROOT, free_port, http_ok, wait_until

URL_LINE = re.compile(r"^  CLICKHOUSE_URL=(\S+)$")


def manage(*arguments: str) -> subprocess.Popen[str]:
    """`python manage.py ...` from the repository root, as a person would run it."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "ENTITY_VECTORS_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "manage.py", *arguments],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass
class DevServer:
    """A running `serve_clickhouse` process."""

    process: subprocess.Popen[str]
    port: int
    data: Path
    # What it printed before the tests read on (the banner), kept for stop().
    printed: list[str] = field(default_factory=list)
    output: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        """The CLICKHOUSE_URL the banner tells the other processes to use, as printed."""
        for line in "".join(self.printed).splitlines():
            match = URL_LINE.match(line)
            if match:
                return match.group(1)
        raise AssertionError(f"serve_clickhouse printed no CLICKHOUSE_URL: {''.join(self.printed)}")

    def stop(self) -> tuple[str, str]:
        """Ctrl-C it (once); its stdout (the banner included) and stderr."""
        if self.output is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
            try:
                out, err = self.process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                out, err = self.process.communicate()
            self.output = ("".join(self.printed) + out, err)
        return self.output

    def read_banner(self, timeout: float) -> None:
        """Read stdout up to the CLICKHOUSE_URL line, as a person reads the terminal.

        Straight from the pipe (a buffered readline could hold the next lines where select
        cannot see them); what is read is kept in `printed`.
        """
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        read = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(descriptor, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                chunk = os.read(descriptor, 65536)
                read += chunk
                complete = read.decode(errors="replace").split("\n")[:-1]
                if not chunk or any(URL_LINE.match(line) for line in complete):
                    break
        self.printed.append(read.decode(errors="replace"))


def start_devserver(data: Path, *extra: str) -> DevServer:
    """`manage.py serve_clickhouse --data DIR --port P`, once it printed its URL and answers GET /ping."""
    port = free_port()
    process = manage("serve_clickhouse", "--data", str(data), "--port", str(port), *extra)
    server = DevServer(process, port, data)
    try:
        server.read_banner(timeout=60)
        wait_until(
            lambda: process.poll() is not None or http_ok(f"http://127.0.0.1:{port}/ping"),
            timeout=10,
            what="serve_clickhouse to answer /ping",
        )
    except AssertionError:
        server.stop()
        raise
    if process.poll() is not None:
        out, err = server.stop()
        raise AssertionError(f"serve_clickhouse exited with {process.returncode}: {out}{err}")
    return server
