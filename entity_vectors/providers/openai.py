"""The `openai` providers: chat-completion summaries and embeddings through the official async SDK.

The SDK's own retries are turned off (max_retries=0) so that each attempt holds a limiter slot
only while its request is in flight, the backoff sleeps outside it, and every attempt is
counted. 429 and 5xx, timeouts and connection errors are retried with exponential backoff and
jitter, honouring Retry-After; authentication and other 4xx errors are not. Connection failures
are also counted by the run's breaker (`reachability`): a host that refused several connections
in a row gets no more requests, and every request to it ends at once with ProviderUnreachable.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import openai
from openai import AsyncOpenAI

from entity_vectors import conf
from entity_vectors.exceptions import (
    ProviderAccessDenied,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ProviderUnreachable,
)
from entity_vectors.providers.base import Embeddings, Limiter, ProviderUsage
from entity_vectors.providers.reachability import ConnectionBreaker, connection_failure
from entity_vectors.providers.specs import openai_identity
from entity_vectors.providers.text import (
    MAX_SUMMARY_TOKENS,
    clean_text,
    count_tokens,
    cut_reply,
    encoding_name,
    get_encoding,
    truncate_to_tokens,
)
from entity_vectors.runtime.rate_budget import NoBudget, RateBudget

# Tokens the chat format adds around each message (OpenAI's cookbook counts about 3 to 4).
MESSAGE_OVERHEAD = 4
# Tokens a provider may report for one request; more is not a figure a real answer has.
MAX_REPORTED_TOKENS = 100_000_000


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


class OpenAIRequester:
    """Sends one SDK call within the rate budget and under a limiter slot, with our retries.

    The request is made through the SDK's raw-response API so that the provider's
    `x-ratelimit-*` headers feed the shared budget before the answer is parsed. Every error
    names the server (its base URL, never the key).
    """

    def __init__(
        self,
        limiter: Limiter,
        usage: ProviderUsage,
        policy: RetryPolicy,
        budget: RateBudget | None = None,
        where: str = "the provider",
        breaker: ConnectionBreaker | None = None,
    ) -> None:
        self._limiter = limiter
        self._usage = usage
        self._policy = policy
        self._budget = budget or NoBudget()
        self._where = where
        self._breaker = breaker or ConnectionBreaker()

    async def call(self, what: str, request: Callable[[], Awaitable[Any]], model: str, tokens: int) -> Any:
        """Run `request` (a raw-response SDK call), retrying transient failures; returns the parsed body."""
        last_error: Exception | None = None
        label = f"{what} at {self._where}"
        for attempt in range(self._policy.max_retries + 1):
            wait: float | None = None
            raw: Any = None
            self._breaker.check(self._where)  # a host found unreachable gets nothing more
            async with self._limiter.slot():
                self._breaker.check(self._where)  # ... found so while this request waited
                # Inside the slot: at most `limit` requests per process wait on the shared budget.
                await self._budget.acquire(model, tokens)
                self._usage.requests += 1
                try:
                    raw = await request()
                    self._breaker.answered(self._where)
                    self._budget.observe(model, raw.headers)
                except openai.RateLimitError as exc:
                    self._breaker.answered(self._where)
                    self._budget.observe(model, exc.response.headers, limited=True)
                    last_error, wait = exc, retry_after_seconds(exc)
                except openai.APIStatusError as exc:
                    self._breaker.answered(self._where)
                    if exc.status_code in (408, 409) or exc.status_code >= 500:
                        last_error, wait = exc, retry_after_seconds(exc)
                    elif exc.status_code in (401, 403, 404):
                        raise ProviderAccessDenied(
                            f"{label}: the provider refused our key, a permission or the model "
                            f"({exc.status_code}): {exc.message}"
                        ) from exc
                    else:
                        raise ProviderRejected(
                            f"{label}: the provider refused the request ({exc.status_code}): {exc.message}"
                        ) from exc
                except openai.APIConnectionError as exc:  # includes APITimeoutError
                    reason = connection_failure(exc)
                    if reason is not None:  # never reached the server: the breaker counts it
                        try:
                            self._breaker.failed(self._where, reason)
                        except ProviderUnreachable as unreachable:
                            raise unreachable from exc
                    last_error = exc
            if raw is not None:
                # The answer is in, and its slot went to a waiting request: let that one go on the
                # wire first (one turn of the loop), then parse this answer and let the caller
                # handle it. Otherwise all of that runs before the next request is even built.
                await asyncio.sleep(0)
                return raw.parse()
            if attempt == self._policy.max_retries:
                break
            delay = self._policy.backoff(attempt) if wait is None else wait
            await asyncio.sleep(min(delay, self._policy.max_delay))
        attempts = self._policy.max_retries + 1
        if isinstance(last_error, openai.RateLimitError):
            raise ProviderRateLimited(
                f"{label}: still rate limited after {attempts} attempts: {last_error.message}",
                retry_after=retry_after_seconds(last_error),
            ) from last_error
        detail = last_error.message if isinstance(last_error, openai.APIError) else repr(last_error)
        raise ProviderUnavailable(f"{label}: failed after {attempts} attempts: {detail}") from last_error


def load_tokenizers() -> list[str]:
    """Load now the tokenizers the configured providers count and cut with; returns their names.

    Loading one takes a second or more of CPU (o200k_base, the GPT-4o/4.1 family's). A worker
    does it once, before it forks its pool processes, so that they inherit it instead of each
    paying for it in its first batch. The offline template summarizer cuts with cl100k_base.
    """
    models = [""]  # the default encoding (the template summarizer's)
    if conf.summarizer_name() == "openai":
        models.append(conf.chat_model())
    if conf.embedder_name() == "openai":
        models.append(conf.embedding_model())
    names = list(dict.fromkeys(encoding_name(model) for model in models))
    for name in names:
        get_encoding(name)
    return names


def summary_prompt_tokens(system_prompt: str, description: str, model: str) -> int:
    """The prompt tokens of one summary request at most: the system prompt, the description as it is
    sent (cut to ENTITY_VECTORS_MAX_SUMMARY_INPUT_TOKENS) and the chat format's overhead."""
    text = truncate_to_tokens(description, conf.max_summary_input_tokens(), model)
    return count_tokens(system_prompt, model) + count_tokens(text, model) + 2 * MESSAGE_OVERHEAD


def chat_request(
    model: str, system_prompt: str, text: str, max_input_tokens: int
) -> tuple[dict[str, Any], int]:
    """A summary request's body (the text cut to `max_input_tokens`), and its worst-case tokens."""
    content = truncate_to_tokens(text, max_input_tokens, model)
    tokens = count_tokens(system_prompt, model) + count_tokens(content, model) + MAX_SUMMARY_TOKENS
    body = {
        "model": model,
        "messages": [{"role": "system", "content": system_prompt}, {"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": MAX_SUMMARY_TOKENS,
    }
    return body, tokens


def summary_of(response: Any, where: str, model: str = "") -> str:
    """The summary in a chat completion (cleaned, cut to MAX_SUMMARY_TOKENS); a clear error if it
    has none."""
    if not response.choices:
        raise ProviderRejected(f"chat completion at {where}: the response has no choices")
    summary = clean_text(cut_reply(response.choices[0].message.content or "", MAX_SUMMARY_TOKENS, model))
    summary = summary.strip()
    if not summary:
        raise ProviderRejected(f"chat completion at {where}: the model returned an empty summary")
    return summary


def usage_figure(value: object, name: str, where: str) -> int:
    """A token count the provider reported, checked like the rest of its answer: a whole number from
    0 to MAX_REPORTED_TOKENS, else ProviderProtocolError naming it (the provider's fault)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPORTED_TOKENS:
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ProviderProtocolError(
            f"{where} reported {name}={shown}, which no answer can have (a whole number from 0 to "
            f"{MAX_REPORTED_TOKENS}); nothing of that answer is used"
        )
    return value


def embedding_request(
    model: str, dimensions: int, texts: Sequence[str], max_input_tokens: int
) -> tuple[dict[str, Any], int]:
    """An embeddings request's body (each text cut to `max_input_tokens`), and its tokens."""
    inputs = [truncate_to_tokens(text, max_input_tokens, model) or " " for text in texts]
    body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "base64"}
    # Only the text-embedding-3 family takes `dimensions`; other OpenAI-compatible servers
    # may reject it, so for them the returned size is checked against the setting instead.
    if model.startswith("text-embedding-3"):
        body["dimensions"] = dimensions
    return body, sum(count_tokens(text, model) for text in inputs)


def decode_embeddings(
    items: Sequence[Any], expected: int, dimensions: int, model: str, where: str
) -> Embeddings:
    """Vectors placed by their `index`, checked: a bad index fails the whole answer, a bad vector its input."""
    indexes = [item.index for item in items]
    if len(items) != expected or sorted(indexes) != list(range(expected)):
        raise ProviderRejected(
            f"embeddings: {where} answered {len(items)} vectors with indexes "
            f"{_preview(indexes)} for {expected} inputs; nothing of that answer is used"
        )
    vectors = np.zeros((expected, dimensions), dtype=np.float32)
    failures: dict[int, str] = {}
    for item in items:
        vector = _as_float32(item.embedding)
        if vector.shape != (dimensions,):
            failures[item.index] = (
                f"{where} returned a {vector.size}-dimensional vector for model "
                f"{model!r}, but ENTITY_VECTORS_EMBEDDING_DIMENSIONS is {dimensions}"
            )
        elif not np.isfinite(vector).all():
            failures[item.index] = f"{where} returned a vector with values that are not numbers"
        elif not vector.any():
            failures[item.index] = f"{where} returned an all-zero vector"
        else:
            vectors[item.index] = vector
    return Embeddings(vectors=vectors, failures=failures)


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
        body, tokens = chat_request(self._model, system_prompt, text, self._max_input_tokens)
        # The body goes as `extra_body`, which the SDK merges into the JSON as it is (an empty
        # `messages` stands in for the required argument): as typed arguments, the messages would
        # first walk through the SDK's TypedDict transform, a quarter of the client's CPU per
        # request (2.2 -> 1.7 ms measured here). The JSON sent is the same.
        extra = {name: value for name, value in body.items() if name != "model"}
        response = await self._requester.call(
            "chat completion",
            lambda: self._client.chat.completions.with_raw_response.create(
                model=self._model, messages=[], extra_body=extra
            ),
            model=self._model,
            tokens=tokens,
        )
        where = f"the chat server at {self._client.base_url}"
        if response.usage is not None:
            self._usage.charge_chat(
                self._model,
                usage_figure(response.usage.prompt_tokens, "prompt_tokens", where),
                usage_figure(response.usage.completion_tokens, "completion_tokens", where),
            )
        return summary_of(response, str(self._client.base_url), self._model)


class OpenAIEmbedder:
    """Vectors from an embeddings model: one request per call, bounded by the limiter.

    Vectors are asked for as base64 and decoded straight into a float32 matrix. The answer is
    checked before any of it is used: items are placed by their `index` (never by position), a
    missing, repeated or out-of-range index fails the whole request, and a vector of the wrong
    size or with a non-number fails only its own input.
    """

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

    def _where(self) -> str:
        return f"the embeddings server at {self._client.base_url}"

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """Embed the texts in one request; the rows follow the input order."""
        body, tokens = embedding_request(self._model, self._dimensions, texts, self._max_input_tokens)
        response = await self._requester.call(
            "embeddings",
            lambda: self._client.embeddings.with_raw_response.create(**body),
            model=self._model,
            tokens=tokens,
        )
        if response.usage is not None:
            self._usage.charge_embedding(
                self._model, usage_figure(response.usage.prompt_tokens, "prompt_tokens", self._where())
            )
        return decode_embeddings(response.data, len(texts), self._dimensions, self._model, self._where())


def _as_float32(embedding: Any) -> np.ndarray[Any, Any]:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32, copy=False)
    return np.asarray(embedding, dtype=np.float32)


def _preview(values: Sequence[Any]) -> str:
    shown = ", ".join(str(value) for value in values[:8])
    return f"[{shown}{', ...' if len(values) > 8 else ''}]"
