"""Which pHash segment layout should the hash index use, and at what duplicate distance?

Measures, for candidate ``SegmentLayout``s and query distances r:
  1. how many non-duplicates the terms rule ("share at least m - r segments") lets through,
     per query and per million stored hashes, on uniform random hashes (DC bit forced to 1,
     as in every real pHash) and on the real pHashes of different photos (the 500 dataset
     photos, and their quarters), and how many posting entries an inverted index reads;
  2. how far the pHash of an edited copy lands from the original (JPEG, downscale,
     watermark, trimmed letterbox, grayscale, brightness, crop, flip), against the
     distances between different photos.

Prints the tables and writes bench-results/hash_layouts.json. docs/hash-layout.md explains
the figures and the choice of DEFAULT_LAYOUT. Run from the repository root:

    .venv/bin/python benchmarks/hash_layouts.py
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from lookalike.borders import trim_borders
from lookalike.hashing import DEFAULT_LAYOUT, HASH_BITS, SegmentLayout, phash

log = logging.getLogger("hash_layouts")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_DIR = REPO_ROOT.parent / "shared" / "datasets" / "imagenet-samples-odd"
RESULTS_PATH = REPO_ROOT / "bench-results" / "hash_layouts.json"

#: imagehash's DCT coefficient [0, 0] is the image mean: always above the median, so always 1.
DC_BIT = np.uint64(1 << (HASH_BITS - 1))
DISTANCES = (4, 6, 8, 10)
PERCENTILES = (50, 90, 95, 99)
#: Distances at which the tables count how many copies (and different photos) fall within.
RECALL_DISTANCES = (2, 4, 6, 8, 10, 12, 14)

LAYOUTS: dict[str, SegmentLayout] = {
    "8x8": SegmentLayout((8,) * 8),
    "8+7x8": SegmentLayout((8,) + (7,) * 8),  # 7 informative bits per segment (DC in the first)
    "6x9+5x2": SegmentLayout((6,) * 9 + (5,) * 2),
    "6x4+5x8": SegmentLayout((6,) * 4 + (5,) * 8),
    "5x12+4": SegmentLayout((5,) * 12 + (4,)),
    "5x8+4x6": SegmentLayout((5,) * 8 + (4,) * 6),
    "4x16": SegmentLayout((4,) * 16),
    "4+3x20": SegmentLayout((4,) + (3,) * 20),  # 3 informative bits per segment
    "3x21+1": SegmentLayout((3,) * 21 + (1,)),
    "2x32": SegmentLayout((2,) * 32),
}

Transform = Callable[[Image.Image], Image.Image]
U64Array = npt.NDArray[np.uint64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


# --- 1. How many random candidates a layout admits ------------------------------------------


def synthetic_hashes(count: int, rng: np.random.Generator) -> U64Array:
    """Uniform random 64-bit values with the DC bit set, like every real pHash."""
    values = rng.integers(0, np.iinfo(np.uint64).max, size=count, dtype=np.uint64, endpoint=True)
    return values | DC_BIT


def segment_rows(layout: SegmentLayout, values: U64Array, chunk: int = 1 << 17) -> npt.NDArray[Any]:
    """``layout.segment_matrix`` transposed to (m, n) in the narrowest dtype, built chunk by chunk.

    One contiguous row per segment makes the per-query scan a handful of byte compares,
    and chunking keeps the int64 intermediate out of the way at a million rows.
    """
    rows = np.empty((layout.count, len(values)), dtype=np.min_scalar_type((1 << max(layout.widths)) - 1))
    for start in range(0, len(values), chunk):
        rows[:, start : start + chunk] = layout.segment_matrix(values[start : start + chunk]).T
    return rows


def matched_histogram(rows: npt.NDArray[Any], query: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """How many stored hashes share exactly k segments with ``query``, for k = 0..m."""
    shared = np.zeros(rows.shape[1], dtype=np.uint8)
    for segment, value in zip(rows, query, strict=True):
        shared += segment == value
    return np.bincount(shared, minlength=len(rows) + 1)


def collision_probabilities(layout: SegmentLayout) -> list[float]:
    """Chance that a segment of two independent uniform hashes (DC bit fixed) is equal."""
    probabilities = [2.0**-w for w in layout.widths]
    probabilities[0] *= 2  # the first segment holds the constant DC bit
    return probabilities


def admitted_probability(layout: SegmentLayout, r: int) -> float:
    """Exact P(at least m - r segments equal) for uniform hashes (a Poisson-binomial tail)."""
    distribution = np.array([1.0])
    for p in collision_probabilities(layout):
        distribution = np.convolve(distribution, [1 - p, p])
    return float(distribution[layout.count - r :].sum())


def pair_histograms(layout: SegmentLayout, values: U64Array, pairs: dict[str, BoolArray]) -> dict[str, IntArray]:
    """For each named set of pairs (a mask over values x values), how many pairs share k segments."""
    shared = np.zeros((len(values), len(values)), dtype=np.uint8)
    for column in layout.segment_matrix(values).T:
        shared += column[:, None] == column[None, :]
    return {name: np.bincount(shared[mask], minlength=layout.count + 1) for name, mask in pairs.items()}


def candidate_table(db_size: int, query_count: int, real: RealHashes, rng: np.random.Generator) -> list[dict[str, Any]]:
    stored = synthetic_hashes(db_size, rng)
    queries = synthetic_hashes(query_count, rng)
    pairs = real.different_photo_pairs()
    table = []
    for name, layout in LAYOUTS.items():
        m = layout.count
        started = time.perf_counter()
        rows = segment_rows(layout, stored)
        synthetic = np.zeros(m + 1, dtype=np.int64)
        for query in segment_rows(layout, queries).T:
            synthetic += matched_histogram(rows, query)
        real_matched = pair_histograms(layout, real.values, pairs)
        probabilities = sorted(collision_probabilities(layout))
        log.info("%s: %.1f s", name, time.perf_counter() - started)
        for r in DISTANCES:
            if r >= m:
                continue
            need = m - r
            row = {
                "layout": name,
                "widths": list(layout.widths),
                "segments": m,
                "r": r,
                "minimum_should_match": need,
                "uniform_expected_per_million": 1e6 * admitted_probability(layout, r),
                "uniform_measured_per_million": 1e6 * synthetic[need:].sum() / (query_count * db_size),
                # Work of an inverted index: every posting list of the query's m terms, or at
                # least the r + 1 shortest ones (a match must appear in one of any r + 1).
                "postings_all_per_million": 1e6 * sum(probabilities),
                "postings_lead_per_million": 1e6 * sum(probabilities[: r + 1]),
            }
            for pair_set, histogram in real_matched.items():
                total = histogram.sum()
                row[f"{pair_set}_per_million"] = 1e6 * histogram[need:].sum() / total
                row[f"{pair_set}_postings_per_million"] = 1e6 * float(np.arange(m + 1) @ histogram) / total
            table.append(row)
    return table


# --- 2. How far edited copies land ----------------------------------------------------------


def jpeg(quality: int) -> Transform:
    def transform(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue()))

    return transform


def downscale(factor: float) -> Transform:
    def transform(image: Image.Image) -> Image.Image:
        size = (round(image.width * factor), round(image.height * factor))
        return image.resize(size, Image.Resampling.BICUBIC)  # most editors' default, as in lookalike.edits

    return transform


def watermark(image: Image.Image) -> Image.Image:
    """'© SAMPLE' in half-transparent white across 80 % of the width, centred."""
    text = "© SAMPLE"
    probe = ImageFont.load_default(size=100)
    left, _, right, _ = probe.getbbox(text)
    font = ImageFont.load_default(size=max(8, round(100 * 0.8 * image.width / (right - left))))
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    ImageDraw.Draw(overlay).text(
        (image.width / 2, image.height / 2), text, font=font, fill=(255, 255, 255, 128), anchor="mm"
    )
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


LETTERBOX_BAR = 0.15


def letterbox(image: Image.Image) -> Image.Image:
    """Black bars of 15 % of the height above and below, saved as a JPEG (q=90) like an upload."""
    bar = round(image.height * LETTERBOX_BAR)
    canvas = Image.new("RGB", (image.width, image.height + 2 * bar))
    canvas.paste(image, (0, bar))
    return jpeg(90)(canvas)


def centre_crop(image: Image.Image) -> Image.Image:
    """Keep the central 90 % of each side (5 % cut from every edge)."""
    dx, dy = round(image.width * 0.05), round(image.height * 0.05)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def trimmed(image: Image.Image) -> Image.Image:
    return trim_borders(image).image


TRANSFORMS: dict[str, Transform] = {
    "jpeg q=20": jpeg(20),
    "downscale 0.5x": downscale(0.5),
    "downscale 0.25x": downscale(0.25),
    "text watermark": watermark,
    "letterbox, trimmed": lambda image: trimmed(letterbox(image)),
    "letterbox, both trimmed": lambda image: trimmed(letterbox(image)),
    "letterbox, untrimmed": letterbox,
    "grayscale": ImageOps.grayscale,
    "brightness +20%": lambda image: ImageEnhance.Brightness(image).enhance(1.2),
    "centre crop 10%": centre_crop,
    "horizontal flip": ImageOps.mirror,
}
#: Copies compared with the trimmed original rather than the original: what the indexer, which
#: trims every upload before hashing it, compares.
AGAINST_TRIMMED_ORIGINAL = frozenset({"letterbox, both trimmed"})


def quadrants(image: Image.Image) -> list[Image.Image]:
    """The four quarters of a photo: more distinct natural images for the different-photo statistics."""
    w, h = image.width // 2, image.height // 2
    return [image.crop((x, y, x + w, y + h)) for x in (0, w) for y in (0, h)]


@dataclass(frozen=True)
class PhotoHashes:
    original: int
    trimmed_original: int
    quarters: list[int]
    copies: dict[str, int]
    trims: tuple[str, str]  # what trim_borders removed from the original, and from its letterbox


def photo_hashes(path: Path) -> PhotoHashes:
    """The pHashes of one photo, of its quadrants and of each of its edited copies."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    original_trim = trim_borders(image)
    return PhotoHashes(
        original=phash(image).value,
        trimmed_original=phash(original_trim.image).value,
        quarters=[phash(quarter).value for quarter in quadrants(image)],
        copies={name: phash(edit(image)).value for name, edit in TRANSFORMS.items()},
        trims=(original_trim.kind, trim_borders(letterbox(image)).kind),
    )


@dataclass(frozen=True)
class RealHashes:
    """pHashes of the dataset photos (``whole``) and of their quadrants, with the photo each came from."""

    values: U64Array
    source: IntArray
    whole: BoolArray

    def different_photo_pairs(self) -> dict[str, BoolArray]:
        """Masks over values x values: each unordered pair once, never two pieces of one photo."""
        n = len(self.values)
        different = np.triu(np.ones((n, n), dtype=bool), k=1) & (self.source[:, None] != self.source[None, :])
        return {"photos": different & np.outer(self.whole, self.whole), "photos_quadrants": different}


def quantile(values: npt.NDArray[Any], percent: float) -> int:
    """The smallest distance that ``percent`` % of the values do not exceed."""
    return int(np.percentile(values, percent, method="inverted_cdf"))


def distance_tables(photos: Sequence[Path], workers: int) -> tuple[RealHashes, dict[str, Any]]:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(photo_hashes, photos, chunksize=8))
    originals = np.array([photo.original for photo in results], dtype=np.uint64)
    trimmed_originals = np.array([photo.trimmed_original for photo in results], dtype=np.uint64)
    copies: dict[str, Any] = {}
    for name in TRANSFORMS:
        reference = trimmed_originals if name in AGAINST_TRIMMED_ORIGINAL else originals
        distances = np.bitwise_count(reference ^ np.array([photo.copies[name] for photo in results], dtype=np.uint64))
        copies[name] = {
            **{f"p{p}": quantile(distances, p) for p in PERCENTILES},
            "max": int(distances.max()),
            "within": {r: float(np.mean(distances <= r)) for r in RECALL_DISTANCES},
        }

    real = RealHashes(
        values=np.array([h for photo in results for h in (photo.original, *photo.quarters)], dtype=np.uint64),
        source=np.repeat(np.arange(len(results)), 5),
        whole=np.tile([True, False, False, False, False], len(results)),
    )
    all_distances = np.bitwise_count(real.values[:, None] ^ real.values[None, :])
    different: dict[str, Any] = {}
    for pair_set, mask in real.different_photo_pairs().items():
        between = all_distances[mask]
        different[pair_set] = {
            "pairs": len(between),
            "min": int(between.min()),
            **{f"p{p}": quantile(between, p) for p in (0.1, 1, 5, 50)},
            "within": {r: int(np.sum(between <= r)) for r in RECALL_DISTANCES},
            "odd_distances": int(np.sum(between % 2)),
        }
    weights = sorted({int(w) for w in np.bitwise_count(real.values)})
    trims = {
        "originals": Counter(photo.trims[0] for photo in results),
        "letterboxed": Counter(photo.trims[1] for photo in results),
    }
    return real, {"copies": copies, "different_photos": different, "hamming_weights": weights, "trims": trims}


# --- Report ---------------------------------------------------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if index == 0:
            print("  ".join("-" * w for w in widths))


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return str(value)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--hashes", type=int, default=1_000_000, help="synthetic hashes stored")
    parser.add_argument("--queries", type=int, default=500, help="synthetic queries per layout")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="hashing processes")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    photos = sorted(DATASET_DIR.glob("*.JPEG"))
    if not photos:
        raise SystemExit(f"no photos in {DATASET_DIR}")
    started = time.perf_counter()
    real, distances = distance_tables(photos, args.workers)
    log.info("hashed %d photos, their quadrants and copies in %.1f s", len(photos), time.perf_counter() - started)
    candidates = candidate_table(args.hashes, args.queries, real, np.random.default_rng(args.seed))
    elapsed = time.perf_counter() - started

    print(f"\nDistance from the original's pHash, {len(photos)} photos")
    print_table(
        ["copy", *(f"p{p}" for p in PERCENTILES), "max", *(f"<={r}" for r in RECALL_DISTANCES)],
        [
            [
                name,
                *(row[f"p{p}"] for p in PERCENTILES),
                row["max"],
                *(f"{row['within'][r]:.1%}" for r in RECALL_DISTANCES),
            ]
            for name, row in distances["copies"].items()
        ],
    )
    trims = "; ".join(
        f"{images}: " + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
        for images, kinds in distances["trims"].items()
    )
    print(f"Borders trim_borders removed ({trims}). 'both trimmed' compares with the trimmed original.")
    print("\nDistance between different photos (all pairs; quadrants: pieces of different photos)")
    print_table(
        ["pairs of", "pairs", "min", "p0.1", "p1", "p5", "p50", *(f"<={r}" for r in RECALL_DISTANCES)],
        [
            [
                pair_set,
                f"{row['pairs']:,}",
                row["min"],
                *(row[f"p{p}"] for p in (0.1, 1, 5, 50)),
                *(row["within"][r] for r in RECALL_DISTANCES),
            ]
            for pair_set, row in distances["different_photos"].items()
        ],
    )
    odd = sum(row["odd_distances"] for row in distances["different_photos"].values())
    print(f"Hamming weights of every pHash: {distances['hamming_weights']}; odd distances: {odd}")

    print(
        "\nCandidates admitted per query per million stored hashes (msm = minimum_should_match = m - r)\n"
        f"  uniform exp / uniform: {args.hashes:,} random hashes with the DC bit set: exact expectation / "
        f"measured over {args.queries} queries\n"
        "  photos / +quadrants: share of the different-photo pairs of real pHashes, times a million\n"
        "  postings: entries an inverted index reads: all m lists or the r+1 shortest (uniform), all m lists (photos)"
    )
    print_table(
        [
            "layout",
            "m",
            "r",
            "msm",
            "uniform exp",
            "uniform",
            "photos",
            "+quadrants",
            "postings",
            "r+1 lists",
            "photos",
        ],
        [
            [
                row["layout"] + (" *" if tuple(row["widths"]) == DEFAULT_LAYOUT.widths else ""),
                row["segments"],
                row["r"],
                row["minimum_should_match"],
                row["uniform_expected_per_million"],
                row["uniform_measured_per_million"],
                row["photos_per_million"],
                row["photos_quadrants_per_million"],
                row["postings_all_per_million"],
                row["postings_lead_per_million"],
                row["photos_postings_per_million"],
            ]
            for row in candidates
        ],
    )
    pairs = {name: row["pairs"] for name, row in distances["different_photos"].items()}
    print(
        "* = DEFAULT_LAYOUT. One pair is "
        + ", ".join(f"{1e6 / n:.2f} per million of {name}" for name, n in pairs.items())
        + f". {elapsed:.0f} s on {os.cpu_count()} cores."
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": ".venv/bin/python benchmarks/hash_layouts.py",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "photos": len(photos),
        "default_layout": list(DEFAULT_LAYOUT.widths),
        "distances": distances,
        "candidates": candidates,
        "seconds": round(elapsed, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
