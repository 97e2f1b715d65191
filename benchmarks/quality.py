"""Issue 3's acceptance measurement: are edited uploads found, and are strangers left alone?

Indexes 450 of the 500 dataset photos (the last 50, by name, are kept out). Then, with the
service's default thresholds (``Settings.from_env()``: a calibrated thresholds.json in the
data directory, else the defaults in lookalike/thresholds.py):

- for a seeded sample of 50 indexed photos, searches with a JPEG quality-20 copy, a copy
  letterboxed with black bars (15 % of the height above and below) and a copy with a large
  half-transparent text watermark; counts the searches whose FIRST duplicate hit is the
  original (target: at least 98 % of each kind);
- searches with the 50 kept-out photos, as they are and with the same three edits; counts
  the searches answered with any exact or duplicate hit (target: at most 2 %).

A measurement, not a test: it prints PASS or MISS per line and exits 0 either way.
Run from the repository root (``make quality``):

    .venv/bin/python benchmarks/quality.py
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from lookalike.edits import edited_upload
from lookalike.evaluation import EVAL_OWNER, Gallery, build_gallery, load_photo, photo_files, split_held_out
from lookalike.services.search import SearchResult
from lookalike.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_DIR = REPO_ROOT.parent / "shared" / "datasets" / "imagenet-samples-odd"
EDITS = ("jpeg_q20", "letterbox_15", "text_watermark")
KEPT_OUT = 50
SAMPLE = 50
FOUND_TARGET = 0.98
FALSE_MATCH_TARGET = 0.02


@dataclass
class Line:
    """One row of the table: how many searches of one kind met the criterion."""

    label: str
    criterion: str
    target: float
    at_least: bool  # the share must be >= target (else <= target)
    hits: int = 0
    searches: int = 0
    misses: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.hits / self.searches if self.searches else float("nan")

    @property
    def passed(self) -> bool:
        return self.share >= self.target if self.at_least else self.share <= self.target


def _first_duplicate(result: SearchResult) -> str:
    return result.duplicates[0].key if result.duplicates else "(no duplicate)"


def measure(
    gallery: Gallery, sample: Sequence[tuple[Path, str]], kept_out: Sequence[tuple[Path, str]], seed: int
) -> list[Line]:
    """Search with the edits of ``sample`` and with ``kept_out`` as they are and edited."""
    searcher = gallery.services.searcher
    found = {e: Line(f"indexed photo, {e}", "original is the first duplicate", FOUND_TARGET, True) for e in EDITS}
    wrong = {
        kind: Line(f"kept-out photo, {kind}", "called a duplicate of anything", FALSE_MATCH_TARGET, False)
        for kind in ("unedited", *EDITS)
    }
    total = Line("kept-out photos, all four", "called a duplicate of anything", FALSE_MATCH_TARGET, False)
    with Progress(transient=True) as progress:
        task = progress.add_task("searching", total=len(sample) * len(EDITS) + len(kept_out) * (len(EDITS) + 1))
        for path, name in sample:
            image, original = load_photo(path), gallery.key_of(name)
            for edit in EDITS:
                result = searcher.search_image(edited_upload(image, edit, seed=seed, photo_name=name), EVAL_OWNER)
                line = found[edit]
                line.searches += 1
                if _first_duplicate(result) == original:
                    line.hits += 1
                else:
                    line.misses.append(f"{name} ({edit}): first duplicate {_first_duplicate(result)}")
                progress.advance(task)
        for path, name in kept_out:
            image = load_photo(path)
            uploads = {"unedited": path.read_bytes()}
            uploads |= {e: edited_upload(image, e, seed=seed, photo_name=name) for e in EDITS}
            for kind, data in uploads.items():
                result = searcher.search_image(data, EVAL_OWNER)
                called = [h.key for h in (*result.exact, *result.duplicates)]
                for line in (wrong[kind], total):
                    line.searches += 1
                    line.hits += bool(called)
                if called:
                    total.misses.append(f"{name} ({kind}): called a duplicate of {', '.join(called[:3])}")
                progress.advance(task)
    return [*found.values(), *wrong.values(), total]


def print_table(console: Console, lines: Sequence[Line], settings: Settings) -> None:
    t = settings.thresholds
    table = Table(
        title=(
            f"issue 3 acceptance (thresholds: pHash distance <= {t.duplicate_distance}, "
            f"cosine >= {t.duplicate_similarity})"
        ),
        title_justify="left",
    )
    for column in ("searches", "criterion", "count", "share", "target", "result"):
        table.add_column(column, justify="right" if column in ("count", "share", "target") else "left")
    for line in lines:
        sign = ">=" if line.at_least else "<="
        table.add_row(
            line.label,
            line.criterion,
            f"{line.hits}/{line.searches}",
            f"{100 * line.share:.1f}%",
            f"{sign} {100 * line.target:.0f}%",
            "[green]PASS[/]" if line.passed else "[red]MISS[/]",
        )
    console.print(table)
    for line in lines:
        for miss in line.misses:
            console.print(f"  [dim]{miss}[/]", highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DATASET_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    settings = Settings.from_env()
    gallery_photos, kept_out = split_held_out(photo_files(args.dataset), KEPT_OUT)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lookalike-quality-") as temp:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"indexing {len(gallery_photos)} photos", total=len(gallery_photos))
            gallery = build_gallery(
                settings, Path(temp), gallery_photos, on_indexed=lambda n: progress.advance(task, n)
            )
        indexed = time.perf_counter() - started
        sample = sorted(random.Random(args.seed).sample(gallery_photos, SAMPLE), key=lambda p: p[1])
        lines = measure(gallery, sample, kept_out, args.seed)
        gallery.close()
    print_table(console, lines, settings)
    console.print(
        f"{len(gallery.keys)} photos indexed in {indexed:.0f} s; "
        f"{sum(line.searches for line in lines[: len(EDITS)]) + lines[-1].searches} searches; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
