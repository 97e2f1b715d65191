"""The thresholds that decide the tiers, their validated ranges, and their measured defaults.

The defaults come from measurements on natural photos and their edits (docs/quality.md
and docs/hash-layout.md show the runs that chose them); ``lookalike eval`` calibrates them
on a user's own images for a target false-match rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from lookalike.errors import InvalidRequest
from lookalike.hashing import DEFAULT_LAYOUT

#: Re-compression, resizing, watermarks and trimmed borders stay within this many bits.
DEFAULT_DUPLICATE_DISTANCE = 8
#: Cosine above which two feature vectors are the same picture edited.
DEFAULT_DUPLICATE_SIMILARITY = 0.86
#: Cosine below which a neighbour is not worth showing as "similar".
DEFAULT_MIN_SIMILARITY = 0.5


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
