"""An install of the first release upgrades in place: no row lost, nothing paid again.

The first release kept its memory in the host's columns and versioned ClickHouse rows by their
timestamp. The migration adopts its synced entities into the ledger; the store migrates the
table on first use; the first run afterwards sends nothing and writes nothing.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from django.utils import timezone

from app.entity_configs import ActionEntityConfig
from app.models import Action
from entity_vectors import search_entities
from entity_vectors.lifecycle.adoption import adopt_all
from entity_vectors.models import DomainVersion, EntitySummary, LedgerEntry
from entity_vectors.providers import EmbedderSpec
from entity_vectors.store import get_store
from entity_vectors.store.rowbinary import varint
from entity_vectors.workflow.plan import build_properties, summary_input_hash
from tests.conftest import run_workflow
from tests.factories import make_action, make_team
from tests.support.openai_content import embed_text
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.django_db

FIRST_RELEASE_DDL = """
CREATE TABLE {table} (
    domain LowCardinality(String), team_id Int64, id String, vector Array(Float32), text String,
    properties String, embedding_version UInt32, timestamp DateTime64(6, 'UTC'), is_deleted UInt8
)
ENGINE = ReplacingMergeTree(timestamp, is_deleted)
ORDER BY (team_id, domain, embedding_version, id)
"""


def _string(value: str) -> bytes:
    data = value.encode()
    return varint(len(data)) + data


def first_release_rows(rows: list[tuple[Any, ...]]) -> bytes:
    """RowBinary in the first release's columns (no `version`)."""
    import struct

    out = bytearray()
    for domain, team_id, entity_id, vector, text, properties, version, timestamp, deleted in rows:
        out += _string(domain) + struct.pack("<q", team_id) + _string(entity_id)
        out += varint(len(vector)) + np.asarray(vector, dtype="<f4").tobytes()
        out += _string(text) + _string(properties)
        out += struct.pack("<IqB", version, round(timestamp.timestamp() * 1_000_000), deleted)
    return bytes(out)


class TestFirstReleaseUpgrade:
    """Synced by the first release, then upgraded: the next run costs nothing."""

    def test_adopted_entities_cost_nothing_and_new_writes_win(
        self, llm: OpenAIServer, settings: Any, embedded_store: Any
    ) -> None:
        table = f"upgrade_{uuid.uuid4().hex[:8]}"
        config = ActionEntityConfig()
        team = make_team()
        actions = [make_action(team, name=f"Upgraded action {index}") for index in range(3)]
        spec = EmbedderSpec("openai", "text-embedding-3-small", 256)
        old_time = timezone.now() - timedelta(days=3)
        rows = []
        for action in actions:
            summary = f"Old summary of {action.name}, written by the first release."
            input_hash = summary_input_hash(
                "openai:gpt-4.1-mini", config.get_summary_prompt(), config.describe(action)
            )
            Action.objects.filter(pk=action.pk).update(
                summary=summary,
                summary_input_hash=input_hash,
                summarized_by="openai:gpt-4.1-mini",
                last_summarized_at=old_time,
                embedding_last_synced_at=old_time,
                embedding_version=1,
            )
            values = {
                "id": action.pk,
                "team_id": team.id,
                "name": action.name,
                "description": action.description,
            }
            properties = build_properties(config, {**values, "summary": summary}, "openai:gpt-4.1-mini", spec)
            rows.append(
                (
                    "action",
                    team.id,
                    str(action.pk),
                    embed_text(summary, 256),
                    summary,
                    properties,
                    1,
                    old_time,
                    0,
                )
            )
        # The first release's table, written by it.
        embedded_store._command(FIRST_RELEASE_DDL.replace("{table}", table))
        with tempfile.NamedTemporaryFile(dir=embedded_store.path, suffix=".bin") as handle:
            handle.write(first_release_rows(rows))
            handle.flush()
            columns = (
                "domain, team_id, id, vector, text, properties, embedding_version, timestamp, is_deleted"
            )
            structure = (
                "domain LowCardinality(String), team_id Int64, id String, vector Array(Float32), text String, "
                "properties String, embedding_version UInt32, timestamp DateTime64(6, 'UTC'), is_deleted UInt8"
            )
            embedded_store._command(
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM file({{path:String}}, 'RowBinary', "
                "{structure:String})",
                {"path": handle.name, "structure": structure},
            )
        LedgerEntry.objects.all().delete()
        EntitySummary.objects.all().delete()
        DomainVersion.objects.all().delete()

        adopt_all()  # what the migration does
        settings.ENTITY_VECTORS_CLICKHOUSE_TABLE = table
        store = get_store()  # migrates the table on first use

        assert LedgerEntry.objects.filter(domain="action", is_live=True).count() == 3
        assert store.count_rows("action") == 3
        run = run_workflow("action")
        assert llm.requests == []  # nothing re-summarized, nothing re-embedded
        assert run.inserted == 0 and run.summarized == 0
        hits = search_entities("action", team.id, "upgraded action 1", mode="vector")
        assert hits and {hit.id for hit in hits} == {str(action.pk) for action in actions}

        renamed = actions[0]
        renamed.refresh_from_db()
        renamed.name = "Renamed after the upgrade"
        renamed.save()
        run_workflow("action")

        latest = {row.id: row for row in store.latest_rows("action")}
        assert latest[str(renamed.pk)].properties["name"] == "Renamed after the upgrade"
        assert latest[str(renamed.pk)].version > max(
            row.version for key, row in latest.items() if key != str(renamed.pk)
        )
        assert json.loads(json.dumps(latest[str(actions[1].pk)].properties))["name"] == "Upgraded action 1"
