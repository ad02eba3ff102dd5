"""What a test observes of a run: the chat inputs the provider got, the live rows ClickHouse holds."""

from __future__ import annotations

from typing import Any

from django.db import connection

from entity_vectors.store import EmbeddingStore
from tests.support.openai_server import OpenAIServer


def chat_inputs(server: OpenAIServer) -> list[str]:
    """The user messages the chat model was asked to summarize."""
    return [request.body["messages"][-1]["content"] for request in server.chat_requests()]


def live_rows(store: EmbeddingStore, domain: str) -> dict[str, Any]:
    """Latest live rows by entity id."""
    return {row.id: row for row in store.latest_rows(domain) if not row.is_deleted}


def database_state() -> dict[str, Any]:
    """Every row of the pipeline's tables and the host's action table, to compare before and after."""
    state = {}
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            if table.startswith(("entity_vectors_", "app_action", "app_cohort")):
                cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)} ORDER BY 1")
                state[table] = [tuple(map(str, row)) for row in cursor.fetchall()]
    return state
