"""The provider protocols, the usage counter, and the summarization context of a batch."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class ProviderUsage:
    """Requests sent, tokens used and what they cost, accumulated over one batch."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    embedding_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def charge_chat(self, model: str, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> None:
        """Count one chat completion's tokens and their cost."""
        from entity_vectors.providers.pricing import cost

        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += cost(model, prompt_tokens, completion_tokens, batch)

    def charge_embedding(self, model: str, tokens: int, batch: bool = False) -> None:
        """Count one embedding request's tokens and their cost."""
        from entity_vectors.providers.pricing import cost

        self.embedding_tokens += tokens
        self.cost_usd += cost(model, tokens, 0, batch)

    def as_counts(self) -> dict[str, int]:
        """The SyncRun counter names and values."""
        return {
            "provider_requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "embedding_tokens": self.embedding_tokens,
        }


@runtime_checkable
class Limiter(Protocol):
    """Bounds the provider requests in flight; `slot()` is held for one HTTP request."""

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Wait for a free slot and hold it for the duration of the block."""
        ...


@runtime_checkable
class Summarizer(Protocol):
    """Turns entity descriptions into short summaries, one result per input, same order."""

    @property
    def identity(self) -> str:
        """What wrote the summaries, e.g. `openai:gpt-4.1-mini` or `template`."""
        ...

    async def summarize(self, texts: Sequence[str], system_prompt: str) -> list[str | BaseException]:
        """Summarize each text; a failure is returned in its slot, never raised."""
        ...


@dataclass
class Embeddings:
    """One embedding request's answer: a float32 matrix, one row per input, in input order.

    `failures` maps the position of an input whose vector came back unusable (wrong size, not a
    number) to the reason; its row is zeros and must not be stored.
    """

    vectors: np.ndarray[Any, Any]
    failures: dict[int, str] = field(default_factory=dict)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors; one call is one provider request."""

    @property
    def identity(self) -> str:
        """What made the vectors, e.g. `openai:text-embedding-3-small` or `hashing`."""
        ...

    @property
    def dimensions(self) -> int:
        """The length of every vector this embedder returns."""
        ...

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """Embed the texts in one request; raises if the whole request failed."""
        ...


@dataclass
class SummarizationContext:
    """What a config's `batch_summarize` may use while a batch runs.

    `descriptions` maps an entity's primary key to its description, rendered before the async
    part starts so that a config's `describe()` may touch the database.
    """

    summarizer: Summarizer
    descriptions: Mapping[object, str] = field(default_factory=dict)


_current: contextvars.ContextVar[SummarizationContext | None] = contextvars.ContextVar(
    "entity_vectors_summarization", default=None
)


@contextlib.contextmanager
def summarization_context(context: SummarizationContext) -> Iterator[SummarizationContext]:
    """Make `context` the active one for the block (and the asyncio tasks it starts)."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current_summarization() -> SummarizationContext:
    """The active summarization context; only set while a batch is being summarized."""
    context = _current.get()
    if context is None:
        raise RuntimeError(
            "no summarization context is active: batch_summarize runs inside a sync run "
            "(entity_vectors.workflow.process_batch), not on its own"
        )
    return context


async def summarize_texts(texts: Sequence[str], system_prompt: str) -> list[str | BaseException]:
    """Summarize texts with the run's summarizer; for configs that build their own inputs."""
    return await current_summarization().summarizer.summarize(texts, system_prompt)


class NoLimit:
    """A limiter that never waits (offline providers send no requests)."""

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Enter at once."""
        yield
