"""Which summarizer and embedder, their models, limits and budgets; the search mode."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from django.conf import settings

from entity_vectors.conf.readers import _float, _int, _raw, _str
from entity_vectors.conf.services import openai_api_key
from entity_vectors.exceptions import ConfigurationError
from entity_vectors.ratelimit import Limits

DEFAULT_CHAT_MODEL = "gpt-4.1-mini"


DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"


DEFAULT_EMBEDDING_DIMENSIONS = 1536


SUMMARIZERS = ("openai", "template")


EMBEDDERS = ("openai", "hashing", "wordllama")


def summarizer_name() -> str:
    """`openai` or `template`; `openai` by default when a key is set."""
    default = "openai" if openai_api_key() else "template"
    name = _str("ENTITY_VECTORS_SUMMARIZER", default).strip().lower()
    if name not in SUMMARIZERS:
        raise ConfigurationError(
            f"ENTITY_VECTORS_SUMMARIZER={name!r} is not a known summarizer; choose one of {', '.join(SUMMARIZERS)}"
        )
    return name


def semantic_installed() -> bool:
    """Whether the `semantic` extra (wordllama, an offline model inside its wheel) is installed."""
    import importlib.util

    return importlib.util.find_spec("wordllama") is not None


def embedder_name() -> str:
    """`openai`, `wordllama` (offline, semantic) or `hashing` (offline, lexical).

    Default: `openai` when a key is set; else `wordllama` if the `semantic` extra is installed (the
    search evaluation shows it well ahead of `hashing`), else `hashing`.
    """
    default = "openai" if openai_api_key() else ("wordllama" if semantic_installed() else "hashing")
    name = _str("ENTITY_VECTORS_EMBEDDER", default).strip().lower()
    if name not in EMBEDDERS:
        raise ConfigurationError(
            f"ENTITY_VECTORS_EMBEDDER={name!r} is not a known embedder; choose one of {', '.join(EMBEDDERS)}"
        )
    return name


def chat_model() -> str:
    """The chat model that writes summaries."""
    return _str("ENTITY_VECTORS_CHAT_MODEL", DEFAULT_CHAT_MODEL)


def embedding_model() -> str:
    """The embedding model."""
    return _str("ENTITY_VECTORS_EMBEDDING_MODEL", DEFAULT_EMBEDDING_MODEL)


def embedding_dimensions() -> int:
    """The vector size asked of the embedder (default 1536; 256 for wordllama, its largest)."""
    default = 256 if embedder_name() == "wordllama" else DEFAULT_EMBEDDING_DIMENSIONS
    return _int("ENTITY_VECTORS_EMBEDDING_DIMENSIONS", default, minimum=1)


def embedding_version() -> int:
    """The current embedding version: what runs write and searches read by default."""
    return _int("ENTITY_VECTORS_EMBEDDING_VERSION", 1, minimum=1)


def provider_timeout() -> float:
    """Seconds one provider request may take."""
    return _float("ENTITY_VECTORS_PROVIDER_TIMEOUT", 60.0, minimum=0.01)


def provider_max_retries() -> int:
    """Retries of one provider request on 429, 5xx and timeouts."""
    return _int("ENTITY_VECTORS_PROVIDER_MAX_RETRIES", 4)


def provider_max_backoff() -> float:
    """Longest wait between two attempts of one provider request, Retry-After included."""
    return _float("ENTITY_VECTORS_PROVIDER_MAX_BACKOFF", 60.0, minimum=0.0)


def max_summary_input_tokens() -> int:
    """Estimated tokens of an entity description sent to the chat model; longer is truncated."""
    return _int("ENTITY_VECTORS_MAX_SUMMARY_INPUT_TOKENS", 6000, minimum=16)


def max_embedding_input_tokens() -> int:
    """Estimated tokens of one text sent to the embedding model (its limit is 8191)."""
    return _int("ENTITY_VECTORS_MAX_EMBEDDING_INPUT_TOKENS", 8000, minimum=16)


def rate_limits() -> dict[str, Limits]:
    """Requests and tokens per minute per model (`{"gpt-4.1-mini": {"rpm": 500, "tpm": 200000}}`).

    A model not listed is limited by what the provider's `x-ratelimit-limit-*` headers say.
    """
    value = _raw("ENTITY_VECTORS_RATE_LIMITS")
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"ENTITY_VECTORS_RATE_LIMITS is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigurationError("ENTITY_VECTORS_RATE_LIMITS must map model names to {rpm, tpm}")
    limits: dict[str, Limits] = {}
    for model, entry in value.items():
        if not isinstance(entry, dict) or not set(entry) <= {"rpm", "tpm"}:
            raise ConfigurationError(
                f"ENTITY_VECTORS_RATE_LIMITS[{model!r}]={entry!r} must be an object with rpm and/or tpm"
            )
        numbers = {}
        for name in ("rpm", "tpm"):
            number = entry.get(name, 0)
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise ConfigurationError(
                    f"ENTITY_VECTORS_RATE_LIMITS[{model!r}][{name!r}]={number!r} must be a whole number >= 0"
                )
            numbers[name] = number
        limits[str(model)] = Limits(rpm=numbers["rpm"], tpm=numbers["tpm"])
    return limits


SEARCH_MODES = ("vector", "text", "hybrid")


def search_mode(embedder: str | None = None) -> str:
    """The search mode used when a caller gives none (ENTITY_VECTORS_SEARCH_MODE).

    By default the one the labelled evaluation shows best for the embedder that wrote the
    vectors: `vector` for wordllama, `hybrid` (vector and text fused) for the others.
    """
    default = "vector" if (embedder or "") == "wordllama" else "hybrid"
    mode = _str("ENTITY_VECTORS_SEARCH_MODE", default).strip().lower()
    if mode not in SEARCH_MODES:
        raise ConfigurationError(
            f"ENTITY_VECTORS_SEARCH_MODE={mode!r} is not understood; choose one of {', '.join(SEARCH_MODES)}"
        )
    return mode


def eval_queries_path() -> Path:
    """The labelled search queries `manage.py evaluate_search` scores (ENTITY_VECTORS_EVAL_QUERIES).

    By default `app/search_eval.json` under the host project's BASE_DIR.
    """
    value = _raw("ENTITY_VECTORS_EVAL_QUERIES")
    if value is not None:
        return Path(str(value)).expanduser()
    base_dir = getattr(settings, "BASE_DIR", None) if settings.configured else None
    if base_dir is None:
        raise ConfigurationError(
            "ENTITY_VECTORS_EVAL_QUERIES is not set and the project has no BASE_DIR setting to find "
            "app/search_eval.json under; set ENTITY_VECTORS_EVAL_QUERIES to the labelled queries' path"
        )
    return Path(base_dir) / "app" / "search_eval.json"


def monthly_budget_usd() -> Decimal | None:
    """Dollars a budget owner (an organization) may spend on providers per calendar month; None: no cap."""
    value = _raw("ENTITY_VECTORS_MONTHLY_BUDGET_USD")
    return None if value is None else _dollars("ENTITY_VECTORS_MONTHLY_BUDGET_USD", value)


def budgets() -> dict[str, Decimal]:
    """Per-owner monthly budgets (`{"42": 50}`: organization 42 may spend $50), over the common one."""
    value = _raw("ENTITY_VECTORS_BUDGETS")
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"ENTITY_VECTORS_BUDGETS is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigurationError("ENTITY_VECTORS_BUDGETS must map owner ids to dollars per month")
    return {str(owner): _dollars(f"ENTITY_VECTORS_BUDGETS[{owner!r}]", amount) for owner, amount in value.items()}


def _dollars(name: str, value: object) -> Decimal:
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise ConfigurationError(f"{name}={value!r} is not an amount of dollars") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigurationError(f"{name}={value!r} must be 0 or more dollars")
    return amount


def batch_api_threshold() -> int:
    """A run that selects at least this many entities sends its OpenAI work through the Batch API
    (half price, results within 24 hours); 0 turns the automatic switch off."""
    return _int("ENTITY_VECTORS_BATCH_API_THRESHOLD", 20_000)


def batch_api_max_requests() -> int:
    """Requests per provider batch (OpenAI takes at most 50,000 and 200 MB per batch file)."""
    value = _int("ENTITY_VECTORS_BATCH_API_MAX_REQUESTS", 50_000, minimum=1)
    if value > 50_000:
        raise ConfigurationError(f"ENTITY_VECTORS_BATCH_API_MAX_REQUESTS={value} is over OpenAI's 50000")
    return value


def batch_api_poll_seconds() -> int:
    """How often beat polls Batch API jobs."""
    return _int("ENTITY_VECTORS_BATCH_API_POLL_SECONDS", 60, minimum=1)
