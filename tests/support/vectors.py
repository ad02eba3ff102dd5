"""Vector arithmetic the tests compare with."""

from __future__ import annotations

import numpy as np


def cosine(first: np.ndarray, second: np.ndarray) -> float:
    """Cosine similarity."""
    return float(np.dot(first, second) / (np.linalg.norm(first) * np.linalg.norm(second)))
