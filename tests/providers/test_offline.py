"""The offline providers: the template summarizer and the hashing embedder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from entity_vectors.providers import (
    HashingEmbedder,
    TemplateSummarizer,
)
from entity_vectors.providers.text import count_tokens, truncate_to_tokens
from tests.support.vectors import cosine


class TestOfflineProviders:
    """Deterministic, offline, no requests."""

    def test_template_summary_is_the_description(self) -> None:
        results = asyncio.run(TemplateSummarizer(100).summarize(["Event `x`.\n  Tags: a.", "   "], "ignored"))

        assert results[0] == "Event `x`. Tags: a."
        assert isinstance(results[1], ValueError)

    def test_hashing_embedding_is_deterministic_normalised_float32_and_lexical(self) -> None:
        embedder = HashingEmbedder(512)
        embeddings = asyncio.run(
            embedder.embed(["User signed up", "User signed up", "users who signed up", "invoice paid", ""])
        )
        signup, signup_again, users, billing, empty = embeddings.vectors

        assert embeddings.vectors.dtype == np.float32 and embeddings.vectors.shape == (5, 512)
        assert embeddings.failures == {}
        np.testing.assert_array_equal(signup, signup_again)
        np.testing.assert_allclose(np.linalg.norm(embeddings.vectors, axis=1), 1.0, rtol=1e-6)
        assert cosine(signup, users) > 0.5 > cosine(signup, billing)
        assert float(np.linalg.norm(empty)) == pytest.approx(1.0)

    def test_truncation_keeps_short_text_and_cuts_long_text(self) -> None:
        assert truncate_to_tokens("short", 10) == "short"
        cut = truncate_to_tokens("東京" * 100, 20)
        assert count_tokens(cut) <= 20 and cut.endswith(" …")
