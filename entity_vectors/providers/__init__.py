"""Summarizers and embedders, chosen by settings and built with their clients injected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError
from entity_vectors.providers.base import (
    Embedder,
    Limiter,
    NoLimit,
    ProviderUsage,
    SummarizationContext,
    Summarizer,
    current_summarization,
    summarization_context,
    summarize_texts,
)
from entity_vectors.providers.offline import HashingEmbedder, TemplateSummarizer
from entity_vectors.providers.openai import (
    OpenAIEmbedder,
    OpenAIRequester,
    OpenAISummarizer,
    RetryPolicy,
    openai_identity,
)

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "Limiter",
    "NoLimit",
    "OpenAIEmbedder",
    "OpenAISummarizer",
    "ProviderUsage",
    "Providers",
    "SummarizationContext",
    "Summarizer",
    "TemplateSummarizer",
    "configured_embedder_identity",
    "configured_summarizer_identity",
    "current_summarization",
    "open_providers",
    "summarization_context",
    "summarize_texts",
]


@dataclass(frozen=True)
class Providers:
    """The summarizer and embedder of one batch (or one search)."""

    summarizer: Summarizer
    embedder: Embedder


def configured_summarizer_identity() -> str:
    """The identity the configured summarizer records, without building it."""
    return openai_identity(conf.chat_model()) if conf.summarizer_name() == "openai" else "template"


def configured_embedder_identity() -> str:
    """The identity the configured embedder records, without building it."""
    return openai_identity(conf.embedding_model()) if conf.embedder_name() == "openai" else "hashing"


def check_provider_settings() -> None:
    """Raise ConfigurationError if the chosen providers cannot be built."""
    needs_openai = conf.summarizer_name() == "openai" or conf.embedder_name() == "openai"
    if needs_openai and not conf.openai_api_key():
        raise ConfigurationError(
            "the openai provider is selected (ENTITY_VECTORS_SUMMARIZER/ENTITY_VECTORS_EMBEDDER) but "
            "OPENAI_API_KEY is not set; set it (any value for a local OpenAI-compatible server) or "
            "choose the template summarizer and hashing embedder"
        )
    conf.embedding_dimensions()


@asynccontextmanager
async def open_providers(
    limiter: Limiter | None = None, usage: ProviderUsage | None = None
) -> AsyncIterator[Providers]:
    """Build the configured providers for one event loop; their HTTP client is closed on exit."""
    check_provider_settings()
    limiter = limiter or NoLimit()
    usage = usage if usage is not None else ProviderUsage()
    client = None
    summarizer: Summarizer
    embedder: Embedder
    if conf.summarizer_name() == "openai" or conf.embedder_name() == "openai":
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            api_key=conf.openai_api_key(),
            # Explicit, so that an empty OPENAI_BASE_URL in the environment means the default.
            base_url=conf.openai_base_url() or "https://api.openai.com/v1",
            timeout=conf.provider_timeout(),
            max_retries=0,
        )
    requester = OpenAIRequester(
        limiter,
        usage,
        RetryPolicy(max_retries=conf.provider_max_retries(), max_delay=conf.provider_max_backoff()),
    )
    if conf.summarizer_name() == "openai" and client is not None:
        summarizer = OpenAISummarizer(
            client, conf.chat_model(), requester, usage, conf.max_summary_input_tokens()
        )
    else:
        summarizer = TemplateSummarizer(conf.max_summary_input_tokens())
    if conf.embedder_name() == "openai" and client is not None:
        embedder = OpenAIEmbedder(
            client,
            conf.embedding_model(),
            conf.embedding_dimensions(),
            requester,
            usage,
            conf.max_embedding_input_tokens(),
        )
    else:
        embedder = HashingEmbedder(conf.embedding_dimensions())
    try:
        yield Providers(summarizer=summarizer, embedder=embedder)
    finally:
        if client is not None:
            await client.close()
