"""pHash values, Hamming distance and the segment scheme's recall guarantee."""

from __future__ import annotations

import doctest
import io
import itertools
import statistics
from pathlib import Path

import imagehash
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw

import lookalike.hashing
from lookalike.hashing import DEFAULT_LAYOUT, HASH_BITS, PHash, SegmentLayout, hamming, phash
from lookalike.thresholds import DEFAULT_DUPLICATE_DISTANCE

hashes = st.integers(0, (1 << HASH_BITS) - 1).map(PHash)


@st.composite
def layouts(draw: st.DrawFn) -> SegmentLayout:
    """DEFAULT_LAYOUT, or a random composition of 64 bits into 2 to 32 positive widths."""
    if draw(st.booleans()):
        return DEFAULT_LAYOUT
    count = draw(st.integers(2, 32))
    cuts = sorted(draw(st.sets(st.integers(1, HASH_BITS - 1), min_size=count - 1, max_size=count - 1)))
    bounds = [0, *cuts, HASH_BITS]
    return SegmentLayout(tuple(b - a for a, b in itertools.pairwise(bounds)))


def flip(h: PHash, bits: set[int]) -> PHash:
    return PHash(h.value ^ sum(1 << bit for bit in bits))


def segment_of_bit(layout: SegmentLayout, bit: int) -> int:
    """Which segment holds ``bit`` (0 = least significant); segments run from the MSB."""
    position_from_msb = HASH_BITS - 1 - bit
    return next(i for i, end in enumerate(itertools.accumulate(layout.widths)) if position_from_msb < end)


# --- The segment scheme ---------------------------------------------------------------------


@given(h=hashes, layout=layouts(), data=st.data())
def test_every_hash_within_the_query_distance_shares_enough_terms(
    h: PHash, layout: SegmentLayout, data: st.DataObject
) -> None:
    # given a hash, a layout, a distance it guarantees, and a copy with at most that many bits flipped
    r = data.draw(st.integers(0, layout.max_distance), label="r")
    flipped = data.draw(st.sets(st.integers(0, HASH_BITS - 1), max_size=r), label="flipped bits")
    near = flip(h, flipped)

    # when the index is asked for the terms query of distance r
    query = layout.query(h, max_distance=r)
    shared = set(query.terms) & set(layout.terms(near))

    # then the copy shares enough terms to be a candidate, and matched() counts the same terms
    assert h.distance(near) == len(flipped) <= r
    assert len(shared) >= query.minimum_should_match
    assert layout.matched(h, near) == len(shared)
    # and exactly the segments that hold a flipped bit are lost
    assert len(shared) == layout.count - len({segment_of_bit(layout, bit) for bit in flipped})


@given(h=hashes, layout=layouts(), data=st.data())
def test_minimum_should_match_is_the_tightest_that_keeps_recall(
    h: PHash, layout: SegmentLayout, data: st.DataObject
) -> None:
    # given one flipped bit in each of r different segments
    r = data.draw(st.integers(0, layout.max_distance), label="r")
    segments = data.draw(st.sets(st.integers(0, layout.count - 1), min_size=r, max_size=r), label="segments")
    starts = [0, *itertools.accumulate(layout.widths)]
    near = flip(h, {HASH_BITS - 1 - starts[segment] for segment in segments})

    # then the copy is r bits away and shares exactly minimum_should_match terms: one more would lose it
    query = layout.query(h, max_distance=r)
    assert h.distance(near) == r
    assert layout.matched(h, near) == query.minimum_should_match == layout.count - r
    assert query.max_distance == r


@given(layout=layouts(), data=st.data())
def test_a_distance_the_layout_cannot_guarantee_is_refused(layout: SegmentLayout, data: st.DataObject) -> None:
    r = data.draw(st.integers(layout.count, HASH_BITS), label="r")
    with pytest.raises(ValueError, match=rf"{layout.count} segments guarantees recall up to distance"):
        layout.query(PHash(0), max_distance=r)


@pytest.mark.parametrize("r", [-1, -64])
def test_a_negative_distance_is_refused(r: int) -> None:
    with pytest.raises(ValueError, match="guarantees recall"):
        DEFAULT_LAYOUT.query(PHash(0), max_distance=r)


@given(h=hashes, layout=layouts())
def test_terms_name_their_segment_so_equal_values_elsewhere_never_match(h: PHash, layout: SegmentLayout) -> None:
    terms = layout.terms(h)
    assert len(set(terms)) == len(terms) == layout.count
    assert [int(term.split(":")[0]) for term in terms] == list(range(layout.count))
    # and the segments, put back in place, are the hash
    shifts = [HASH_BITS - end for end in itertools.accumulate(layout.widths)]
    assert sum(value << shift for value, shift in zip(layout.segments(h), shifts, strict=True)) == h.value


@given(values=st.lists(hashes, max_size=40), layout=st.one_of(layouts(), st.just(SegmentLayout((64,)))))
def test_segment_matrix_agrees_with_segments(values: list[PHash], layout: SegmentLayout) -> None:
    matrix = layout.segment_matrix(np.array([h.value for h in values], dtype=np.uint64))

    assert matrix.shape == (len(values), layout.count)
    assert matrix.dtype == np.uint64
    assert [tuple(int(v) for v in row) for row in matrix] == [layout.segments(h) for h in values]


@pytest.mark.parametrize("widths", [(), (8,) * 7, (8,) * 9, (0, *(8,) * 8), (-4, 4, *(8,) * 8)])
def test_a_layout_must_cut_exactly_64_bits_into_positive_widths(widths: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="add up to 64"):
        SegmentLayout(widths)


def test_the_default_layout_guarantees_the_default_duplicate_distance() -> None:
    query = DEFAULT_LAYOUT.query(PHash(0), max_distance=DEFAULT_DUPLICATE_DISTANCE)
    assert query.minimum_should_match >= 1


def test_the_module_examples_hold() -> None:
    result = doctest.testmod(lookalike.hashing)
    assert result.attempted > 0
    assert result.failed == 0


# --- PHash and Hamming distance -------------------------------------------------------------


@given(h=hashes)
def test_hex_round_trips(h: PHash) -> None:
    assert len(h.hex) == 16
    assert h.hex == h.hex.lower() == str(h)
    assert PHash.from_hex(h.hex) == h
    assert PHash.from_hex(h.hex.upper()) == h


@pytest.mark.parametrize(
    "text",
    ["", "8a0303f6c3c3e0e", "8a0303f6c3c3e0e1a", "8a0303f6c3c3e0eg", "+a0303f6c3c3e0e1", "8a03_3f6c3c3e0e1",
     " a0303f6c3c3e0e1", "0x0303f6c3c3e0e1", "٠" * 16],
)  # fmt: skip
def test_from_hex_accepts_only_16_hex_digits(text: str) -> None:
    with pytest.raises(ValueError, match="16 hex characters"):
        PHash.from_hex(text)


@pytest.mark.parametrize("value", [-1, 1 << 64, (1 << 64) + 5, -(1 << 63)])
def test_a_phash_is_a_64_bit_unsigned_integer(value: int) -> None:
    with pytest.raises(ValueError, match="64-bit unsigned"):
        PHash(value)


@pytest.mark.parametrize("value", [0, 1, (1 << 64) - 1])
def test_the_edges_of_the_range_are_valid(value: int) -> None:
    assert PHash(value).value == value


@given(a=hashes, b=hashes, c=hashes)
def test_distance_is_a_metric(a: PHash, b: PHash, c: PHash) -> None:
    assert a.distance(a) == 0
    assert a.distance(b) == b.distance(a) == a - b == hamming(a.value, b.value)
    assert 0 <= a.distance(b) <= HASH_BITS
    assert (a.distance(b) == 0) == (a == b)
    assert a.distance(c) <= a.distance(b) + b.distance(c)


@given(h=hashes, bits=st.sets(st.integers(0, HASH_BITS - 1)))
def test_distance_counts_flipped_bits(h: PHash, bits: set[int]) -> None:
    assert h.distance(flip(h, bits)) == len(bits)


# --- pHash of real images -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_photos(photos: list[Path]) -> list[Image.Image]:
    """Twenty photos spread across the dataset's classes."""
    images = []
    for path in photos[:: max(1, len(photos) // 20)][:20]:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def drawn_images() -> list[Image.Image]:
    """Images in the modes and sizes the photos do not cover."""
    gradient = Image.linear_gradient("L").resize((300, 200))
    shapes = Image.new("RGBA", (64, 97), (20, 40, 200, 128))
    ImageDraw.Draw(shapes).ellipse((5, 10, 50, 80), fill=(250, 200, 0, 255))
    return [gradient, shapes, gradient.convert("P"), Image.new("RGB", (31, 17), (200, 10, 10))]


def test_phash_is_imagehash_bit_for_bit(sample_photos: list[Image.Image]) -> None:
    for image in [*sample_photos, *drawn_images()]:
        assert phash(image).hex == str(imagehash.phash(image))


def test_every_photo_hash_has_its_dc_bit_set_and_half_its_bits_on(sample_photos: list[Image.Image]) -> None:
    # The DC term (the mean) always exceeds the median of the 64 coefficients, and exactly half
    # of them lie above the median: why distances between pHashes are always even.
    for image in sample_photos:
        value = phash(image).value
        assert value >> (HASH_BITS - 1) == 1
        assert value.bit_count() == HASH_BITS // 2


def _recompressed(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_edited_copies_stay_close_and_different_photos_stay_far(sample_photos: list[Image.Image]) -> None:
    # given each photo's pHash and the pHashes of a q=30 JPEG and a half-size copy of it
    originals = [phash(image) for image in sample_photos]
    copies = [
        distance
        for image, original in zip(sample_photos, originals, strict=True)
        for distance in (
            original - phash(_recompressed(image, quality=30)),
            original - phash(image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)),
        )
    ]
    different = [a - b for a, b in itertools.combinations(originals, 2)]

    # then copies land within a few bits (measured: median 0, max 2 on these photos; 4 on all 500),
    assert statistics.median(copies) <= 2
    assert max(copies) <= 6
    # different photos far apart (measured: min 22, median 32; min 14 over all 500 photos),
    assert min(different) >= 12
    assert statistics.median(different) >= 28
    # and the two never overlap
    assert max(copies) < min(different)
