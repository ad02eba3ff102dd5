"""The `wordllama` embedder: offline and semantic, with the model weights shipped in its wheel.

WordLlama (https://github.com/dleemiller/WordLlama) pools token embeddings taken from a large
language model: no network, no GPU, tens of thousands of short texts a second, and texts that
mean the same land close even when they share no words (paraphrases, other languages). Its one
model ships 256 dimensions, usable truncated to 128 or 64 (Matryoshka training).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from entity_vectors.exceptions import ConfigurationError
from entity_vectors.providers.base import Embeddings

IDENTITY = "wordllama"
SUPPORTED_DIMENSIONS = (256, 128, 64)
_FULL_DIMENSIONS = 256

_MODELS: dict[int, Any] = {}
_LOCK = threading.Lock()


def _wordllama_module() -> Any:
    try:
        return importlib.import_module("wordllama")
    except ImportError as exc:
        raise ConfigurationError(
            "ENTITY_VECTORS_EMBEDDER=wordllama needs the wordllama package: install the `semantic` extra "
            "(pip install 'entity-vectors[semantic]')"
        ) from exc


def check_dimensions(dimensions: int) -> None:
    """Raise ConfigurationError unless WordLlama ships vectors of this size."""
    if dimensions not in SUPPORTED_DIMENSIONS:
        allowed = ", ".join(str(size) for size in SUPPORTED_DIMENSIONS)
        raise ConfigurationError(
            f"ENTITY_VECTORS_EMBEDDING_DIMENSIONS={dimensions} is not a size the wordllama embedder "
            f"makes; set it to one of {allowed} (256 is the full model)"
        )


def load_model(dimensions: int) -> Any:
    """The WordLlama model of this size, loaded once per process from the files in its wheel."""
    check_dimensions(dimensions)
    model = _MODELS.get(dimensions)
    if model is not None:
        return model
    with _LOCK:
        model = _MODELS.get(dimensions)
        if model is None:
            module = _wordllama_module()
            # The wheel holds the weights and the tokenizer, but WordLlama looks for the tokenizer
            # in the wrong folder of its own package and would download it; pointing the cache at
            # the package finds both, and disable_download makes a missing file an error.
            package_dir = Path(module.__file__).parent
            try:
                model = module.WordLlama.load(
                    cache_dir=package_dir,
                    disable_download=True,
                    dim=_FULL_DIMENSIONS,
                    trunc_dim=None if dimensions == _FULL_DIMENSIONS else dimensions,
                )
            except (FileNotFoundError, ValueError) as exc:
                raise ConfigurationError(
                    f"the wordllama model files were not found in {package_dir} ({exc}); reinstall the "
                    "`semantic` extra"
                ) from exc
            _MODELS[dimensions] = model
    return model


def wordllama_vectors(model: Any, texts: Sequence[str], dimensions: int) -> np.ndarray[Any, Any]:
    """L2-normalised float32 vectors, one row per text; a text without tokens gets a fixed unit vector."""
    vectors = np.zeros((len(texts), dimensions), dtype=np.float32)
    if not texts:
        return vectors
    raw = np.asarray(model.embed(list(texts), norm=False), dtype=np.float32)
    if raw.shape != vectors.shape:
        raise ValueError(f"wordllama returned vectors of shape {raw.shape}, expected {vectors.shape}")
    raw = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(raw, axis=1)
    usable = norms > 0.0
    vectors[usable] = raw[usable] / norms[usable, np.newaxis]
    # Cosine distance needs a direction: an empty text points the same fixed way as the hashing one.
    vectors[~usable, 0] = 1.0
    return vectors


class WordLlamaEmbedder:
    """Semantic, offline, fast: WordLlama's pooled LLM token embeddings, normalised."""

    def __init__(self, dimensions: int) -> None:
        check_dimensions(dimensions)
        self._dimensions = dimensions
        self._model = load_model(dimensions)

    @property
    def identity(self) -> str:
        """Recorded with every vector it makes."""
        return IDENTITY

    @property
    def dimensions(self) -> int:
        """The vector length (256, 128 or 64)."""
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """One vector per text, computed in this process (a few microseconds per short text)."""
        return Embeddings(vectors=wordllama_vectors(self._model, texts, self._dimensions))
