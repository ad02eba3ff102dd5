"""`manage.py serve_clickhouse [--data DIR] [--port 8123] [--host 127.0.0.1] [--password PW]`: FOR DEVELOPMENT.

One process owns the embedded ClickHouse (chdb allows one process per data directory) and serves
it over ClickHouse's HTTP interface, so that workers of any pool, beat, the web app and the CLI
share it with the CLICKHOUSE_URL it prints (`http://default:<password>@127.0.0.1:8123/default`).
The password is new at every start unless `--password` fixes one; requests from web pages and
anything that reaches files or other servers are refused (see `entity_vectors.store.devserver`).
It binds loopback unless `--allow-remote` is given.
"""

from __future__ import annotations

import errno
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError, EmbeddedStoreLocked
from entity_vectors.management.base import OneLineChecks
from entity_vectors.management.options import text
from entity_vectors.store.devserver import ClickHouseHTTPAdapter
from entity_vectors.store.devserver_http import is_loopback
from entity_vectors.store.devserver_run import banner, serve_until_stopped


def default_data_dir() -> str:
    """The embedded store's directory: CLICKHOUSE_URL's if it is `chdb://...`, else var/clickhouse.

    A CLICKHOUSE_URL that cannot work is an error, not var/clickhouse: the other processes would
    not find the directory served.
    """
    try:
        target = conf.clickhouse_target()
    except ConfigurationError as exc:
        raise CommandError(f"{conf.redact(' '.join(str(exc).split()))}; fix it, or pass --data DIR") from None
    if target.kind == "chdb":
        return target.path
    return str(conf.default_data_dir() / "clickhouse")


class Command(OneLineChecks, BaseCommand):
    help = (
        "FOR DEVELOPMENT: serve the embedded ClickHouse (chdb) over HTTP so that worker, beat, web and "
        "CLI processes can share it: set CLICKHOUSE_URL to the URL it prints, which carries a password "
        "made at every start. It binds 127.0.0.1 unless --allow-remote is given."
    )
    # It only needs chdb and a port: settings meant for the pipeline must not keep it from starting.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data",
            default=None,
            help="chdb data directory (default: the embedded store's, CLICKHOUSE_URL's chdb path or var/clickhouse)",
        )
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument(
            "--port", type=int, default=8123, help="port to listen on (default 8123; 0 = any free)"
        )
        parser.add_argument(
            "--allow-remote",
            action="store_true",
            help="allow a non-loopback --host (anyone who reaches the port and has the password can read and "
            "change every table; the password crosses the network in clear text)",
        )
        parser.add_argument(
            "--password",
            default=None,
            help="the password of user default, so that CLICKHOUSE_URL stays the same across restarts "
            "(default: a new random one at every start)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = str(options["host"]), int(options["port"])
        text("--host", host)
        text("--data", options["data"], 4096)
        if not 0 <= port <= 65535:
            raise CommandError(f"--port {port}: must be from 0 to 65535")
        if not options["allow_remote"] and not is_loopback(host):
            raise CommandError(
                f"--host {host} is not a loopback address: anyone who can reach it and learns the password "
                "(sent in clear text, no TLS) could read and change every table; bind 127.0.0.1, or pass "
                "--allow-remote if you mean it"
            )
        password = options["password"]
        if password is not None and not str(password):
            raise CommandError("--password must not be empty (leave it out for a random one)")
        data = str(options["data"] or default_data_dir())
        adapter = ClickHouseHTTPAdapter(data, host=host, port=port, password=password)

        def ready() -> None:
            for line in banner(adapter):
                self.stdout.write(line)
            self.stdout.flush()

        try:
            serve_until_stopped(adapter, ready)
        except ConfigurationError as exc:  # chdb is not installed
            raise CommandError(str(exc)) from None
        except EmbeddedStoreLocked as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"cannot listen on {host}:{port}: the address is already in use (another ClickHouse or "
                    "serve_clickhouse?); stop it, or choose another --port and use it in CLICKHOUSE_URL"
                ) from None
            raise CommandError(
                f"cannot serve the embedded ClickHouse at {data} on {host}:{port}: "
                f"{' '.join(str(exc).split())}"
            ) from None
        self.stdout.write("ClickHouse development server stopped.")
