"""Summarizers and embedders, chosen by settings and built with their clients injected."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from entity_vectors import conf
from entity_vectors.exceptions import ConfigurationError
from entity_vectors.providers.base import (
    Embedder,
    Embeddings,
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
from entity_vectors.providers.openai import OpenAIEmbedder, OpenAIRequester, OpenAISummarizer, RetryPolicy
from entity_vectors.providers.reachability import ConnectionBreaker
from entity_vectors.providers.specs import (
    EmbedderSpec,
    configured_embedder_spec,
    configured_summarizer_identity,
    openai_identity,
)
from entity_vectors.runtime import aio
from entity_vectors.runtime.rate_budget import NoBudget, RateBudget

__all__ = [
    "ConnectionBreaker",
    "Embedder",
    "EmbedderSpec",
    "Embeddings",
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
    "check_provider_settings",
    "configured_embedder_spec",
    "configured_summarizer_identity",
    "current_summarization",
    "open_providers",
    "openai_identity",
    "summarization_context",
    "summarize_texts",
]


@dataclass(frozen=True)
class Providers:
    """The summarizer and the embedders of one batch (or one search), sharing one HTTP client."""

    summarizer: Summarizer
    embedders: dict[EmbedderSpec, Embedder]

    @property
    def embedder(self) -> Embedder:
        """The first (usually the only) embedder."""
        return next(iter(self.embedders.values()))


def check_provider_settings(specs: Sequence[EmbedderSpec] = ()) -> None:
    """Raise ConfigurationError if the chosen providers cannot be built."""
    names = {conf.summarizer_name(), *(spec.name for spec in specs or [configured_embedder_spec()])}
    if "openai" in names and not conf.openai_api_key():
        raise ConfigurationError(
            "the openai provider is selected (ENTITY_VECTORS_SUMMARIZER/ENTITY_VECTORS_EMBEDDER, or an "
            "embedding version written by it) but OPENAI_API_KEY is not set; set it (any value for a "
            "local OpenAI-compatible server) or choose the template summarizer and hashing embedder"
        )
    unknown = sorted({spec.name for spec in specs} - set(conf.EMBEDDERS))
    if unknown:
        raise ConfigurationError(f"unknown embedder {unknown[0]!r}; known: {', '.join(conf.EMBEDDERS)}")


def _build_embedder(
    spec: EmbedderSpec, client: object, requester: OpenAIRequester, usage: ProviderUsage
) -> Embedder:
    if spec.name == "openai":
        from openai import AsyncOpenAI

        assert isinstance(client, AsyncOpenAI)
        return OpenAIEmbedder(
            client, spec.model, spec.dimensions, requester, usage, conf.max_embedding_input_tokens()
        )
    if spec.name == "wordllama":
        from entity_vectors.providers.semantic import WordLlamaEmbedder

        return WordLlamaEmbedder(spec.dimensions)
    return HashingEmbedder(spec.dimensions)


def load_tls_context() -> bool:
    """Make the shared TLS context now if the OpenAI provider is configured (a worker does it
    before it forks, so that its pool processes inherit it); True if one was made."""
    if conf.summarizer_name() != "openai" and conf.embedder_name() != "openai":
        return False
    return _tls_context() is not None


@functools.cache
def _tls_context() -> ssl.SSLContext | None:
    """The TLS context the SDK's HTTP client would make for itself (system CA certificates,
    SSL_CERT_FILE / SSL_CERT_DIR honoured), made once per process and shared by every client;
    None if the SDK's transport is not the one this knows (it then makes its own, as before)."""
    try:
        from httpx2 import create_ssl_context
    except ImportError:
        return None
    return create_ssl_context()


def _http_client() -> Any:
    """The SDK's own default HTTP client on the shared TLS context, or None for the SDK's default."""
    context = _tls_context()
    if context is None:
        return None
    from openai import DefaultAsyncHttpxClient

    return DefaultAsyncHttpxClient(verify=context)


@asynccontextmanager
async def open_providers(
    limiter: Limiter | None = None,
    usage: ProviderUsage | None = None,
    embedders: Sequence[EmbedderSpec] = (),
    budget: RateBudget | None = None,
    retries: RetryPolicy | None = None,
    breaker: ConnectionBreaker | None = None,
) -> AsyncIterator[Providers]:
    """Build the providers for one event loop; their one HTTP client is kept for the next call on
    the process's loop (`runtime.aio`), or else closed on exit.

    `embedders` are the specs to build (the configured one if empty): a run writing several
    embedding versions gets one embedder per version, all on the same client and limiter.
    `breaker` (one per run): connection failures in a row counted across every call that shares
    it; without one, across this call's requests only.
    """
    specs = list(dict.fromkeys(embedders)) or [configured_embedder_spec()]
    check_provider_settings(specs)
    limiter = limiter or NoLimit()
    usage = usage if usage is not None else ProviderUsage()
    client: Any = None
    async with AsyncExitStack() as stack:
        if conf.summarizer_name() == "openai" or any(spec.name == "openai" for spec in specs):
            client = await stack.enter_async_context(_openai_client())
        yield _build(client, limiter, usage, specs, budget, retries, breaker)


def _build(
    client: Any,
    limiter: Limiter,
    usage: ProviderUsage,
    specs: Sequence[EmbedderSpec],
    budget: RateBudget | None,
    retries: RetryPolicy | None = None,
    breaker: ConnectionBreaker | None = None,
) -> Providers:
    """The summarizer and the embedders of `specs`, on `client` (None: offline providers)."""
    requester = OpenAIRequester(
        limiter,
        usage,
        retries or RetryPolicy(max_retries=conf.provider_max_retries(), max_delay=conf.provider_max_backoff()),
        budget=budget or NoBudget(),
        where=str(client.base_url) if client is not None else "the provider",
        breaker=breaker,
    )
    summarizer: Summarizer
    if conf.summarizer_name() == "openai" and client is not None:
        summarizer = OpenAISummarizer(
            client, conf.chat_model(), requester, usage, conf.max_summary_input_tokens()
        )
    else:
        summarizer = TemplateSummarizer(conf.max_summary_input_tokens())
    built = {spec: _build_embedder(spec, client, requester, usage) for spec in specs}
    return Providers(summarizer=summarizer, embedders=built)


def _openai_client() -> AbstractAsyncContextManager[Any]:
    """The OpenAI client: kept with its open connections for the next call on the process's
    loop (`runtime.aio`), or made for this call and closed after it."""
    from openai import AsyncOpenAI

    api_key = conf.openai_api_key()
    # Explicit, so that an empty OPENAI_BASE_URL in the environment means the default.
    base_url = conf.openai_base_url() or "https://api.openai.com/v1"
    timeout = conf.provider_timeout()
    # A host that takes no connection is told apart within seconds, not after a request's timeout.
    connect = conf.provider_connect_timeout()

    def make() -> AsyncOpenAI:
        from openai import Timeout

        return AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=Timeout(timeout, connect=connect),
            max_retries=0,
            # The SDK's own HTTP client, on a TLS context made once per process: making one
            # (reading the CA certificates) is ~40 ms of CPU.
            http_client=_http_client(),
        )

    return aio.client(("openai", api_key, base_url, timeout, connect), make)
