"""Perceptual hash (pHash), Hamming distance, and the segment scheme the hash index searches by.

A 64-bit pHash is cut into ``m`` segments; each segment becomes a keyword term
``"<segment index>:<value in hex>"``. Two hashes within Hamming distance ``r`` differ in at
most ``r`` segments (each flipped bit spoils at most one segment), so they share at least
``m - r`` terms: a terms query with ``minimum_should_match = m - r`` admits every hash within
``r`` (no near-duplicate is missed), and the exact distance is computed afterwards to drop
the candidates that share segments but are farther away. ``r`` must stay below ``m``.

>>> h = PHash.from_hex("8a0303f6c3c3e0e1")
>>> h.distance(PHash.from_hex("8a0303d8c3c3e0e1"))
4
>>> DEFAULT_LAYOUT.query(h, max_distance=4).minimum_should_match
12
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import imagehash
import numpy as np
from PIL import Image

HASH_BITS = 64
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True, order=True)
class PHash:
    """A 64-bit perceptual hash that knows its own distance and round-trips through hex."""

    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value < 1 << HASH_BITS:
            raise ValueError(f"a pHash is a 64-bit unsigned integer, got {self.value}")

    @property
    def hex(self) -> str:
        return f"{self.value:016x}"

    @classmethod
    def from_hex(cls, text: str) -> PHash:
        # int(text, 16) alone would also take a sign, underscores, spaces and non-ASCII digits.
        if len(text) != HASH_BITS // 4 or not _HEX_DIGITS.issuperset(text):
            raise ValueError(f"a pHash is {HASH_BITS // 4} hex characters, got {text!r}")
        return cls(int(text, 16))

    def distance(self, other: PHash) -> int:
        return hamming(self.value, other.value)

    def __sub__(self, other: PHash) -> int:
        return self.distance(other)

    def __str__(self) -> str:
        return self.hex


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes."""
    return (a ^ b).bit_count()


def phash(image: Image.Image) -> PHash:
    """The 64-bit DCT pHash of ``imagehash`` (hash_size 8), bits read row by row, MSB first."""
    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    return PHash(int("".join("1" if bit else "0" for bit in bits), 2))


@dataclass(frozen=True, slots=True)
class SegmentQuery:
    """What to ask a terms index for: any ``minimum_should_match`` of ``terms``."""

    terms: tuple[str, ...]
    minimum_should_match: int
    max_distance: int


@dataclass(frozen=True)
class SegmentLayout:
    """How the 64 bits are cut into exact-match segments, most significant bits first."""

    widths: tuple[int, ...]

    def __post_init__(self) -> None:
        if sum(self.widths) != HASH_BITS or any(w <= 0 for w in self.widths):
            raise ValueError(f"segment widths must be positive and add up to {HASH_BITS}: {self.widths}")

    @property
    def count(self) -> int:
        return len(self.widths)

    @property
    def max_distance(self) -> int:
        """The largest distance whose recall this layout guarantees (pigeonhole: m - 1)."""
        return self.count - 1

    @cached_property
    def _shifts_and_masks(self) -> tuple[tuple[int, int], ...]:
        out, used = [], 0
        for width in self.widths:
            used += width
            out.append((HASH_BITS - used, (1 << width) - 1))
        return tuple(out)

    def segments(self, h: PHash) -> tuple[int, ...]:
        return tuple((h.value >> shift) & mask for shift, mask in self._shifts_and_masks)

    def terms(self, h: PHash) -> list[str]:
        return [f"{i}:{v:x}" for i, v in enumerate(self.segments(h))]

    def matched(self, a: PHash, b: PHash) -> int:
        return sum(x == y for x, y in zip(self.segments(a), self.segments(b), strict=True))

    def query(self, h: PHash, max_distance: int) -> SegmentQuery:
        """Terms and minimum match count that admit every hash within ``max_distance`` of ``h``.

        Raises ValueError when the layout cannot guarantee that distance: with ``m``
        segments, a hash ``m`` bits away may share no segment at all.
        """
        if not 0 <= max_distance <= self.max_distance:
            raise ValueError(
                f"a layout of {self.count} segments guarantees recall up to distance "
                f"{self.max_distance}; {max_distance} was asked"
            )
        return SegmentQuery(tuple(self.terms(h)), self.count - max_distance, max_distance)

    def segment_matrix(self, values: np.ndarray) -> np.ndarray:
        """Segments of many hashes at once: uint64 array (n,) to a uint64 array (n, m).

        uint64 rather than int64 so that a segment as wide as the hash cannot wrap negative.
        """
        values = values.astype(np.uint64, copy=False)
        cols = [(values >> np.uint64(s)) & np.uint64(m) for s, m in self._shifts_and_masks]
        return np.stack(cols, axis=1)


#: 16 segments of 4 bits, one hex digit each. Recall is guaranteed up to distance 15; at the default
#: duplicate distance of 8 a query needs 8 of the 16 terms and admits about 3 random candidates per
#: million stored hashes (16 to 18 on real pHashes). Measurements and alternatives: docs/hash-layout.md.
DEFAULT_LAYOUT = SegmentLayout((4,) * 16)
