"""The thresholds that decide the tiers, their validated ranges, and their measured defaults.

The defaults come from measurements on natural photos and their edits (docs/quality.md
and docs/hash-layout.md show the runs that chose them); ``lookalike eval`` calibrates them
on a user's own images for a target false-match rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from lookalike.errors import InvalidRequest
from lookalike.hashing import DEFAULT_LAYOUT

#: The largest pHash distance the hash index answers cheaply as the gallery grows: with
#: DEFAULT_LAYOUT a query at 8 bits admits about 18 candidates per million stored photos, at
#: 10 bits about 1,000 (docs/hash-layout.md). Calibration stays at or under it unless told not to.
SCALABLE_DUPLICATE_DISTANCE = 8
#: Re-compression, resizing, watermarks and trimmed borders stay within this many bits.
DEFAULT_DUPLICATE_DISTANCE = SCALABLE_DUPLICATE_DISTANCE
#: Cosine above which two feature vectors are the same picture edited: calibrated by
#: `lookalike eval` for a false-match rate of at most 1 % at distance 8 (docs/quality.md).
DEFAULT_DUPLICATE_SIMILARITY = 0.77
#: Cosine below which a neighbour is not worth showing as "similar".
DEFAULT_MIN_SIMILARITY = 0.5
#: Where both signals agree a little, neither has to agree a lot: a candidate within
#: duplicate_distance + JOINT_DISTANCE_SLACK bits whose cosine is at least
#: duplicate_similarity - JOINT_SIMILARITY_SLACK is a duplicate too. Two different photos
#: almost never come within 12 bits (docs/hash-layout.md), so the pair rarely errs where either
#: signal alone would: a heavy watermark leaves the pHash 12 bits away and the cosine at 0.75.
#: The distance is checked on the vector's neighbours, never asked of the hash index.
JOINT_DISTANCE_SLACK = 4
JOINT_SIMILARITY_SLACK = 0.1


@dataclass(frozen=True, slots=True)
class Thresholds:
    duplicate_distance: int = DEFAULT_DUPLICATE_DISTANCE
    duplicate_similarity: float = DEFAULT_DUPLICATE_SIMILARITY
    min_similarity: float = DEFAULT_MIN_SIMILARITY

    def validate(self) -> Thresholds:
        """Return self, or raise InvalidRequest naming the parameter that is out of range."""
        if not 0 <= self.duplicate_distance <= DEFAULT_LAYOUT.max_distance:
            raise InvalidRequest(
                "duplicate_distance",
                f"must be between 0 and {DEFAULT_LAYOUT.max_distance} (the segment layout guarantees "
                f"recall only up to there), got {self.duplicate_distance}",
            )
        for name in ("duplicate_similarity", "min_similarity"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidRequest(name, f"must be a cosine similarity between 0 and 1, got {value}")
        if self.min_similarity > self.duplicate_similarity:
            raise InvalidRequest(
                "min_similarity",
                f"must not exceed duplicate_similarity ({self.duplicate_similarity}), got {self.min_similarity}",
            )
        return self

    def is_duplicate(self, distance: int | None, similarity: float | None) -> bool:
        """The fused decision: the pHash is near, or the vector alike, or both agree somewhat.

        ``None`` is a signal that is not known (no vector, or no stored pHash).
        """
        near = distance is not None and distance <= self.duplicate_distance
        alike = similarity is not None and similarity >= self.duplicate_similarity
        return near or alike or self.agree(distance, similarity)

    def agree(self, distance: int | None, similarity: float | None) -> bool:
        """Both signals somewhat close (see JOINT_DISTANCE_SLACK)."""
        return (
            distance is not None
            and similarity is not None
            and distance <= self.duplicate_distance + JOINT_DISTANCE_SLACK
            and similarity >= self.duplicate_similarity - JOINT_SIMILARITY_SLACK
        )
