"""Which summarizer and embedder, their models, limits and budgets; the search mode."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from django.conf import settings

from entity_vectors.conf.readers import (
    _choice,
    _float,
    _int,
    _raw,
    _str,
    parse_dollars,
    parse_int,
    parse_json_object,
    parse_key,
    parse_text,
    problem,
)
from entity_vectors.conf.services import openai_api_key
from entity_vectors.exceptions import ConfigurationError
from entity_vectors.runtime.rate_budget import Limits

DEFAULT_CHAT_MODEL = "gpt-4.1-mini"


DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"


DEFAULT_EMBEDDING_DIMENSIONS = 1536
# Wider than any embedding model's vectors (text-embedding-3-large: 3072).
MAX_EMBEDDING_DIMENSIONS = 16_384
# ClickHouse keeps an embedding version as UInt32.
MAX_EMBEDDING_VERSION = 2**32 - 1
# Model names: `gpt-4.1-mini`, `ft:gpt-4o:org:x:id`, `Qwen/Qwen3-Embedding-0.6B`, `llama3.1:8b`.
MAX_MODEL_NAME = 200
# Above every model's context window (gpt-4.1: about 1M tokens).
MAX_INPUT_TOKENS = 2_000_000


SUMMARIZERS = ("openai", "template")


EMBEDDERS = ("openai", "hashing", "wordllama")


def summarizer_name() -> str:
    """`openai` or `template`; `openai` by default when a key is set."""
    default = "openai" if openai_api_key() else "template"
    return _choice("ENTITY_VECTORS_SUMMARIZER", default, SUMMARIZERS, "is not a known summarizer")


def semantic_installed() -> bool:
    """Whether the `semantic` extra (wordllama, an offline model inside its wheel) is installed."""
    import importlib.util

    return importlib.util.find_spec("wordllama") is not None


def embedder_name() -> str:
    """`openai`, `wordllama` (offline, semantic) or `hashing` (offline, lexical): the embedder of a
    *new* embedding version (an existing one keeps the embedder it recorded; see
    `entity_vectors.core.embedding_versions`).

    Default: `openai` when a key is set; else `wordllama` if the `semantic` extra is installed (the
    search evaluation shows it well ahead of `hashing`), else `hashing`.
    """
    default = "openai" if openai_api_key() else ("wordllama" if semantic_installed() else "hashing")
    return _choice("ENTITY_VECTORS_EMBEDDER", default, EMBEDDERS, "is not a known embedder")


def chat_model() -> str:
    """The chat model that writes summaries."""
    return _str("ENTITY_VECTORS_CHAT_MODEL", DEFAULT_CHAT_MODEL, MAX_MODEL_NAME, spaces=False)


def embedding_model() -> str:
    """The embedding model."""
    return _str("ENTITY_VECTORS_EMBEDDING_MODEL", DEFAULT_EMBEDDING_MODEL, MAX_MODEL_NAME, spaces=False)


def embedding_dimensions() -> int:
    """The vector size asked of the embedder (default 1536; 256 for wordllama, its largest)."""
    default = 256 if embedder_name() == "wordllama" else DEFAULT_EMBEDDING_DIMENSIONS
    return _int("ENTITY_VECTORS_EMBEDDING_DIMENSIONS", default, minimum=1, maximum=MAX_EMBEDDING_DIMENSIONS)


def embedding_version() -> int:
    """The current embedding version: what runs write and searches read by default."""
    return _int("ENTITY_VECTORS_EMBEDDING_VERSION", 1, minimum=1, maximum=MAX_EMBEDDING_VERSION)


def provider_timeout() -> float:
    """Seconds one provider request may take."""
    return _float("ENTITY_VECTORS_PROVIDER_TIMEOUT", 60.0, minimum=0.01, maximum=3600)


def provider_connect_timeout() -> float:
    """Seconds to open a connection to the provider (at most ENTITY_VECTORS_PROVIDER_TIMEOUT): a host
    that does not answer is told from a slow answer well before a request's whole timeout."""
    return min(
        _float("ENTITY_VECTORS_PROVIDER_CONNECT_TIMEOUT", 5.0, minimum=0.01, maximum=3600), provider_timeout()
    )


def provider_unreachable_after() -> int:
    """Connection failures in a row (refused, no such host, connect timeout) after which a run stops
    sending to the provider and stops, its work left pending. 429 and 5xx answers never count."""
    return _int("ENTITY_VECTORS_PROVIDER_UNREACHABLE_AFTER", 3, minimum=1, maximum=100)


LOCAL_SUMMARIZERS = ("template",)
LOCAL_EMBEDDERS = ("hashing", "wordllama")


def local_providers() -> bool:
    """Whether the configured summarizer and embedder both run in this process (template, hashing,
    wordllama): nothing is sent anywhere, so there is no provider to pace."""
    return summarizer_name() in LOCAL_SUMMARIZERS and embedder_name() in LOCAL_EMBEDDERS


def provider_max_retries() -> int:
    """Retries of one provider request on 429, 5xx and timeouts."""
    return _int("ENTITY_VECTORS_PROVIDER_MAX_RETRIES", 4, minimum=0, maximum=100)


def provider_max_backoff() -> float:
    """Longest wait between two attempts of one provider request, Retry-After included."""
    return _float("ENTITY_VECTORS_PROVIDER_MAX_BACKOFF", 60.0, minimum=0.0, maximum=3600)


def max_summary_input_tokens() -> int:
    """Estimated tokens of an entity description sent to the chat model; longer is truncated."""
    return _int("ENTITY_VECTORS_MAX_SUMMARY_INPUT_TOKENS", 6000, minimum=16, maximum=MAX_INPUT_TOKENS)


def max_embedding_input_tokens() -> int:
    """Estimated tokens of one text sent to the embedding model (its limit is 8191)."""
    return _int("ENTITY_VECTORS_MAX_EMBEDDING_INPUT_TOKENS", 8000, minimum=16, maximum=MAX_INPUT_TOKENS)


def rate_limits() -> dict[str, Limits]:
    """Requests and tokens per minute per model (`{"gpt-4.1-mini": {"rpm": 500, "tpm": 200000}}`).

    A model not listed is limited by what the provider's `x-ratelimit-limit-*` headers say.
    """
    value = _raw("ENTITY_VECTORS_RATE_LIMITS")
    if value is None:
        return {}
    shape = 'model names to {"rpm": N, "tpm": N} ({"gpt-4.1-mini": {"rpm": 500, "tpm": 200000}})'
    entries = parse_json_object("ENTITY_VECTORS_RATE_LIMITS", value, shape)
    limits: dict[str, Limits] = {}
    for model, entry in entries.items():
        name = parse_key("ENTITY_VECTORS_RATE_LIMITS", model, MAX_MODEL_NAME)
        where = f"ENTITY_VECTORS_RATE_LIMITS[{name!r}]"
        if not isinstance(entry, dict) or not set(entry) <= {"rpm", "tpm"}:
            raise problem(where, entry, "must be an object with rpm and/or tpm")
        numbers = {
            key: parse_int(f"{where}[{key!r}]", entry.get(key, 0), 0, MAX_RATE) for key in ("rpm", "tpm")
        }
        limits[name] = Limits(rpm=numbers["rpm"], tpm=numbers["tpm"])
    return limits


# Requests or tokens per minute: far above any provider's tier.
MAX_RATE = 10**12


SEARCH_MODES = ("vector", "text", "hybrid")


def search_mode(recorded: str = "") -> str:
    """The search mode used when a caller gives none: ENTITY_VECTORS_SEARCH_MODE if set, else the
    one `evaluate_search --choose-fusion` recorded for the version searched (`recorded`), else
    `hybrid` (vector and text fused), which the labelled evaluation shows at least as good as
    either alone for the offline embedders (wordllama, hashing)."""
    default = recorded if recorded in SEARCH_MODES else "hybrid"
    return _choice("ENTITY_VECTORS_SEARCH_MODE", default, SEARCH_MODES, "is not understood")


def eval_queries() -> Path | None:
    """ENTITY_VECTORS_EVAL_QUERIES, the labelled search queries' path, if set."""
    value = _raw("ENTITY_VECTORS_EVAL_QUERIES")
    return (
        None if value is None else Path(parse_text("ENTITY_VECTORS_EVAL_QUERIES", value, 4096)).expanduser()
    )


def eval_queries_path() -> Path:
    """The labelled search queries `manage.py evaluate_search` scores (ENTITY_VECTORS_EVAL_QUERIES).

    By default `app/search_eval.json` under the host project's BASE_DIR.
    """
    configured = eval_queries()
    if configured is not None:
        return configured
    base_dir = getattr(settings, "BASE_DIR", None) if settings.configured else None
    if base_dir is None:
        raise ConfigurationError(
            "ENTITY_VECTORS_EVAL_QUERIES is not set and the project has no BASE_DIR setting to find "
            "app/search_eval.json under; set ENTITY_VECTORS_EVAL_QUERIES to the labelled queries' path"
        )
    return Path(base_dir) / "app" / "search_eval.json"


# A month's provider budget: a billion dollars is beyond any real one.
MAX_BUDGET_USD = Decimal(10**9)


def monthly_budget_usd() -> Decimal | None:
    """Dollars a budget owner (an organization) may spend on providers per calendar month; None: no cap."""
    value = _raw("ENTITY_VECTORS_MONTHLY_BUDGET_USD")
    return (
        None if value is None else parse_dollars("ENTITY_VECTORS_MONTHLY_BUDGET_USD", value, MAX_BUDGET_USD)
    )


def budgets() -> dict[str, Decimal]:
    """Per-owner monthly budgets (`{"42": 50}`: organization 42 may spend $50), over the common one."""
    value = _raw("ENTITY_VECTORS_BUDGETS")
    if value is None:
        return {}
    entries = parse_json_object(
        "ENTITY_VECTORS_BUDGETS", value, 'owner ids to dollars per month ({"42": 50})'
    )
    parsed: dict[str, Decimal] = {}
    for owner, amount in entries.items():
        key = parse_key("ENTITY_VECTORS_BUDGETS", owner)
        parsed[key] = parse_dollars(f"ENTITY_VECTORS_BUDGETS[{key!r}]", amount, MAX_BUDGET_USD)
    return parsed


# Dollars per million tokens: far above any model's list price.
MAX_PRICE_USD = Decimal(10**6)


def prices() -> dict[str, tuple[Decimal, Decimal]]:
    """ENTITY_VECTORS_PRICES: (input, output) dollars per million tokens of each model listed."""
    value = _raw("ENTITY_VECTORS_PRICES")
    if value is None:
        return {}
    shape = 'model names to {"input": dollars, "output": dollars} per million tokens'
    entries = parse_json_object("ENTITY_VECTORS_PRICES", value, shape)
    parsed: dict[str, tuple[Decimal, Decimal]] = {}
    for model, entry in entries.items():
        name = parse_key("ENTITY_VECTORS_PRICES", model, MAX_MODEL_NAME)
        where = f"ENTITY_VECTORS_PRICES[{name!r}]"
        if not isinstance(entry, dict) or not set(entry) <= {"input", "output"} or "input" not in entry:
            raise problem(where, entry, "must be an object with input (and output) prices")
        parsed[name] = (
            parse_dollars(f"{where}['input']", entry["input"], MAX_PRICE_USD),
            parse_dollars(f"{where}['output']", entry.get("output", 0), MAX_PRICE_USD),
        )
    return parsed


def batch_api_threshold() -> int:
    """A run that selects at least this many entities sends its OpenAI work through the Batch API
    (half price, results within 24 hours); 0 turns the automatic switch off."""
    return _int("ENTITY_VECTORS_BATCH_API_THRESHOLD", 20_000, minimum=0, maximum=10**9)


# OpenAI takes at most 50,000 requests (and 200 MB) per batch file.
MAX_BATCH_API_REQUESTS = 50_000


def batch_api_max_requests() -> int:
    """Requests per provider batch (OpenAI takes at most 50,000 and 200 MB per batch file)."""
    return _int(
        "ENTITY_VECTORS_BATCH_API_MAX_REQUESTS",
        MAX_BATCH_API_REQUESTS,
        minimum=1,
        maximum=MAX_BATCH_API_REQUESTS,
    )


def batch_api_poll_seconds() -> int:
    """How often beat polls Batch API jobs."""
    return _int("ENTITY_VECTORS_BATCH_API_POLL_SECONDS", 60, minimum=1, maximum=24 * 3600)
