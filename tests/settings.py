"""Test settings: the host settings on PostgreSQL, Redis database 11, a fresh embedded ClickHouse."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/entity_vectors")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/11")
os.environ.setdefault("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/11")
# The fast lane is off unless a test turns it on: other tests decide when their runs happen.
os.environ.setdefault("ENTITY_VECTORS_FAST_LANE", "false")
if "CLICKHOUSE_URL" not in os.environ:
    # chdb allows one data directory per process: each test process gets its own, new one.
    _chdb_dir = tempfile.mkdtemp(prefix="entity-vectors-chdb-")
    atexit.register(shutil.rmtree, _chdb_dir, ignore_errors=True)
    os.environ["CLICKHOUSE_URL"] = f"chdb://{_chdb_dir}"

from app.settings import *  # noqa: F403

# The test process closes its connections after each use; the worker processes of the e2e tests
# keep theirs between tasks, as in production (their service_env sets DATABASE_CONN_MAX_AGE).
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("DATABASE_CONN_MAX_AGE", "0"))  # noqa: F405
INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
