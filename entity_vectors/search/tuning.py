"""How hybrid search fuses its two rankings, per embedding version: the defaults, and choosing.

`evaluate_search --choose-fusion` scores every fusion of `CHOICES` on the labelled set (the vector
and text rankings of each query are searched once and fused offline, as hybrid search fuses
them), per embedder, and records one with each version that embedder writes, with the default
mode. The one chosen is the fusion with the *most* weight on the text among those whose recall@1
and MRR both reach the best single mode's: the default mode is then `hybrid`. If none does, the
best single mode is the default and the fusion with the best recall@1 + MRR is recorded for
searches that ask for hybrid.

Why the most text weight that still matches: the labelled set searches 5-10 entities per team
and domain, where vector search is at its best. Among thousands of other entities (`evaluate_search
--distractors`) the text ranking holds its recall@1 within 5 points and the wordllama vector
ranking loses 30 (see the README): weight on the text is what keeps hybrid up there, as long as it
costs nothing on the labelled set. A version never evaluated fuses as its embedder's default below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from entity_vectors.models import DomainVersion
from entity_vectors.store.fusion import Fusion

# What `--choose-fusion` chose on the labelled set (app/search_eval.json) over the demo data,
# template summaries (see the README's Search section).
DEFAULT_FUSIONS = {
    "wordllama": Fusion("score", 0.25),
    "hashing": Fusion("score", 0.9),
}
DEFAULT_FUSION = Fusion("score", 0.25)

# The fusions `--choose-fusion` compares, by increasing weight on the text. (Reciprocal rank
# fusion, `rrf`, fused worse than these at every weight and k tried, on the labelled set with
# and without distractors; it stays available to the store.)
CHOICES: tuple[Fusion, ...] = tuple(
    Fusion("score", weight / 100) for weight in (5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90)
)


def fusion_of(record: DomainVersion | None) -> Fusion:
    """How hybrid search fuses the rankings of a version: as recorded, else its embedder's default."""
    default = DEFAULT_FUSIONS.get(record.embedder, DEFAULT_FUSION) if record is not None else DEFAULT_FUSION
    return Fusion.from_dict(record.fusion if record is not None else None, default)


@dataclass(frozen=True)
class Scores:
    """recall@1 and MRR of one ranking over a set of queries."""

    recall_at_1: float
    mrr: float

    def at_least(self, other: Scores) -> bool:
        """At least as good on both."""
        return self.recall_at_1 >= other.recall_at_1 - 1e-9 and self.mrr >= other.mrr - 1e-9


def scores(ranks: Sequence[int | None]) -> Scores:
    """recall@1 and MRR from where each query's first expected entity ranked (None: not found)."""
    if not ranks:
        return Scores(0.0, 0.0)
    return Scores(
        sum(1 for rank in ranks if rank == 1) / len(ranks),
        sum(1.0 / rank for rank in ranks if rank) / len(ranks),
    )


@dataclass(frozen=True)
class Choice:
    """The fusion chosen for an embedder, the default mode, and the figures they were chosen on."""

    embedder: str
    fusion: Fusion
    mode: str
    hybrid: Scores
    vector: Scores
    text: Scores
    queries: int

    def describe(self) -> str:
        """One line for people."""
        return (
            f"{self.embedder}: hybrid fuses by {self.fusion.describe()}: recall@1 {self.hybrid.recall_at_1:.3f}, "
            f"MRR {self.hybrid.mrr:.3f} (vector {self.vector.recall_at_1:.3f}, {self.vector.mrr:.3f}; text "
            f"{self.text.recall_at_1:.3f}, {self.text.mrr:.3f}; {self.queries} queries); default mode {self.mode}"
        )


def choose(
    embedder: str,
    vector_ranks: Sequence[int | None],
    text_ranks: Sequence[int | None],
    fused_ranks: dict[Fusion, list[int | None]],
) -> Choice:
    """The fusion with the most text weight whose recall@1 and MRR reach the best single mode's
    (default mode hybrid); else the best single mode, and the fusion of the best recall@1 + MRR."""
    vector, text = scores(vector_ranks), scores(text_ranks)
    fused = {fusion: scores(fused_ranks[fusion]) for fusion in CHOICES}
    matching = [
        fusion for fusion in CHOICES if fused[fusion].at_least(vector) and fused[fusion].at_least(text)
    ]
    if matching:
        chosen = matching[-1]
        return Choice(embedder, chosen, "hybrid", fused[chosen], vector, text, len(vector_ranks))
    chosen = max(CHOICES, key=lambda fusion: fused[fusion].recall_at_1 + fused[fusion].mrr)
    single = max((("vector", vector), ("text", text)), key=lambda item: item[1].recall_at_1 + item[1].mrr)
    return Choice(embedder, chosen, single[0], fused[chosen], vector, text, len(vector_ranks))
