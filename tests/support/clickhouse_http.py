"""The ClickHouse HTTP interface served by chdb, as the tests know it: a re-export.

The implementation lives in `entity_vectors.store.devserver` and `devserver_run` (also behind
`python manage.py serve_clickhouse`, for development only). `python -m tests.support.clickhouse_http
--path DIR [--port N]` still serves DIR and prints one `READY <url>` line; the URL carries the
password the server made at start, which every query needs.
"""

from __future__ import annotations

import sys

from entity_vectors.store.devserver import ClickHouseHTTPAdapter
from entity_vectors.store.devserver_http import client_url, is_loopback
from entity_vectors.store.devserver_run import (
    banner,
    main,
    serve_until_stopped,
    start_subprocess,
    stop_subprocess,
)

__all__ = [
    "ClickHouseHTTPAdapter",
    "banner",
    "client_url",
    "is_loopback",
    "main",
    "serve_until_stopped",
    "start_subprocess",
    "stop_subprocess",
]

if __name__ == "__main__":
    sys.exit(main())
