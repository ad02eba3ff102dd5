"""The `wordllama` embedder: built from settings, offline, normalised, and semantic across languages."""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync

from app.demo_data import seed_demo
from app.models import Team
from entity_vectors.exceptions import ConfigurationError
from entity_vectors.providers import Embedder, open_providers, semantic
from entity_vectors.providers.semantic import WordLlamaEmbedder
from entity_vectors.search.query import search_entities
from entity_vectors.store import EmbeddingStore
from tests.conftest import run_workflow


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Hugging Face offline, every network connection refused, and no model loaded yet in this process."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(semantic, "_MODELS", {})
    attempts: list[object] = []

    def refuse(sock: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def wordllama(settings: Any) -> None:
    """The template summarizer and the wordllama embedder at its full 256 dimensions."""
    settings.ENTITY_VECTORS_SUMMARIZER = "template"
    settings.ENTITY_VECTORS_EMBEDDER = "wordllama"
    settings.ENTITY_VECTORS_EMBEDDING_DIMENSIONS = 256


def embed_configured(texts: Sequence[str]) -> tuple[Embedder, np.ndarray[Any, Any]]:
    """Build the configured embedder as a run does and embed the texts."""

    async def run() -> tuple[Embedder, np.ndarray[Any, Any]]:
        async with open_providers() as providers:
            result = await providers.embedder.embed(texts)
            assert result.failures == {}
            return providers.embedder, result.vectors

    return async_to_sync(run)()


class TestWordLlamaEmbedder:
    """Offline, normalised float32 vectors of the configured size, closer for the same meaning."""

    def test_loads_offline_and_gives_normalised_vectors(
        self, no_network: list[object], wordllama: None
    ) -> None:
        embedder, vectors = embed_configured(["people from Germany", "Uploaded a file", ""])

        assert isinstance(embedder, WordLlamaEmbedder)
        assert embedder.identity == "wordllama" and embedder.dimensions == 256
        assert vectors.dtype == np.float32 and vectors.shape == (3, 256)
        assert np.all(np.isfinite(vectors))
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
        assert no_network == []

    def test_same_meaning_across_languages_is_closer(self, no_network: list[object], wordllama: None) -> None:
        _, vectors = embed_configured(["people from Germany", "Personen aus Deutschland", "Uploaded a file"])

        query, german, unrelated = vectors
        assert float(query @ german) > float(query @ unrelated) + 0.2

    @pytest.mark.parametrize("dimensions", [128, 64])
    def test_truncated_sizes(
        self, no_network: list[object], wordllama: None, settings: Any, dimensions: int
    ) -> None:
        settings.ENTITY_VECTORS_EMBEDDING_DIMENSIONS = dimensions

        embedder, vectors = embed_configured(["billing events"])

        assert embedder.dimensions == dimensions and vectors.shape == (1, dimensions)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)

    def test_model_is_loaded_once_per_size(self, no_network: list[object]) -> None:
        assert WordLlamaEmbedder(256)._model is WordLlamaEmbedder(256)._model
        assert list(semantic._MODELS) == [256]

    @pytest.mark.parametrize("dimensions", [1536, 512, 100])
    def test_unsupported_dimensions_are_a_clear_error(
        self, wordllama: None, settings: Any, dimensions: int
    ) -> None:
        settings.ENTITY_VECTORS_EMBEDDING_DIMENSIONS = dimensions

        with pytest.raises(ConfigurationError) as caught:
            embed_configured(["x"])

        assert f"ENTITY_VECTORS_EMBEDDING_DIMENSIONS={dimensions}" in str(caught.value)
        assert "256, 128, 64" in str(caught.value)

    def test_missing_package_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(semantic, "_MODELS", {})
        monkeypatch.setitem(sys.modules, "wordllama", None)  # import wordllama raises ImportError

        with pytest.raises(ConfigurationError, match=r"install the `semantic` extra"):
            WordLlamaEmbedder(256)


@pytest.mark.django_db
class TestWordLlamaSearch:
    """The demo data vectorized with wordllama: a German query finds the English cohort."""

    def test_cross_lingual_search(self, wordllama: None, embedded_store: EmbeddingStore) -> None:
        seed_demo()
        run = run_workflow("cohort")
        team = Team.objects.get(name="Hedgebox Web")

        hits = search_entities("cohort", team.id, "Personen aus Deutschland", limit=3, mode="vector")

        assert run.status == "succeeded"
        assert hits[0].properties["name"] == "New signups from Germany"
        assert hits[0].properties["_vectorized_by"]["embedder"] == "wordllama"
