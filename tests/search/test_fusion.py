"""Fusing the vector and text rankings, and choosing how, per embedder."""

from __future__ import annotations

import pytest

from entity_vectors.models import DomainVersion
from entity_vectors.search.tuning import CHOICES, DEFAULT_FUSIONS, choose, fusion_of
from entity_vectors.store import EntityHit
from entity_vectors.store.fusion import Fusion, fuse


def hits(*pairs: tuple[str, float]) -> list[EntityHit]:
    """Hits (id, distance) in rank order."""
    return [
        EntityHit(id=key, team_id=1, domain="action", text=key, distance=distance) for key, distance in pairs
    ]


VECTOR = hits(("a", 0.10), ("b", 0.20), ("c", 0.30), ("d", 0.60))
TEXT = hits(("d", 0.0), ("c", 0.5), ("e", 0.7))


class TestFuse:
    """Every row of either ranking, ordered by the fused score, distances in rank order."""

    @pytest.mark.parametrize(
        "fusion",
        [
            pytest.param(Fusion(), id="rrf-equal-weights"),
            pytest.param(Fusion("rrf", 0.5, 10), id="rrf-weighted"),
            pytest.param(Fusion("score", 0.25), id="score"),
            pytest.param(Fusion("score", 0.9), id="score-mostly-text"),
        ],
    )
    def test_distances_follow_the_rank_and_stay_below_one(self, fusion: Fusion) -> None:
        fused = fuse(VECTOR, TEXT, fusion, 10)

        assert sorted(hit.id for hit in fused) == ["a", "b", "c", "d", "e"]
        distances = [hit.distance for hit in fused]
        assert distances == sorted(distances)
        assert all(0.0 <= distance < 1.0 for distance in distances)

    def test_the_text_weight_moves_a_whole_name_match_up(self) -> None:
        assert [hit.id for hit in fuse(VECTOR, TEXT, Fusion("score", 0.05), 2)] == ["a", "b"]
        assert [hit.id for hit in fuse(VECTOR, TEXT, Fusion("score", 0.5), 1)] == ["d"]

    def test_without_a_text_match_it_is_the_vector_ranking(self) -> None:
        for fusion in (Fusion(), Fusion("score", 0.5)):
            assert [hit.id for hit in fuse(VECTOR, [], fusion, 10)] == ["a", "b", "c", "d"]

    def test_bad_parameters_are_refused_and_a_bad_record_falls_back(self) -> None:
        with pytest.raises(ValueError, match="fusion method 'max'"):
            Fusion("max")
        with pytest.raises(ValueError, match="out of range for score"):
            Fusion("score", 1.5)
        default = Fusion("score", 0.25)
        assert Fusion.from_dict({"method": "score", "text_weight": "x"}, default) == default
        assert Fusion.from_dict({}, default) == default
        assert Fusion.from_dict(Fusion("rrf", 2.0, 20).as_dict(), default) == Fusion("rrf", 2.0, 20)


class TestChoose:
    """The most text weight whose recall@1 and MRR reach the best single mode's."""

    def test_the_heaviest_text_weight_that_still_matches_is_chosen(self) -> None:
        vector = [1, 1, 2, None]
        text = [1, 2, None, None]
        fused = {fusion: [1, 1, 2, None] for fusion in CHOICES}
        fused[CHOICES[-1]] = [1, 2, 2, None]  # too much text: loses a first place

        choice = choose("wordllama", vector, text, fused)

        assert (choice.fusion, choice.mode) == (CHOICES[-2], "hybrid")
        assert (choice.hybrid.recall_at_1, choice.vector.recall_at_1) == (0.5, 0.5)

    def test_if_none_matches_the_best_single_mode_is_the_default(self) -> None:
        fused = {fusion: [2, 2, 1, None] for fusion in CHOICES}

        choice = choose("x", [1, 1, 2, None], [1, 2, None, None], fused)

        assert choice.mode == "vector"
        assert "default mode vector" in choice.describe()

    def test_a_version_fuses_as_recorded_else_as_its_embedder_s_default(self) -> None:
        record = DomainVersion(domain="action", embedding_version=1, embedder="wordllama", dimensions=256)
        assert fusion_of(record) == DEFAULT_FUSIONS["wordllama"]
        record.fusion = {"method": "rrf", "text_weight": 1.0, "k": 60}
        assert fusion_of(record) == Fusion("rrf", 1.0, 60)
