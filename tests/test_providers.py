"""The providers through the real OpenAI SDK against the loopback server, and the offline ones."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from entity_vectors.exceptions import ConfigurationError, ProviderRejected, ProviderUnavailable
from entity_vectors.limiter import LocalLimiter
from entity_vectors.providers import HashingEmbedder, ProviderUsage, TemplateSummarizer, open_providers
from entity_vectors.providers.base import Limiter
from entity_vectors.providers.text import estimate_tokens, truncate_to_tokens
from tests.support.openai_server import OpenAIServer


def summarize(
    texts: list[str], prompt: str = "Summarize.", limiter: Limiter | None = None
) -> tuple[list[Any], ProviderUsage]:
    """Run the configured summarizer over `texts`."""
    usage = ProviderUsage()

    async def run() -> list[Any]:
        async with open_providers(limiter, usage) as providers:
            return await providers.summarizer.summarize(texts, prompt)

    return async_to_sync(run)(), usage


def embed(texts: list[str]) -> tuple[list[list[float]], ProviderUsage]:
    """Run the configured embedder over `texts` in one request."""
    usage = ProviderUsage()

    async def run() -> list[list[float]]:
        async with open_providers(None, usage) as providers:
            return [list(vector) for vector in await providers.embedder.embed(texts)]

    return async_to_sync(run)(), usage


def cosine(first: list[float], second: list[float]) -> float:
    """Cosine similarity."""
    dot = sum(a * b for a, b in zip(first, second, strict=True))
    return dot / (math.sqrt(sum(a * a for a in first)) * math.sqrt(sum(b * b for b in second)))


class TestOpenAISummarizer:
    """Chat completions: prompt and input as given, retries only where a retry can help."""

    def test_sends_the_prompt_and_description_and_counts_usage(
        self, llm: OpenAIServer, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_CHAT_MODEL = "gpt-4o-mini"

        results, usage = summarize(
            ['Action "Signed up". It matches when event is `signup`.'], "SYSTEM PROMPT"
        )

        assert results == ['Action "Signed up". It matches when event is `signup`.']
        (request,) = llm.chat_requests()
        assert request.body["model"] == "gpt-4o-mini"
        assert request.body["messages"][0] == {"role": "system", "content": "SYSTEM PROMPT"}
        assert request.body["messages"][1]["content"].startswith('Action "Signed up"')
        assert request.headers["authorization"] == "Bearer test-key"
        assert usage.requests == 1 and usage.prompt_tokens > 0 and usage.completion_tokens > 0

    def test_rate_limit_is_retried_after_the_servers_retry_after(
        self, llm: OpenAIServer, settings: Any
    ) -> None:
        settings.ENTITY_VECTORS_PROVIDER_MAX_BACKOFF = 5
        llm.fail_next(1, status=429, retry_after=0.4, path="/chat/completions")

        started = time.monotonic()
        results, usage = summarize(["Cohort of paying users."])

        assert results == ["Cohort of paying users."]
        assert time.monotonic() - started >= 0.4
        assert [request.status for request in llm.chat_requests()] == [429, 200]
        assert usage.requests == 2

    def test_authentication_error_is_not_retried(self, llm: OpenAIServer, settings: Any) -> None:
        settings.OPENAI_API_KEY = "wrong-key"

        (result,), _ = summarize(["anything"])

        assert isinstance(result, ProviderRejected)
        assert "401" in str(result)
        assert [request.status for request in llm.chat_requests()] == [401]

    def test_server_errors_are_retried_then_reported_in_the_slot(self, llm: OpenAIServer) -> None:
        llm.fail_when("BROKEN", status=500, path="/chat/completions")

        results, usage = summarize(["fine one", "BROKEN one", "fine two"])

        assert results[0] == "fine one" and results[2] == "fine two"
        assert isinstance(results[1], ProviderUnavailable)
        assert "after 3 attempts" in str(results[1])
        assert usage.requests == 5  # 1 + 3 + 1

    def test_a_timeout_is_retried(self, llm: OpenAIServer, settings: Any) -> None:
        settings.ENTITY_VECTORS_PROVIDER_TIMEOUT = 0.5
        llm.hang_next(1, seconds=2, path="/chat/completions")

        results, usage = summarize(["slow then fine"])

        assert results == ["slow then fine"]
        assert usage.requests == 2

    def test_a_huge_description_is_truncated_before_sending(self, llm: OpenAIServer, settings: Any) -> None:
        settings.ENTITY_VECTORS_MAX_SUMMARY_INPUT_TOKENS = 1000
        huge = "Description of a very large action. " + "word " * 200_000  # ~1 MB

        (result,), _ = summarize([huge])

        assert isinstance(result, str) and result.startswith("Description of a very large action.")
        sent = llm.chat_requests()[0].body["messages"][1]["content"]
        assert len(sent) < 5000 and estimate_tokens(sent) <= 1000
        assert sent.endswith("…")

    def test_concurrency_is_bounded_by_the_limiter(self, llm: OpenAIServer) -> None:
        llm.latency = 0.2

        results, _ = summarize([f"entity {index}" for index in range(9)], limiter=LocalLimiter(3))

        assert len(results) == 9 and all(isinstance(result, str) for result in results)
        assert llm.peak_in_flight == 3


class TestOpenAIEmbedder:
    """Embeddings: one request per call, order kept, size checked."""

    def test_one_request_per_call_in_input_order(self, llm: OpenAIServer) -> None:
        texts = [f"text number {index}" for index in range(20)]

        vectors, usage = embed(texts)

        (request,) = llm.embedding_requests()
        assert request.body["input"] == texts
        assert request.body["dimensions"] == 256
        assert len(vectors) == 20 and all(len(vector) == 256 for vector in vectors)
        again, _ = embed([texts[7]])
        assert cosine(again[0], vectors[7]) == pytest.approx(1.0, abs=1e-6)
        assert usage.embedding_tokens > 0

    def test_a_model_of_another_size_is_a_configuration_error(self, llm: OpenAIServer, settings: Any) -> None:
        settings.ENTITY_VECTORS_EMBEDDING_MODEL = "nomic-embed-text"  # no `dimensions`: the server's default

        with pytest.raises(ConfigurationError, match=r"returned 1536-dimensional vectors.*set it to 1536"):
            embed(["hello"])
        assert "dimensions" not in llm.embedding_requests()[0].body

    def test_missing_key_is_a_clear_configuration_error(self, settings: Any) -> None:
        settings.ENTITY_VECTORS_SUMMARIZER = "openai"
        settings.OPENAI_API_KEY = ""

        with pytest.raises(ConfigurationError, match="OPENAI_API_KEY is not set"):
            summarize(["x"])


class TestOfflineProviders:
    """Deterministic, offline, no requests."""

    def test_template_summary_is_the_description(self) -> None:
        results = asyncio.run(TemplateSummarizer(100).summarize(["Event `x`.\n  Tags: a.", "   "], "ignored"))

        assert results[0] == "Event `x`. Tags: a."
        assert isinstance(results[1], ValueError)

    def test_hashing_embedding_is_deterministic_normalised_and_lexical(self) -> None:
        embedder = HashingEmbedder(512)
        signup, signup_again, users, billing, empty = asyncio.run(
            embedder.embed(["User signed up", "User signed up", "users who signed up", "invoice paid", ""])
        )

        assert signup == signup_again
        assert math.sqrt(sum(value * value for value in signup)) == pytest.approx(1.0)
        assert math.sqrt(sum(value * value for value in empty)) == pytest.approx(1.0)
        assert cosine(signup, users) > 0.5 > cosine(signup, billing)

    def test_truncation_keeps_short_text_and_cuts_long_text(self) -> None:
        assert truncate_to_tokens("short", 10) == "short"
        cut = truncate_to_tokens("東京" * 100, 20)
        assert estimate_tokens(cut) <= 20 and cut.endswith("…")
