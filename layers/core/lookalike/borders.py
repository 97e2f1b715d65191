"""Remove the borders a copy gained (letterbox, pillarbox, frames, screenshot padding) before
both signatures are computed: a border moves a pHash by 12 to 32 bits (MEASUREMENTS.md),
trimming it brings the copy back within a few.

A border is a run of lines (rows from the top or bottom, columns from the left or right) in
which nearly every pixel matches a border colour: the colour of an outermost line that is
itself uniform. Robust statistics keep JPEG noise and stray pixels from stopping a trim; five
guards keep it out of content, because a night sky or a plain backdrop can look like a border:

* flat: the run must be flat on average, not merely within tolerance (sensor noise is not);
* thick: at least 1% of the side (2 px minimum), unless every pixel is exactly one colour;
* an edge: just past the run, a clear share of pixels must differ (content fading gradually
  into the border colour, like a moon rising out of a black sky, is a photograph);
* paired: borders come in pairs or frames, so a band on one side only must end at a sharp edge;
* bounded: at most ``max_trim_fraction`` of an axis goes unless the kept region starts with
  a sharp edge on every trimmed side, and at least ``min_remaining`` of it always stays.

What still gets trimmed is what no local rule can tell from a border: a backdrop that is
exactly flat (a rendering on pure black, a product on clipped white). Index and query trim it
alike, so copies still match.

>>> photo = Image.effect_noise((200, 100), 60).convert("RGB")
>>> letterboxed = Image.new("RGB", (200, 140))
>>> letterboxed.paste(photo, (0, 20))
>>> trimmed = trim_borders(letterboxed)
>>> trimmed.box, trimmed.kind
((0, 20, 200, 120), 'black')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image

TrimKind = Literal["none", "black", "uniform"]
Colour = tuple[int, int, int]

_MATCHING_SHARE: Final = 0.98  # of a line's pixels within tolerance of a border colour
_MAX_DEVIATION: Final = 4.0  # mean distance to the border colour over a whole run
_EDGE_SHARE: Final = 0.10  # of the pixels just past a run that must differ from the border
_CLEAR_EDGE_SHARE: Final = 0.50  # ... for a trim beyond max_trim_fraction
_MIN_KEPT_PIXELS: Final = 16
_BLACK_LEVEL: Final = 40  # a border colour whose channels are all at most this is black
_SAMPLES_PER_LINE: Final = 256  # pixels sampled along each line: the statistics need no more

_Pixels = npt.NDArray[np.int16]
_Shares = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Trimmed:
    image: Image.Image  # the kept region (the input image itself when nothing was trimmed)
    box: tuple[int, int, int, int]  # (left, top, right, bottom) of the kept region in the input
    kind: TrimKind

    @property
    def trimmed(self) -> bool:
        return self.kind != "none"


@dataclass(frozen=True, slots=True)
class _Rules:
    tolerance: int
    max_trim_fraction: float
    min_remaining: float


class _Side(NamedTuple):
    run: int  # lines of border to remove (0: none)
    edge: float  # share of non-border pixels just past the run


def trim_borders(
    image: Image.Image,
    *,
    tolerance: int = 24,
    max_trim_fraction: float = 0.4,
    min_remaining: float = 0.25,
) -> Trimmed:
    """Remove uniform borders (black or any flat colour) from the edges of ``image``.

    ``tolerance`` is the largest per-channel difference from the border colour that still
    counts as border (JPEG ringing beside a black bar reaches 10 to 20 grey levels at low
    quality).
    ``max_trim_fraction`` bounds what each axis loses unless the content edge is sharp;
    ``min_remaining`` is the share of each side that always stays. A uniform image, and any
    image smaller than 16 px on a side, comes back untrimmed.
    """
    width, height = image.size
    untrimmed = Trimmed(image, (0, 0, width, height), "none")
    if min(width, height) < _MIN_KEPT_PIXELS:
        return untrimmed
    # Every row with a sample of its pixels, and every column likewise: nearest-neighbour
    # resizing picks the samples without converting the whole image to an array.
    rows = _sampled(image, (min(width, _SAMPLES_PER_LINE), height))
    columns = _sampled(image, (width, min(height, _SAMPLES_PER_LINE))).transpose(1, 0, 2)
    outer_lines = {"top": rows[0], "bottom": rows[-1], "left": columns[0], "right": columns[-1]}
    side_colours = {side: _uniform_colour(line, tolerance) for side, line in outer_lines.items()}
    colours = _distinct([colour for colour in side_colours.values() if colour is not None], tolerance)
    if not colours:
        return untrimmed

    rules = _Rules(tolerance, max_trim_fraction, min_remaining)
    top, bottom = _axis_trim(rows, colours, rules)
    left, right = _axis_trim(columns, colours, rules)
    sides = {"top": top, "bottom": bottom, "left": left, "right": right}
    trimmed = {name: side for name, side in sides.items() if side.run}
    if not trimmed:
        return untrimmed
    # Real borders come in pairs or frames; a band on one side only (an overcast sky, a
    # backdrop) must end at an unmistakable edge to count.
    if len(trimmed) == 1 and next(iter(trimmed.values())).edge < _CLEAR_EDGE_SHARE:
        return untrimmed

    box = (left.run, top.run, width - right.run, height - bottom.run)
    used = [colour for name in trimmed if (colour := side_colours[name]) is not None] or colours
    kind: TrimKind = "black" if all(max(colour) <= _BLACK_LEVEL for colour in used) else "uniform"
    return Trimmed(image.crop(box), box, kind)


def _sampled(image: Image.Image, size: tuple[int, int]) -> _Pixels:
    sample = image.resize(size, Image.Resampling.NEAREST)
    return np.asarray(sample if sample.mode == "RGB" else sample.convert("RGB")).astype(np.int16)


def _uniform_colour(line: _Pixels, tolerance: int) -> Colour | None:
    """The line's median colour when nearly all of the line is that colour, else None."""
    median = np.median(line, axis=0)
    matching = np.abs(line - median).max(axis=1) <= tolerance
    if matching.mean() < _MATCHING_SHARE:
        return None
    red, green, blue = (round(float(channel)) for channel in median)
    return red, green, blue


def _distinct(colours: list[Colour], tolerance: int) -> list[Colour]:
    kept: list[Colour] = []
    for colour in colours:
        if all(max(abs(a - b) for a, b in zip(colour, other, strict=True)) > tolerance for other in kept):
            kept.append(colour)
    return kept


def _distances(lines: _Pixels, colours: list[Colour]) -> _Pixels:
    """For lines of shape (n, samples, 3): each pixel's largest channel difference to the
    nearest border colour, shape (n, samples)."""
    nearest: _Pixels | None = None
    for colour in colours:
        red, green, blue = (np.abs(lines[..., channel] - colour[channel]) for channel in range(3))
        distance = np.maximum(np.maximum(red, green), blue)
        nearest = distance if nearest is None else np.minimum(nearest, distance)
    assert nearest is not None, "called with at least one colour"
    return nearest


def _axis_trim(lines: _Pixels, colours: list[Colour], rules: _Rules) -> tuple[_Side, _Side]:
    """The borders at the start and at the end of one axis.

    ``lines`` holds one entry per line of the axis (rows, or columns), each a sample of its pixels.
    """
    length = lines.shape[0]
    distances = _distances(lines, colours)
    matching = (distances <= rules.tolerance).mean(axis=1)
    lookahead = max(3, math.ceil(0.01 * length))
    lead = _side(matching, distances, lines, lookahead)
    trail = _side(matching[::-1], distances[::-1], lines[::-1], lookahead)
    none = _Side(0, 0.0)
    if length - lead.run - trail.run < max(_MIN_KEPT_PIXELS, rules.min_remaining * length):
        return none, none
    if lead.run + trail.run > rules.max_trim_fraction * length and not all(
        side.edge >= _CLEAR_EDGE_SHARE for side in (lead, trail) if side.run
    ):
        return none, none
    return lead, trail


def _side(matching: _Shares, distances: _Pixels, lines: _Pixels, lookahead: int) -> _Side:
    """The border run at the start of the lines, or none when it fails a guard."""
    length = matching.shape[0]
    not_border = np.flatnonzero(matching < _MATCHING_SHARE)
    run = int(not_border[0]) if not_border.size else length
    none = _Side(0, 0.0)
    if run == 0 or run == length:  # no border, or a uniform image: nothing to trim
        return none
    if float(distances[:run].mean()) > _MAX_DEVIATION:
        return none
    if run < max(2, math.ceil(0.01 * length)) and not _exactly_one_colour(lines[:run]):
        return none
    edge = _edge_share(matching, run, lookahead)
    return _Side(run, edge) if edge >= _EDGE_SHARE else none


def _edge_share(matching: _Shares, run: int, lookahead: int) -> float:
    """The largest share of non-border pixels among the lines just past the run."""
    return float(1.0 - matching[run : run + lookahead].min())


def _exactly_one_colour(lines: _Pixels) -> bool:
    flat = lines.reshape(-1, 3)
    return bool((flat == flat[0]).all())
