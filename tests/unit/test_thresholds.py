"""The fused duplicate decision: either signal alone, or both somewhat."""

from __future__ import annotations

import pytest

from lookalike.thresholds import JOINT_DISTANCE_SLACK, JOINT_SIMILARITY_SLACK, Thresholds

LIMITS = Thresholds(duplicate_distance=8, duplicate_similarity=0.77, min_similarity=0.5)


@pytest.mark.parametrize(
    ("distance", "similarity", "duplicate"),
    [
        (8, None, True),  # the pHash alone
        (9, None, False),
        (None, 0.77, True),  # the vector alone
        (None, 0.7699, False),
        (32, 0.77, True),  # a flip: the vector carries it
        (0, 0.10, True),  # a tiny grey copy: the pHash carries it
        (8 + JOINT_DISTANCE_SLACK, 0.77 - JOINT_SIMILARITY_SLACK, True),  # both close: a heavy watermark
        (8 + JOINT_DISTANCE_SLACK + 1, 0.76, False),  # too far for the pHash to vouch
        (8 + JOINT_DISTANCE_SLACK, 0.77 - JOINT_SIMILARITY_SLACK - 0.001, False),  # too unlike for the vector
        (None, None, False),
    ],
)
def test_the_fused_decision(distance: int | None, similarity: float | None, duplicate: bool) -> None:
    assert LIMITS.is_duplicate(distance, similarity) is duplicate


def test_the_joint_rule_moves_with_the_thresholds_a_request_sets() -> None:
    strict = Thresholds(duplicate_distance=2, duplicate_similarity=0.95, min_similarity=0.5)
    assert not strict.is_duplicate(12, 0.70)
    assert strict.is_duplicate(2 + JOINT_DISTANCE_SLACK, 0.95 - JOINT_SIMILARITY_SLACK)
