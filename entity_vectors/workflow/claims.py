"""Claims: one writer per entity at a time, whatever runs, passes and jobs are at work on a domain.

A batch claims its entities before it reads or sends anything (`claim`): one statement that
inserts a claim row per entity, or takes over a row whose lease ran out (a writer that died) or
that the batch itself holds (a redelivery of the same batch). The entities another writer holds
are left out of the batch: that writer handles them, and their change stays in the change log for
whoever comes next. Claims are released when the batch's rows are flushed, when the batch fails
or is dropped, and when its run closes; one never released (a killed worker) is taken over once
its lease (ENTITY_VECTORS_CLAIM_LEASE_SECONDS) is out, by the next writer that wants the entity.

On PostgreSQL the lease is measured on the database's clock, so writers on hosts with skewed
clocks agree on when a claim expires.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from django.db import connections, router
from django.utils import timezone

from entity_vectors import conf
from entity_vectors.models import EntityClaim


def _table(connection: Any) -> str:
    return str(connection.ops.quote_name(EntityClaim._meta.db_table))


def claim(domain: str, keys: Sequence[str], run_id: str, batch_index: int) -> set[str]:
    """Claim `keys` for batch `batch_index` of run `run_id`; returns the keys now held by it."""
    if not keys:
        return set()
    connection = connections[router.db_for_write(EntityClaim)]
    table = _table(connection)
    lease = conf.claim_lease_seconds()
    run = uuid.UUID(str(run_id))
    unique = sorted(set(keys))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"INSERT INTO {table} AS c (domain, entity_id, run_id, batch_index, expires_at) "
                "SELECT %s, key, %s, %s, clock_timestamp() + make_interval(secs => %s) FROM unnest(%s::text[]) AS key "
                "ON CONFLICT (domain, entity_id) DO UPDATE SET run_id = EXCLUDED.run_id, "
                "batch_index = EXCLUDED.batch_index, expires_at = EXCLUDED.expires_at "
                "WHERE c.expires_at < clock_timestamp() OR (c.run_id = EXCLUDED.run_id "
                "AND c.batch_index = EXCLUDED.batch_index) RETURNING entity_id",
                [domain, run, batch_index, float(lease), unique],
            )
            return {str(row[0]) for row in cursor.fetchall()}
        now = timezone.now()
        expires = now + timedelta(seconds=lease)
        held: set[str] = set()
        ops = connection.ops
        for offset in range(0, len(unique), 500):
            page = unique[offset : offset + 500]
            values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(page))
            params: list[Any] = []
            for key in page:
                params += [domain, key, run.hex, batch_index, ops.adapt_datetimefield_value(expires)]
            cursor.execute(
                f"INSERT INTO {table} AS c (domain, entity_id, run_id, batch_index, expires_at) VALUES {values} "
                "ON CONFLICT (domain, entity_id) DO UPDATE SET run_id = excluded.run_id, "
                "batch_index = excluded.batch_index, expires_at = excluded.expires_at "
                "WHERE c.expires_at < %s OR (c.run_id = excluded.run_id AND c.batch_index = excluded.batch_index) "
                "RETURNING entity_id",
                [*params, ops.adapt_datetimefield_value(now)],
            )
            held.update(str(row[0]) for row in cursor.fetchall())
        return held


def release(run_id: Any, batch_indexes: Iterable[int] | None = None) -> int:
    """Release the claims of a run's batches (all its batches: None); returns how many."""
    held = EntityClaim.objects.filter(run_id=uuid.UUID(str(run_id)))
    if batch_indexes is not None:
        held = held.filter(batch_index__in=list(batch_indexes))
    return int(held.delete()[0])


def release_expired() -> int:
    """Drop claims whose lease ran out (the sweeper: nobody holds them any more)."""
    return int(EntityClaim.objects.filter(expires_at__lt=timezone.now()).delete()[0])
