"""Fixtures of the lifecycle tests: a team's actions vectorized at version 1, a labelled set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.models import Action, Team
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow
from tests.factories import make_action, make_team


@pytest.fixture
def synced(offline: None, embedded_store: EmbeddingStore) -> tuple[Team, list[Action]]:
    """A team with three actions, vectorized at version 1 (the hashing embedder, 256 dimensions)."""
    team = make_team()
    actions = [
        make_action(team, name="Signed up", description="A visitor created an account."),
        make_action(team, name="Upgraded to paid plan", description="Checkout for a subscription succeeded."),
        make_action(team, name="Uploaded a file", description="Any successful upload."),
    ]
    assert run_workflow("action").status == "succeeded"
    return team, actions


@pytest.fixture
def no_action_queries(settings: Any, tmp_path: Path) -> Path:
    """A labelled query set without action queries: the evaluation gate is skipped for actions."""
    path = tmp_path / "queries.json"
    entry = {"domain": "cohort", "team": "Nobody", "query": "q", "expected": ["x"], "kind": "exact"}
    path.write_text(json.dumps({"queries": [entry]}), encoding="utf-8")
    settings.ENTITY_VECTORS_EVAL_QUERIES = str(path)
    return path
