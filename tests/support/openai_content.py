"""What the fake OpenAI server answers: summaries, deterministic embeddings, token estimates."""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import re
import struct
from typing import Any

from tests.support.openai_rules import ApiError, Corruption, api_path_of

DEFAULT_DIMENSIONS = 1536


MODELS = ("gpt-4.1-mini", "gpt-4o-mini", "text-embedding-3-small", "text-embedding-3-large")


WORD = re.compile(r"\w+")


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def words_of(text: str) -> list[str]:
    return WORD.findall(text.lower())


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep only the text ones
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def estimate_tokens(text: str) -> int:
    """The rate limiter's token estimate for one text: `len(text) // 4 + 1`."""
    return len(text) // 4 + 1


def request_cost(api_path: str, body: dict[str, Any]) -> int:
    """Tokens a chat or embeddings request costs against `tpm` (see the module docstring)."""
    if api_path_of(api_path) == "/chat/completions":
        messages = body.get("messages")
        cost = 0
        if isinstance(messages, list):
            cost = sum(estimate_tokens(message_text(m)) for m in messages if isinstance(m, dict))
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(cap, int) and not isinstance(cap, bool):
            cost += max(0, cap)
        return cost
    raw = body.get("input")
    if isinstance(raw, str):
        return estimate_tokens(raw)
    if not isinstance(raw, list):
        return 0
    if raw and all(isinstance(t, int) for t in raw):
        return len(raw)
    cost = 0
    for item in raw:
        if isinstance(item, str):
            cost += estimate_tokens(item)
        elif isinstance(item, list):
            cost += len(item)
    return cost


def default_summary(messages: list[dict[str, Any]]) -> str:
    """First three sentences (at most 400 characters) of the last user message."""
    users = [m for m in messages if m.get("role") == "user"] or messages
    text = " ".join(message_text(users[-1]).split()) if users else ""
    return " ".join(SENTENCE_END.split(text)[:3])[:400]


def embed_text(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """Deterministic unit vector hashing word unigrams and bigrams, so shared words mean closeness."""
    words = words_of(text)
    features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    vector = hash_features(features, dimensions)
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        # Word-less input (e.g. a " " placeholder) or, with tiny `dimensions`, features whose signs
        # cancelled out: a single feature cannot cancel, so hash the whole text instead.
        vector, norm = hash_features([text], dimensions), 1.0
    return [v / norm for v in vector]


def hash_features(features: list[str], dimensions: int) -> list[float]:
    vector = [0.0] * dimensions
    for feature in features:
        # blake2b, not hash(): str hashes are salted per process and Celery workers must agree.
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        sign = 1.0 if digest[7] & 1 else -1.0
        vector[int.from_bytes(digest[:4], "little") % dimensions] += sign
    return vector


def embedding_inputs(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
        return [" ".join(map(str, raw))]  # one token array
    if isinstance(raw, list) and raw:
        texts: list[str] = []
        for item in raw:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                texts.append(" ".join(map(str, item)))
            else:
                raise ApiError(400, "'input' items must be strings or arrays of token ids")
        return texts
    raise ApiError(400, "'input' must be a non-empty string or array")


def model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "openai-fake"}


def page(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


def embeddings(body: dict[str, Any], corruption: Corruption | None = None) -> dict[str, Any]:
    if not isinstance(body.get("model"), str):
        raise ApiError(400, "you must provide a 'model' parameter")
    texts = embedding_inputs(body.get("input"))
    if any(t == "" for t in texts):
        raise ApiError(400, "'input' cannot contain an empty string")
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise ApiError(400, "'dimensions' must be a positive integer")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' must be 'float' or 'base64'")
    kind = corruption.kind if corruption is not None else None
    size = dimensions + 3 if kind == "wrong_dimension" else dimensions
    items = [(i, embed_text(text, size)) for i, text in enumerate(texts)]
    if kind == "missing":
        del items[-1]
    elif kind == "extra":
        items.append((len(items), embed_text(f"extra item {len(items)}", dimensions)))
    elif kind == "shuffled":
        items.reverse()
    elif kind == "bad_index":
        items = [(0, vector) for _, vector in items]
    elif kind == "nan":
        items[0][1][0] = math.nan
    data = []
    for index, vector in items:
        packed: Any = vector
        if encoding == "base64":
            packed = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": packed})
    tokens = sum(len(words_of(t)) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
