"""The `openai` providers: chat-completion summaries and embeddings through the official async SDK.

The SDK's own retries are turned off (max_retries=0) so that each attempt holds a limiter slot
only while its request is in flight, the backoff sleeps outside it, and every attempt is
counted. 429 and 5xx, timeouts and connection errors are retried with exponential backoff and
jitter, honouring Retry-After; authentication and other 4xx errors are not.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import openai
from openai import AsyncOpenAI

from entity_vectors.exceptions import (
    ConfigurationError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
)
from entity_vectors.providers.base import Limiter, ProviderUsage
from entity_vectors.providers.text import truncate_to_tokens

T = TypeVar("T")

# Summaries are "at most three sentences": a hard cap keeps a runaway answer cheap.
MAX_SUMMARY_TOKENS = 300


@dataclass(frozen=True)
class RetryPolicy:
    """How one provider request is retried."""

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter for the given (0-based) attempt."""
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        return random.uniform(ceiling / 2, ceiling)


def retry_after_seconds(error: openai.APIStatusError) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, retry-after seconds or date)."""
    headers = error.response.headers
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())
    return None


def openai_identity(model: str) -> str:
    """How summaries and vectors made by an OpenAI(-compatible) model are labelled."""
    return f"openai:{model}"


class OpenAIRequester:
    """Sends one SDK call under a limiter slot, with our retry policy and usage counting."""

    def __init__(self, limiter: Limiter, usage: ProviderUsage, policy: RetryPolicy) -> None:
        self._limiter = limiter
        self._usage = usage
        self._policy = policy

    async def call(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        """Run `request`, retrying transient failures; raises our own error types."""
        last_error: Exception | None = None
        for attempt in range(self._policy.max_retries + 1):
            wait: float | None = None
            async with self._limiter.slot():
                self._usage.requests += 1
                try:
                    return await request()
                except openai.RateLimitError as exc:
                    last_error, wait = exc, retry_after_seconds(exc)
                except openai.APIStatusError as exc:
                    if exc.status_code in (408, 409) or exc.status_code >= 500:
                        last_error, wait = exc, retry_after_seconds(exc)
                    else:
                        raise ProviderRejected(
                            f"{what}: the provider refused the request ({exc.status_code}): {exc.message}"
                        ) from exc
                except openai.APIConnectionError as exc:  # includes APITimeoutError
                    last_error = exc
            if attempt == self._policy.max_retries:
                break
            delay = self._policy.backoff(attempt) if wait is None else wait
            await asyncio.sleep(min(delay, self._policy.max_delay))
        attempts = self._policy.max_retries + 1
        if isinstance(last_error, openai.RateLimitError):
            raise ProviderRateLimited(
                f"{what}: still rate limited after {attempts} attempts: {last_error.message}",
                retry_after=retry_after_seconds(last_error),
            ) from last_error
        detail = last_error.message if isinstance(last_error, openai.APIError) else repr(last_error)
        raise ProviderUnavailable(f"{what}: failed after {attempts} attempts: {detail}") from last_error


class OpenAISummarizer:
    """Summaries from a chat model: one request per entity, bounded by the limiter."""

    def __init__(
        self,
        client: AsyncOpenAI,
        model: str,
        requester: OpenAIRequester,
        usage: ProviderUsage,
        max_input_tokens: int,
    ) -> None:
        self._client = client
        self._model = model
        self._requester = requester
        self._usage = usage
        self._max_input_tokens = max_input_tokens

    @property
    def identity(self) -> str:
        """Recorded with every summary it writes."""
        return openai_identity(self._model)

    async def summarize(self, texts: Sequence[str], system_prompt: str) -> list[str | BaseException]:
        """One summary per text, concurrently; failures returned in their slots."""
        results = await asyncio.gather(
            *(self._summarize_one(text, system_prompt) for text in texts), return_exceptions=True
        )
        return list(results)

    async def _summarize_one(self, text: str, system_prompt: str) -> str:
        content = truncate_to_tokens(text, self._max_input_tokens)
        response = await self._requester.call(
            "chat completion",
            lambda: self._client.chat.completions.create(
                model=self._model,
                messages=[
                    {"role": "system", "content": system_prompt},
                    {"role": "user", "content": content},
                ],
                temperature=0,
                max_tokens=MAX_SUMMARY_TOKENS,
            ),
        )
        if response.usage is not None:
            self._usage.prompt_tokens += response.usage.prompt_tokens
            self._usage.completion_tokens += response.usage.completion_tokens
        if not response.choices:
            raise ProviderRejected("chat completion: the response has no choices")
        summary = (response.choices[0].message.content or "").strip()
        if not summary:
            raise ProviderRejected("chat completion: the model returned an empty summary")
        return summary


class OpenAIEmbedder:
    """Vectors from an embeddings model: one request per call, bounded by the limiter."""

    def __init__(
        self,
        client: AsyncOpenAI,
        model: str,
        dimensions: int,
        requester: OpenAIRequester,
        usage: ProviderUsage,
        max_input_tokens: int,
    ) -> None:
        self._client = client
        self._model = model
        self._dimensions = dimensions
        self._requester = requester
        self._usage = usage
        self._max_input_tokens = max_input_tokens

    @property
    def identity(self) -> str:
        """Recorded with every vector it makes."""
        return openai_identity(self._model)

    @property
    def dimensions(self) -> int:
        """The vector length asked for and checked."""
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed the texts in one request, in input order."""
        inputs = [truncate_to_tokens(text, self._max_input_tokens) or " " for text in texts]
        # Only the text-embedding-3 family takes `dimensions`; other OpenAI-compatible servers
        # may reject it, so for them the returned size is checked against the setting instead.
        if self._model.startswith("text-embedding-3"):
            response = await self._requester.call(
                "embeddings",
                lambda: self._client.embeddings.create(
                    model=self._model, input=inputs, dimensions=self._dimensions
                ),
            )
        else:
            response = await self._requester.call(
                "embeddings", lambda: self._client.embeddings.create(model=self._model, input=inputs)
            )
        if response.usage is not None:
            self._usage.embedding_tokens += response.usage.prompt_tokens
        if len(response.data) != len(inputs):
            raise ProviderRejected(
                f"embeddings: asked for {len(inputs)} vectors, the provider returned {len(response.data)}"
            )
        vectors = [list(item.embedding) for item in sorted(response.data, key=lambda item: item.index)]
        for vector in vectors:
            if len(vector) != self._dimensions:
                raise ConfigurationError(
                    f"embeddings: model {self._model!r} returned {len(vector)}-dimensional vectors but "
                    f"ENTITY_VECTORS_EMBEDDING_DIMENSIONS is {self._dimensions}; set it to {len(vector)}"
                )
        return vectors
