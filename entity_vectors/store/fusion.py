"""Hybrid search: the vector and text rankings of a query, fused into one.

Two ways, with their parameters recorded per embedding version (`DomainVersion.fusion`, chosen by
`evaluate_search --choose-fusion` on the labelled set):

- `rrf`, weighted reciprocal rank fusion: score = 1 / (k + vector rank) + w / (k + text rank), a
  ranking's term only for a row it holds. Ranks only, so it needs no common scale.
- `score`, a convex combination of the scores: (1 - w) x cosine similarity + w x text score (both
  in [0, 1], the text score BM25 normalized by the best score the query allows, 1 for a whole-name
  match). A row outside one ranking's candidates gets, from it, the lowest score that ranking kept
  for the vector, and 0 for the text.

A hit's distance is 1 - its score / the best score possible (first in both rankings, or a perfect
score in both): 0 at best, rising with the rank, below 1 for every hit. Equal scores are ordered by
cosine distance, then by id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from entity_vectors.store.rows import EntityHit

METHODS = ("rrf", "score")


@dataclass(frozen=True)
class Fusion:
    """How hybrid search fuses the two rankings (`rrf` or `score`), and the text's weight."""

    method: str = "rrf"
    text_weight: float = 1.0
    k: int = 60

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion method {self.method!r}: must be one of {', '.join(METHODS)}")
        if not 0.0 <= self.text_weight <= (1.0 if self.method == "score" else 10.0):
            raise ValueError(f"fusion text_weight {self.text_weight!r} is out of range for {self.method}")
        if self.k < 1:
            raise ValueError(f"fusion k {self.k!r}: must be at least 1")

    def as_dict(self) -> dict[str, Any]:
        """What is recorded with an embedding version."""
        return {"method": self.method, "text_weight": self.text_weight, "k": self.k}

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any] | None, default: Fusion) -> Fusion:
        """The fusion recorded with a version; `default` for what is not recorded (or not valid)."""
        if not recorded:
            return default
        try:
            return cls(
                method=str(recorded.get("method", default.method)),
                text_weight=float(recorded.get("text_weight", default.text_weight)),
                k=int(recorded.get("k", default.k)),
            )
        except (TypeError, ValueError):
            return default

    def describe(self) -> str:
        """One line: the method and its parameters."""
        if self.method == "rrf":
            return f"rrf (k={self.k}, text weight {self.text_weight:g})"
        return f"score (text weight {self.text_weight:g})"


def fuse(
    vector_hits: Sequence[EntityHit], text_hits: Sequence[EntityHit], fusion: Fusion, limit: int
) -> list[EntityHit]:
    """The first `limit` rows of the fused ranking, each with its fused distance."""
    vector_rank = {hit.id: rank for rank, hit in enumerate(vector_hits, start=1)}
    text_rank = {hit.id: rank for rank, hit in enumerate(text_hits, start=1)}
    cosine = {hit.id: hit.distance for hit in vector_hits}
    floor = max(cosine.values(), default=1.0)  # the farthest vector candidate
    text_score = {hit.id: 1.0 - hit.distance for hit in text_hits}
    rows: dict[str, EntityHit] = {hit.id: hit for hit in text_hits} | {hit.id: hit for hit in vector_hits}
    scores: dict[str, float] = {}
    if fusion.method == "rrf":
        best = (1.0 + fusion.text_weight) / (fusion.k + 1)
        for key in rows:
            score = 1.0 / (fusion.k + vector_rank[key]) if key in vector_rank else 0.0
            if key in text_rank:
                score += fusion.text_weight / (fusion.k + text_rank[key])
            scores[key] = score
    else:
        best = 1.0
        weight = fusion.text_weight
        for key in rows:
            similarity = 1.0 - cosine.get(key, floor)
            scores[key] = (1.0 - weight) * min(max(similarity, 0.0), 1.0) + weight * text_score.get(key, 0.0)
    order = sorted(rows, key=lambda key: (-scores[key], cosine.get(key, 2.0), key))
    return [
        replace(rows[key], distance=min(max(1.0 - scores[key] / best, 0.0), 1.0)) for key in order[:limit]
    ]
