"""`lookalike eval`: is the original found, and is a stranger ever called a duplicate?

A gallery is indexed from a folder of photos through the real :class:`IndexService` (in a
fresh temporary data directory, or ``--gallery-dir`` to keep and reuse it). Every edit of
:mod:`lookalike.edits` applied to every gallery photo is then searched for through the real
:class:`SearchService`; so are held-out photos that are *not* in the gallery, as they are and
edited, for which any duplicate answer is a false match.

Searches run with permissive thresholds (pHash distance up to the segment layout's maximum,
duplicate similarity 1, minimum similarity 0, a page of 100) so the answer carries the raw
signals of every candidate that matters: each hit has its Hamming distance and cosine
similarity, and the hits cover every candidate within the largest distance plus at least the
100 nearest vectors. Ranks and tiers at any other thresholds are recomputed from those
signals with the service's own rules (``Thresholds.is_duplicate``: distance <= d, *or*
similarity >= s, *or* both within their slack; order = similarity, then distance, then
key), so one pass over the queries serves every threshold in the calibration grid.

Query signatures are computed in batches (one model run per 16 queries) before the searches:
:class:`PrecomputedSignatures` hands the service the signature of bytes it has already seen,
so ``SearchService.search_image`` runs unchanged without embedding one image at a time.

Run ``lookalike eval --help`` for the options; docs/quality.md shows a run and explains it.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from lookalike.edits import edited_upload, select_edits
from lookalike.errors import ImageRejected
from lookalike.hashing import DEFAULT_LAYOUT, HASH_BITS, PHash
from lookalike.identity import content_sha256
from lookalike.keys import owner_key
from lookalike.services.search import MAX_PAGE_SIZE, SearchResult, SearchService
from lookalike.settings import LOCAL_BUCKET, THRESHOLDS_FILE, Settings, save_thresholds
from lookalike.signatures import SignatureExtractor, Signatures
from lookalike.thresholds import (
    JOINT_DISTANCE_SLACK,
    JOINT_SIMILARITY_SLACK,
    SCALABLE_DUPLICATE_DISTANCE,
    Thresholds,
)

if TYPE_CHECKING:
    from rich.console import Console

    from lookalike.bootstrap import Services

logger = logging.getLogger(__name__)

Tier = Literal["hash", "vector", "fused"]
TIERS: tuple[Tier, ...] = ("hash", "vector", "fused")
FloatArray = npt.NDArray[np.float64]

EVAL_OWNER = "eval"
#: The held-out photo searched for as it is, beside its edits.
UNEDITED = "unedited"
BATCH = 16
#: Thresholds that let every signal through, so that the answers carry the raw scores.
PERMISSIVE = Thresholds(duplicate_distance=DEFAULT_LAYOUT.max_distance, duplicate_similarity=1.0, min_similarity=0.0)
#: A candidate whose distance is unknown, or no candidate at all: farther than any threshold.
FAR = HASH_BITS + 1
#: The calibration grid: every distance the layout guarantees, cosine in steps of 0.0025.
DISTANCE_GRID = np.arange(0, DEFAULT_LAYOUT.max_distance + 1)
SIMILARITY_GRID = np.round(np.arange(0.30, 1.0 + 1e-9, 0.0025), 4)
RECALL_DEPTHS = (1, 10)


# --- the gallery -----------------------------------------------------------------------------


def load_photo(path: Path) -> Image.Image:
    """A photo file as the RGB image a person would edit (EXIF orientation applied)."""
    with Image.open(path) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


def photo_files(folder: Path) -> list[tuple[Path, str]]:
    """(file, name) of every file under ``folder``, sorted by name (see ``lookalike.cli.image_files``)."""
    from lookalike.cli import image_files

    return list(image_files([folder]))


def split_held_out(
    photos: Sequence[tuple[Path, str]], held_out_count: int
) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """The gallery and the held-out photos: the last ``held_out_count`` (by name) stay out."""
    if not 0 <= held_out_count < len(photos):
        raise ValueError(f"cannot hold out {held_out_count} of {len(photos)} photos and keep a gallery")
    cut = len(photos) - held_out_count
    return list(photos[:cut]), list(photos[cut:])


def embedded_settings(settings: Settings, data_dir: Path) -> Settings:
    """``settings`` pointed at embedded stores in ``data_dir``: an evaluation never writes elsewhere."""
    return replace(
        settings,
        data_dir=data_dir,
        bucket=LOCAL_BUCKET,
        milvus_uri=None,
        milvus_token=None,
        milvus_token_secret_arn=None,
        opensearch_url=None,
        opensearch_auth="none",
    )


@dataclass
class Gallery:
    """The indexed photos, in key order, with what the evaluation needs to know about them."""

    services: Services
    owner: str
    keys: list[str]
    phashes: list[PHash]
    vectors: npt.NDArray[np.float32]  # (len(keys), dimension), row i for keys[i]
    rejected: dict[str, str] = field(default_factory=dict)  # key -> why it was rejected

    def __post_init__(self) -> None:
        self.index_of = {key: i for i, key in enumerate(self.keys)}

    def key_of(self, name: str) -> str:
        return owner_key(self.owner, name, self.services.settings.owner_prefix)

    def close(self) -> None:
        self.services.close()


def build_gallery(
    settings: Settings,
    data_dir: Path,
    photos: Sequence[tuple[Path, str]],
    *,
    owner: str = EVAL_OWNER,
    on_indexed: Callable[[int], None] | None = None,
) -> Gallery:
    """Index ``photos`` under ``owner`` into embedded stores in ``data_dir``, through IndexService.

    Photos already indexed there with the same bytes and model are skipped; entries of the
    owner that are not in ``photos`` are removed, so the gallery is exactly ``photos``.
    """
    from lookalike.bootstrap import build_services
    from lookalike.services.indexing import IndexRequest

    services = build_services(embedded_settings(settings, data_dir))
    prefix = services.settings.owner_prefix
    wanted = {owner_key(owner, name, prefix): path for path, name in photos}
    for stale in [r.key for r in services.hashes.scan() if r.owner == owner and r.key not in wanted]:
        services.indexer.delete(stale)

    rejected: dict[str, str] = {}
    items = list(wanted.items())
    for batch in _chunks(items, BATCH):
        requests = [IndexRequest(key, path.read_bytes(), owner) for key, path in batch]
        for request, outcome in zip(requests, services.indexer.index_many(requests, skip_unchanged=True), strict=True):
            if isinstance(outcome, ImageRejected):
                rejected[request.key] = outcome.reason
                logger.warning("gallery photo %s rejected: %s", request.key, outcome.message)
        if on_indexed:
            on_indexed(len(batch))

    # Reopen the stores before searching: Milvus Lite searches rows written by this process
    # (an unsealed segment) several times slower than rows it loads from disk.
    services.close()
    services = build_services(embedded_settings(settings, data_dir))

    from lookalike.identity import image_id

    ids = {image_id(services.settings.bucket, key): key for key in wanted if key not in rejected}
    records = services.hashes.get(list(ids), owner)
    entries = services.vectors.get(list(ids), owner)
    keys = sorted(records[i].key for i in ids if i in records and i in entries)
    by_key = {records[i].key: i for i in ids if i in records}
    vectors = np.stack([entries[by_key[k]].vector for k in keys]).astype(np.float32)
    phashes = [PHash.from_hex(records[by_key[k]].phash) for k in keys]
    return Gallery(services, owner, keys, phashes, vectors, rejected)


# --- queries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    photo: str  # the photo's name in its folder
    edit: str  # an edit of lookalike.edits, or UNEDITED
    original: int | None  # row of the original in the gallery; None for a held-out photo
    data: bytes


def iter_queries(
    gallery: Gallery,
    queried: Sequence[tuple[Path, str]],
    held_out: Sequence[tuple[Path, str]],
    edits: Sequence[str],
    seed: int,
) -> Iterator[Query]:
    """Every edit of every queried gallery photo, then each held-out photo unedited and edited."""
    for path, name in queried:
        original = gallery.index_of.get(gallery.key_of(name))
        if original is None:
            continue  # rejected at indexing: nothing to find
        image = load_photo(path)
        for edit in edits:
            yield Query(name, edit, original, edited_upload(image, edit, seed=seed, photo_name=name))
    for path, name in held_out:
        data = path.read_bytes()
        yield Query(name, UNEDITED, None, data)
        try:
            image = load_photo(path)
        except (OSError, ValueError) as exc:
            logger.warning("held-out photo %s cannot be edited: %s", name, exc)
            continue
        for edit in edits:
            yield Query(name, edit, None, edited_upload(image, edit, seed=seed, photo_name=name))


class PrecomputedSignatures(SignatureExtractor):
    """A SignatureExtractor that serves signatures computed ahead, in one batch, by content.

    ``prepare`` embeds a batch of uploads in one model run; ``extract`` (what
    ``SearchService.search_image`` calls) then returns the prepared signature of the same
    bytes, or computes it when the bytes were not prepared.
    """

    def __init__(self, extractor: SignatureExtractor) -> None:
        super().__init__(extractor.model, extractor.limits)
        self._ready: dict[str, Signatures] = {}

    def prepare(self, blobs: Sequence[bytes]) -> list[Signatures | ImageRejected]:
        results = self.extract_many(blobs)
        self._ready = {s.sha256: s for s in results if isinstance(s, Signatures)}
        return results

    def extract(self, data: bytes) -> Signatures:
        ready = self._ready.get(content_sha256(data))
        return ready if ready is not None else super().extract(data)


@dataclass(frozen=True)
class QueryOutcome:
    """What one search said about the candidates that matter, and where the original stood."""

    photo: str
    edit: str
    original: int | None
    similarities: FloatArray  # per candidate hit, rounded as the service orders them
    distances: npt.NDArray[np.int64]  # per candidate hit (FAR when unknown)
    rows: npt.NDArray[np.int64]  # gallery row per candidate hit (keys sort as rows do)
    original_similarity: float  # the original's cosine (-1 for a held-out query)
    original_distance: int  # the original's pHash distance (FAR for a held-out query)
    search_seconds: float

    @property
    def held_out(self) -> bool:
        return self.original is None

    @property
    def wrong(self) -> npt.NDArray[np.bool_]:
        return self.rows != (-1 if self.original is None else self.original)

    @property
    def nearest_wrong_distance(self) -> int:
        return int(self.distances[self.wrong].min(initial=FAR))

    @property
    def best_wrong_similarity(self) -> float:
        return float(self.similarities[self.wrong].max(initial=-1.0))

    def best_wrong_similarity_within(self, distances: npt.NDArray[np.int64]) -> FloatArray:
        """For each distance r: the best cosine of a stranger at most r bits away (-1: none)."""
        wrong = self.wrong
        close = self.distances[wrong][None, :] <= distances[:, None]
        alike = np.where(close, self.similarities[wrong][None, :], -1.0)
        return np.asarray(alike.max(axis=1, initial=-1.0), dtype=np.float64)

    def original_rank(self, tier: Tier, limits: Thresholds) -> int | None:
        """The original's place (1 = first) among the tier's hits at ``limits``, None if absent.

        ``hash`` orders by distance then similarity; ``vector`` and ``fused`` (the service's
        duplicate tier) by similarity then distance; ties by key, as the service does.
        """
        if self.original is None:
            return None
        found = np.flatnonzero(self.rows == self.original)
        if found.size == 0:
            return None
        d, s = self.distances, self.similarities
        near, alike = d <= limits.duplicate_distance, s >= limits.duplicate_similarity
        agree = (d <= limits.duplicate_distance + JOINT_DISTANCE_SLACK) & (
            s >= limits.duplicate_similarity - JOINT_SIMILARITY_SLACK
        )
        inside = {"hash": near, "vector": alike, "fused": near | alike | agree}[tier]
        order = (d, -s, self.rows) if tier == "hash" else (-s, d, self.rows)
        me = int(found[0])
        if not inside[me]:
            return None
        ahead = np.zeros_like(inside)
        tied = np.ones_like(inside)
        for column in order:
            ahead |= tied & (column < column[me])
            tied &= column == column[me]
        return 1 + int((inside & ahead).sum())


def observe(query: Query, sig: Signatures, result: SearchResult, gallery: Gallery, seconds: float) -> QueryOutcome:
    hits = [*result.exact, *result.duplicates, *result.similar]
    rows = np.array([gallery.index_of.get(h.key, len(gallery.keys)) for h in hits], dtype=np.int64)
    similarities = np.array([-1.0 if h.similarity is None else round(h.similarity, 6) for h in hits])
    distances = np.array([FAR if h.distance is None else h.distance for h in hits], dtype=np.int64)
    similarity, distance = -1.0, FAR
    if query.original is not None:
        mine = np.flatnonzero(rows == query.original)
        # The service's own score when the original was among the hits; else computed the same way.
        similarity = (
            float(similarities[mine[0]])
            if mine.size
            else round(float(np.dot(gallery.vectors[query.original], sig.vector)), 6)
        )
        distance = sig.phash.distance(gallery.phashes[query.original])
    return QueryOutcome(
        query.photo, query.edit, query.original, similarities, distances, rows, similarity, distance, seconds
    )


# --- metrics and calibration -----------------------------------------------------------------


FalseMatches = Literal["all", "held-out"]


@dataclass(frozen=True)
class OperatingPoint:
    """A pair of thresholds and what the fused (or a single) signal does there.

    Two kinds of search can show a stranger in the duplicate tier: a held-out photo (any
    duplicate is wrong: it has no original) and an edited copy (any duplicate but its
    original is wrong). ``false_match_rate`` is the share of all searches that did;
    ``held_out_false_match_rate`` counts the held-out searches only.
    """

    duplicate_distance: int | None  # None: the pHash signal is not used
    duplicate_similarity: float | None  # None: the vector signal is not used
    false_match_rate: float
    held_out_false_match_rate: float
    wrong_duplicate_rate: float  # edited copies answered with another photo as a duplicate too
    mean_true_match_rate: float  # edited copies whose original is a duplicate, mean over edits
    true_match_rate: dict[str, float]

    def false_matches(self, kind: FalseMatches) -> float:
        return self.false_match_rate if kind == "all" else self.held_out_false_match_rate


@dataclass(frozen=True)
class Scores:
    """A few numbers per query, enough for every threshold pair: the calibration's input."""

    edits: list[str]
    true_edit: npt.NDArray[np.str_]  # per edited copy: its edit,
    true_distance: npt.NDArray[np.int64]  # its original's distance and similarity,
    true_similarity: FloatArray
    true_wrong_distance: npt.NDArray[np.int64]  # and those of the nearest other photo
    true_wrong_similarity: FloatArray
    true_wrong_joint: FloatArray  # (query, d): best stranger's cosine within d + JOINT_DISTANCE_SLACK bits
    false_distance: npt.NDArray[np.int64]  # per held-out query: its nearest candidate
    false_similarity: FloatArray
    false_joint: FloatArray

    @classmethod
    def of(cls, outcomes: Sequence[QueryOutcome], edits: Sequence[str]) -> Scores:
        true = [o for o in outcomes if not o.held_out]
        false = [o for o in outcomes if o.held_out]
        return cls(
            edits=list(edits),
            true_edit=np.array([o.edit for o in true], dtype=str),
            true_distance=np.array([o.original_distance for o in true], dtype=np.int64),
            true_similarity=np.array([o.original_similarity for o in true], dtype=np.float64),
            true_wrong_distance=np.array([o.nearest_wrong_distance for o in true], dtype=np.int64),
            true_wrong_similarity=np.array([o.best_wrong_similarity for o in true], dtype=np.float64),
            true_wrong_joint=_joint(true),
            false_distance=np.array([o.nearest_wrong_distance for o in false], dtype=np.int64),
            false_similarity=np.array([o.best_wrong_similarity for o in false], dtype=np.float64),
            false_joint=_joint(false),
        )

    def point(self, distance: int | None, similarity: float | None) -> OperatingPoint:
        """Rates at one pair; None switches a signal off."""
        d = np.array([-1 if distance is None else distance])  # -1 and 2.0: nothing gets through
        s = np.array([2.0 if similarity is None else similarity])
        rates, per_edit = self._rates(d, s, joint=distance is not None and similarity is not None)
        return OperatingPoint(
            duplicate_distance=distance,
            duplicate_similarity=similarity,
            false_match_rate=float(rates["all"][0, 0]),
            held_out_false_match_rate=float(rates["held-out"][0, 0]),
            wrong_duplicate_rate=float(rates["wrong"][0, 0]),
            mean_true_match_rate=float(rates["true"][0, 0]),
            true_match_rate={e: float(v[0, 0]) for e, v in per_edit.items()},
        )

    def grid(self) -> dict[str, FloatArray]:
        """Rates "all", "held-out", "wrong" and "true" (mean over edits), shape (distances, similarities)."""
        return self._rates(DISTANCE_GRID, SIMILARITY_GRID, joint=True)[0]

    def _rates(
        self, distances: npt.NDArray[Any], similarities: npt.NDArray[Any], *, joint: bool
    ) -> tuple[dict[str, FloatArray], dict[str, FloatArray]]:
        """Rates for every (d, s); ``joint``: with the service's rule that both signals may agree."""
        d, s = distances[None, :, None], similarities[None, None, :]
        empty = np.zeros((distances.size, similarities.size))
        # Column of each d in the per-query joint arrays (a d of -1 switches the pHash off).
        columns = np.clip(distances, 0, DISTANCE_GRID[-1])

        def rate(dist: npt.NDArray[Any], sim: npt.NDArray[Any], agreeing: npt.NDArray[Any]) -> FloatArray:
            """Share of queries whose duplicate tier would hold the candidate, for every (d, s).

            ``agreeing``: per query and d, the cosine that the joint rule compares with s - slack.
            """
            if not dist.size:
                return empty
            hits = (dist[:, None, None] <= d) | (sim[:, None, None] >= s)
            if joint:
                hits |= agreeing[:, :, None] >= s - JOINT_SIMILARITY_SLACK
            return np.asarray(hits.mean(axis=0), dtype=np.float64)

        def own(dist: npt.NDArray[Any], sim: npt.NDArray[Any]) -> npt.NDArray[Any]:
            """The joint rule's cosine for the original: its own, where it is within d + slack."""
            within = dist[:, None] <= distances[None, :] + JOINT_DISTANCE_SLACK
            return np.where(within, sim[:, None], -1.0)

        per_edit = {
            e: rate(
                self.true_distance[mask := self.true_edit == e],
                self.true_similarity[mask],
                own(self.true_distance[mask], self.true_similarity[mask]),
            )
            for e in self.edits
            if (self.true_edit == e).any()
        }
        held_out = rate(self.false_distance, self.false_similarity, self.false_joint[:, columns])
        wrong = rate(self.true_wrong_distance, self.true_wrong_similarity, self.true_wrong_joint[:, columns])
        n_held, n_true = self.false_distance.size, self.true_distance.size
        pooled = (held_out * n_held + wrong * n_true) / max(1, n_held + n_true)
        true = np.mean(list(per_edit.values()), axis=0) if per_edit else empty
        return {"all": pooled, "held-out": held_out, "wrong": wrong, "true": true}, per_edit


def _joint(outcomes: Sequence[QueryOutcome]) -> FloatArray:
    """Per query and grid distance d: the best stranger's cosine within d + JOINT_DISTANCE_SLACK."""
    if not outcomes:
        return np.zeros((0, DISTANCE_GRID.size))
    reach = DISTANCE_GRID + JOINT_DISTANCE_SLACK
    return np.stack([o.best_wrong_similarity_within(reach) for o in outcomes])


@dataclass(frozen=True)
class Calibration:
    target_fmr: float
    false_matches: FalseMatches  # which searches the target applies to
    fused: OperatingPoint | None
    hash_only: OperatingPoint | None
    vector_only: OperatingPoint | None
    current: OperatingPoint
    curves: dict[str, list[dict[str, float]]]  # tier -> [{"d" and/or "s", "fmr", "tmr" (mean)}]


def calibrate(
    scores: Scores,
    target_fmr: float,
    current: Thresholds,
    false_matches: FalseMatches = "all",
    max_distance: int = SCALABLE_DUPLICATE_DISTANCE,
) -> Calibration:
    """The thresholds that find the most originals while false matches stay at or under the target.

    Only distances up to ``max_distance`` are chosen: above it the hash index's candidates grow
    faster than the gallery can afford (docs/hash-layout.md), whatever the false-match rate.
    Fused: every (d, s) of the grid is scored; among pairs whose false-match rate (over all
    searches, or the held-out ones only) is <= ``target_fmr``, the pair with the highest
    true-match rate averaged over the edits wins; ties go to the lower false-match rate, then
    to the larger d and the lower s. An odd d is then lowered by one when that changes no
    rate: a pHash split at its median has as many ones as zeros, so two pHashes are nearly
    always an even distance apart and d - 1 gives the same answers for a cheaper query.
    Each signal alone: the largest distance, or the lowest similarity, that meets the target.
    """
    rates = scores.grid()
    fmr, tmr = rates[false_matches], rates["true"]
    feasible = (fmr <= target_fmr + 1e-12) & (DISTANCE_GRID[:, None] <= max_distance)
    fused = None
    if feasible.any():
        di, si = np.nonzero(feasible)
        # lexsort: the last key is the primary one.
        best = np.lexsort((SIMILARITY_GRID[si], -DISTANCE_GRID[di], fmr[di, si], -tmr[di, si]))[0]
        fused = scores.point(int(DISTANCE_GRID[di[best]]), float(SIMILARITY_GRID[si[best]]))
        if fused.duplicate_distance and fused.duplicate_distance % 2:
            even = scores.point(fused.duplicate_distance - 1, fused.duplicate_similarity)
            if replace(even, duplicate_distance=fused.duplicate_distance) == fused:
                fused = even

    hash_points = [scores.point(int(d), None) for d in DISTANCE_GRID]
    vector_points = [scores.point(None, float(s)) for s in SIMILARITY_GRID]
    hash_ok = [
        p
        for p in hash_points
        if p.false_matches(false_matches) <= target_fmr + 1e-12 and (p.duplicate_distance or 0) <= max_distance
    ]
    vector_ok = [p for p in vector_points if p.false_matches(false_matches) <= target_fmr + 1e-12]

    def curve_point(point: OperatingPoint) -> dict[str, float]:
        threshold: dict[str, float] = {}
        if point.duplicate_distance is not None:
            threshold["d"] = point.duplicate_distance
        if point.duplicate_similarity is not None:
            threshold["s"] = point.duplicate_similarity
        return {**threshold, "fmr": point.false_matches(false_matches), "tmr": point.mean_true_match_rate}

    # The fused curve is the upper envelope of the grid: the best true-match rate reachable
    # at each false-match rate, with the pair that reaches it.
    envelope: list[dict[str, float]] = []
    for flat in np.lexsort((-tmr.ravel(), fmr.ravel())):
        di, si = np.unravel_index(flat, fmr.shape)
        f, t = float(fmr[di, si]), float(tmr[di, si])
        if not envelope or t > envelope[-1]["tmr"] + 1e-12:
            envelope.append({"d": int(DISTANCE_GRID[di]), "s": float(SIMILARITY_GRID[si]), "fmr": f, "tmr": t})
    return Calibration(
        target_fmr=target_fmr,
        false_matches=false_matches,
        fused=fused,
        hash_only=hash_ok[-1] if hash_ok else None,
        vector_only=vector_ok[0] if vector_ok else None,
        current=scores.point(current.duplicate_distance, current.duplicate_similarity),
        curves={
            "hash": [curve_point(p) for p in hash_points],
            "vector": [curve_point(p) for p in vector_points],
            "fused": envelope,
        },
    )


def recall_table(outcomes: Sequence[QueryOutcome], edits: Sequence[str], limits: Thresholds) -> dict[str, Any]:
    """edit -> tier -> {"at1", "at10"}: share of queries whose original is in the tier's top k."""
    table: dict[str, Any] = {}
    for edit in edits:
        mine = [o for o in outcomes if o.edit == edit and not o.held_out]
        ranks = {tier: [o.original_rank(tier, limits) for o in mine] for tier in TIERS}
        table[edit] = {
            tier: {f"at{k}": _share(r is not None and r <= k for r in ranks[tier]) for k in RECALL_DEPTHS}
            for tier in TIERS
        }
    return table


def _share(flags: Iterable[bool]) -> float:
    values = list(flags)
    return sum(values) / len(values) if values else float("nan")


# --- the command -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lookalike eval",
        description="Measure recall of edited copies and false matches of unseen photos; calibrate thresholds.",
    )
    p.add_argument("gallery", type=Path, metavar="GALLERY_DIR", help="folder of photos to index and edit")
    p.add_argument("--held-out", type=Path, metavar="DIR", help="photos not in the gallery (default: the last ones)")
    p.add_argument("--held-out-count", type=int, default=50, help="without --held-out: keep the last N out")
    p.add_argument("--limit", type=int, help="query with the edits of a seeded sample of N gallery photos")
    p.add_argument("--edits", default="all", help="comma-separated edits (default: all of lookalike.edits)")
    p.add_argument("--target-fmr", type=float, default=0.01, help="false-match rate to calibrate for")
    p.add_argument(
        "--false-matches",
        choices=["all", "held-out"],
        default="all",
        help="count a stranger among the duplicates of every search (default), or of held-out photos only",
    )
    p.add_argument(
        "--max-distance",
        type=int,
        default=SCALABLE_DUPLICATE_DISTANCE,
        help="largest pHash distance to calibrate to (default: %(default)s; above it the hash index's "
        "candidates grow steeply with the gallery, docs/hash-layout.md)",
    )
    p.add_argument("--out", type=Path, default=Path("eval-results"), help="where eval.json and the plots go")
    p.add_argument("--write-config", action="store_true", help=f"save the thresholds to <data dir>/{THRESHOLDS_FILE}")
    p.add_argument("--gallery-dir", type=Path, help="keep the gallery's stores here and reuse them (default: temp)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> int:
    """Entry point of ``lookalike eval`` (``settings``: the user's, for ``--write-config``)."""
    cli = parser()
    args = cli.parse_args(argv)
    settings = settings or Settings.from_env()
    if not 0.0 <= args.target_fmr < 1.0:
        cli.error("--target-fmr must be in [0, 1)")
    if not 0 <= args.max_distance <= DEFAULT_LAYOUT.max_distance:
        cli.error(f"--max-distance must be between 0 and {DEFAULT_LAYOUT.max_distance}")
    try:
        edits = select_edits(args.edits)
        photos = photo_files(args.gallery)
        if args.held_out:
            gallery_photos, held_out = photos, photo_files(args.held_out)
        else:
            gallery_photos, held_out = split_held_out(photos, args.held_out_count)
    except ValueError as exc:
        cli.error(str(exc))
    queried = gallery_photos
    if args.limit is not None and args.limit < len(gallery_photos):
        queried = sorted(random.Random(args.seed).sample(gallery_photos, args.limit), key=lambda p: p[1])

    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a log file or a pipe: room for the whole table
        console = Console(width=160)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lookalike-eval-") as temp:
        gallery_dir = args.gallery_dir or Path(temp)
        outcomes, gallery, timing = _run(settings, gallery_dir, gallery_photos, queried, held_out, edits, args.seed)
    timing["total_seconds"] = time.perf_counter() - started

    scores = Scores.of(outcomes, edits)
    calibration = calibrate(scores, args.target_fmr, settings.thresholds, args.false_matches, args.max_distance)
    other: FalseMatches = "held-out" if args.false_matches == "all" else "all"
    alternative = calibrate(scores, args.target_fmr, settings.thresholds, other, args.max_distance).fused
    chosen = _chosen_thresholds(calibration, settings.thresholds)
    report = build_report(args, settings, gallery, outcomes, edits, scores, calibration, chosen, timing)
    report["calibration"][f"fused_counting_{other.replace('-', '_')}"] = _point(alternative)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    # Every threshold pair can be re-scored from these arrays without searching again.
    np.savez_compressed(args.out / "scores.npz", **asdict(scores))
    plot_recall_by_edit(report, args.out / "recall_by_edit.png")
    plot_tradeoff(report, args.out / "tradeoff.png")
    print_report(console, report)
    console.print(
        f"wrote {args.out / 'eval.json'}, recall_by_edit.png and tradeoff.png in {timing['total_seconds']:.0f} s"
    )

    if args.write_config:
        if calibration.fused is None:
            console.print(f"[red]no thresholds meet a false-match rate of {args.target_fmr}: nothing written[/]")
            return 1
        path = settings.data_dir / THRESHOLDS_FILE
        note = (
            f"lookalike eval {args.gallery} ({len(gallery.keys)} photos, {len(held_out)} held out, "
            f"{len(edits)} edits, seed {args.seed}): target FMR {args.target_fmr} ({args.false_matches} searches), "
            f"measured FMR {calibration.fused.false_matches(args.false_matches):.4f}, "
            f"mean TMR {calibration.fused.mean_true_match_rate:.4f}"
        )
        save_thresholds(path, chosen, note=note)
        console.print(f"saved {chosen} to {path}")
    return 0


def _run(
    settings: Settings,
    gallery_dir: Path,
    gallery_photos: Sequence[tuple[Path, str]],
    queried: Sequence[tuple[Path, str]],
    held_out: Sequence[tuple[Path, str]],
    edits: Sequence[str],
    seed: int,
) -> tuple[list[QueryOutcome], Gallery, dict[str, Any]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    timing: dict[str, Any] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("indexing the gallery", total=len(gallery_photos))
        started = time.perf_counter()
        gallery = build_gallery(settings, gallery_dir, gallery_photos, on_indexed=lambda n: progress.advance(task, n))
        timing["index_seconds"] = time.perf_counter() - started
        total = len(queried) * len(edits) + len(held_out) * (len(edits) + 1)
        task = progress.add_task("searching with edited copies", total=total)
        extractor = PrecomputedSignatures(gallery.services.indexer.extractor)
        searcher = SearchService(
            extractor,
            gallery.services.hashes,
            gallery.services.vectors,
            bucket=gallery.services.settings.bucket,
            owner_prefix=gallery.services.settings.owner_prefix,
            defaults=PERMISSIVE,
        )
        outcomes: list[QueryOutcome] = []
        rejected: dict[str, int] = {}
        extract_seconds = 0.0
        for batch in _chunks(iter_queries(gallery, queried, held_out, edits, seed), BATCH):
            started = time.perf_counter()
            signatures = extractor.prepare([q.data for q in batch])
            extract_seconds += time.perf_counter() - started
            for query, sig in zip(batch, signatures, strict=True):
                if isinstance(sig, ImageRejected):
                    rejected[query.edit] = rejected.get(query.edit, 0) + 1
                    logger.warning("query %s/%s rejected: %s", query.photo, query.edit, sig.message)
                    continue
                started = time.perf_counter()
                result = searcher.search_image(query.data, gallery.owner, page_size=MAX_PAGE_SIZE)
                outcomes.append(observe(query, sig, result, gallery, time.perf_counter() - started))
            progress.advance(task, len(batch))
    gallery.close()
    searches = np.array([o.search_seconds for o in outcomes]) if outcomes else np.zeros(1)
    timing |= {
        "queries": len(outcomes),
        "rejected_queries": rejected,
        "extract_seconds": extract_seconds,
        "queries_per_second_extracted": len(outcomes) / extract_seconds if extract_seconds else None,
        "search_ms_median": float(np.median(searches) * 1000),
        "search_ms_p99": float(np.percentile(searches, 99) * 1000),
    }
    return outcomes, gallery, timing


def _chosen_thresholds(calibration: Calibration, current: Thresholds) -> Thresholds:
    """The calibrated pair as Thresholds (the current ones when nothing met the target)."""
    fused = calibration.fused
    if fused is None or fused.duplicate_distance is None or fused.duplicate_similarity is None:
        return current
    return Thresholds(
        duplicate_distance=fused.duplicate_distance,
        duplicate_similarity=fused.duplicate_similarity,
        min_similarity=min(current.min_similarity, fused.duplicate_similarity),
    )


def _quantiles(values: Sequence[float] | npt.NDArray[Any]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    if not array.size:
        return {}
    return {f"p{q}": round(float(np.percentile(array, q)), 4) for q in (1, 5, 10, 50, 90, 95, 99)}


def build_report(
    args: argparse.Namespace,
    settings: Settings,
    gallery: Gallery,
    outcomes: Sequence[QueryOutcome],
    edits: Sequence[str],
    scores: Scores,
    calibration: Calibration,
    chosen: Thresholds,
    timing: dict[str, Any],
) -> dict[str, Any]:
    """Everything the run found, as JSON: aggregates per edit, held-out distributions, calibration."""
    recall = recall_table(outcomes, edits, chosen)
    held = [o for o in outcomes if o.held_out]
    per_edit: dict[str, Any] = {}
    for edit in edits:
        mine = [o for o in outcomes if o.edit == edit and not o.held_out]
        false_mine = [o for o in held if o.edit == edit]
        per_edit[edit] = {
            "queries": len(mine),
            "original_distance": _quantiles([o.original_distance for o in mine]),
            "original_similarity": _quantiles([o.original_similarity for o in mine]),
            "recall": recall[edit],
            "true_match_rate": calibration.fused.true_match_rate.get(edit) if calibration.fused else None,
            "wrong_duplicate_rate": _share(_false_match(o, chosen) for o in mine),
            "held_out_false_match_rate": _share(_false_match(o, chosen) for o in false_mine),
        }
    nearest = scores.false_distance
    return {
        "config": {
            "gallery": str(args.gallery),
            "held_out": str(args.held_out) if args.held_out else f"last {args.held_out_count} of the gallery folder",
            "gallery_photos": len(gallery.keys),
            "gallery_rejected": gallery.rejected,
            "queried_photos": len({o.photo for o in outcomes if not o.held_out}),
            "held_out_photos": len({o.photo for o in held}),
            "held_out_queries": len(held),
            "edits": list(edits),
            "limit": args.limit,
            "seed": args.seed,
            "target_fmr": args.target_fmr,
            "max_distance": args.max_distance,
            "model": gallery.services.indexer.extractor.model.name,
            "segment_layout": list(DEFAULT_LAYOUT.widths),
            "search_thresholds": asdict(PERMISSIVE),
            "similarity_grid": [float(SIMILARITY_GRID[0]), float(SIMILARITY_GRID[-1]), 0.0025],
            "current_thresholds": asdict(settings.thresholds),
        },
        "thresholds_used_for_recall": asdict(chosen),
        "edits": per_edit,
        "held_out": {
            "nearest_wrong_distance_histogram": {
                str(d): int((nearest == d).sum()) for d in range(DEFAULT_LAYOUT.max_distance + 1)
            }
            | {"farther": int((nearest > DEFAULT_LAYOUT.max_distance).sum())},
            "best_wrong_similarity": _quantiles(scores.false_similarity),
            "best_wrong_similarity_histogram": _histogram(scores.false_similarity),
            "false_match_rate_by_query": {
                e: _share(_false_match(o, chosen) for o in held if o.edit == e) for e in [UNEDITED, *edits]
            },
        },
        "calibration": {
            "target_fmr": calibration.target_fmr,
            "false_matches": calibration.false_matches,
            "method": (
                "grid over duplicate_distance 0..max and duplicate_similarity 0.30..1.00 step 0.0025; "
                "fused = either signal; maximise the true-match rate averaged over edits subject to the "
                f"false-match rate ({calibration.false_matches} searches) <= target "
                "(ties: lower FMR, larger d, lower s; an odd d lowered by one when no rate changes)"
            ),
            "fused": _point(calibration.fused),
            "hash_only": _point(calibration.hash_only),
            "vector_only": _point(calibration.vector_only),
            "current_thresholds": _point(calibration.current),
        },
        "curves": {
            tier: [{k: round(v, 6) for k, v in point.items()} for point in points]
            for tier, points in calibration.curves.items()
        },
        "timing": timing,
    }


def _false_match(outcome: QueryOutcome, limits: Thresholds) -> bool:
    """Would the service have called another photo a duplicate (or an exact copy)?"""
    wrong = outcome.wrong
    return bool(
        (
            (outcome.distances[wrong] <= limits.duplicate_distance)
            | (outcome.similarities[wrong] >= limits.duplicate_similarity)
        ).any()
    )


def _histogram(values: FloatArray) -> dict[str, list[float]]:
    counts, edges = np.histogram(values, bins=np.linspace(0.0, 1.0, 51))
    return {"edges": [round(float(e), 3) for e in edges], "counts": [int(c) for c in counts]}


def _point(point: OperatingPoint | None) -> dict[str, Any] | None:
    if point is None:
        return None
    out = asdict(point)
    out["true_match_rate"] = {e: round(v, 4) for e, v in point.true_match_rate.items()}
    return out


# --- output ----------------------------------------------------------------------------------


def print_report(console: Console, report: dict[str, Any]) -> None:
    """The per-edit recall table and the calibrated thresholds, on the terminal."""
    from rich.table import Table

    used = report["thresholds_used_for_recall"]
    recall = Table(
        title=f"original found, per edit (d <= {used['duplicate_distance']}, s >= {used['duplicate_similarity']})",
        title_justify="left",
    )
    recall.add_column("edit")
    for tier in TIERS:
        recall.add_column(f"{tier} @1", justify="right")
        recall.add_column(f"{tier} @10", justify="right")
    recall.add_column("pHash dist p50", justify="right")
    recall.add_column("cosine p50", justify="right")
    recall.add_column("stranger dup.", justify="right")
    for edit, row in report["edits"].items():
        cells = [_percent(row["recall"][t][f"at{k}"]) for t in TIERS for k in RECALL_DEPTHS]
        recall.add_row(
            edit,
            *cells,
            f"{row['original_distance'].get('p50', float('nan')):.0f}",
            f"{row['original_similarity'].get('p50', float('nan')):.3f}",
            _percent(row["held_out_false_match_rate"]),
        )
    console.print(recall)

    calibration = report["calibration"]
    table = Table(
        title=f"thresholds for a false-match rate <= {calibration['target_fmr']} "
        f"({calibration['false_matches']} searches)",
        title_justify="left",
    )
    names = [n for n in calibration if n.startswith("fused")] + ["hash_only", "vector_only", "current_thresholds"]
    edits = list(report["edits"])
    labels = [
        "pHash distance <=",
        "cosine >=",
        "false-match rate (all searches)",
        "  held-out photos",
        "  edited copies (wrong duplicate)",
        "true-match rate (mean)",
        *[f"  {e}" for e in edits],
    ]
    columns = [_point_column(calibration[name], edits) for name in names]
    table.add_column("")
    for name in names:
        table.add_column(name.replace("_", " "), justify="right")
    for row, label in enumerate(labels):
        table.add_row(label, *[column[row] for column in columns])
    console.print(table)


def _point_column(point: dict[str, Any] | None, edits: Sequence[str]) -> list[str]:
    if point is None:
        return ["none meets it"] + [""] * (5 + len(edits))
    d, s = point["duplicate_distance"], point["duplicate_similarity"]
    return [
        "-" if d is None else str(d),
        "-" if s is None else f"{s:.4f}",
        _percent(point["false_match_rate"]),
        _percent(point["held_out_false_match_rate"]),
        _percent(point["wrong_duplicate_rate"]),
        _percent(point["mean_true_match_rate"]),
        *[_percent(point["true_match_rate"].get(e)) for e in edits],
    ]


def _percent(value: float | None) -> str:
    if value is None or value != value:  # NaN: no queries
        return "-"
    return f"{100 * value:.1f}%"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall_by_edit(report: dict[str, Any], path: Path) -> None:
    """Grouped bars: recall@1 per edit for each tier, recall@10 as a tick above each bar."""
    plt = _pyplot()
    edits = list(report["edits"])
    x = np.arange(len(edits))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(8.0, 0.62 * len(edits) + 2), 4.6))
    colours = {"hash": "#4C72B0", "vector": "#DD8452", "fused": "#55A868"}
    for i, tier in enumerate(TIERS):
        at1 = [report["edits"][e]["recall"][tier]["at1"] for e in edits]
        at10 = [report["edits"][e]["recall"][tier]["at10"] for e in edits]
        offset = (i - 1) * width
        ax.bar(x + offset, at1, width, label=f"{tier} recall@1", color=colours[tier])
        ax.scatter(x + offset, at10, marker="_", s=120, color="black", zorder=3, label="recall@10" if i == 0 else None)
    used = report["thresholds_used_for_recall"]
    ax.set_title(
        f"Original found, per edit (pHash distance <= {used['duplicate_distance']}, "
        f"cosine >= {used['duplicate_similarity']}; {report['config']['queried_photos']} photos)"
    )
    ax.set_xticks(x, edits, rotation=40, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of queries")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=8, ncol=4)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_tradeoff(report: dict[str, Any], path: Path) -> None:
    """True-match rate (mean over edits) against false-match rate, for each signal and fused."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {
        "hash": ("#4C72B0", "pHash distance d = 0..max"),
        "vector": ("#DD8452", "cosine s"),
        "fused": ("#55A868", "fused (d or s), best pair"),
    }
    for tier, points in report["curves"].items():
        colour, label = styles[tier]
        fmr = [p["fmr"] for p in points]
        tmr = [p["tmr"] for p in points]
        ax.plot(
            fmr,
            tmr,
            marker="." if tier == "hash" else None,
            drawstyle="steps-post" if tier == "fused" else "default",
            color=colour,
            label=label,
        )
    calibration = report["calibration"]
    ax.axvline(calibration["target_fmr"], color="grey", linestyle=":", label=f"target FMR {calibration['target_fmr']}")
    kind = calibration["false_matches"]
    fused = calibration["fused"]
    if fused:
        ax.scatter(
            [fused["false_match_rate" if kind == "all" else "held_out_false_match_rate"]],
            [fused["mean_true_match_rate"]],
            color="black",
            zorder=4,
            label=f"chosen: d <= {fused['duplicate_distance']}, s >= {fused['duplicate_similarity']}",
        )
    searches = report["config"]["held_out_queries"]
    if kind == "all":
        searches += sum(row["queries"] for row in report["edits"].values())
    ax.set_xscale("symlog", linthresh=max(1.0 / max(searches, 1), 1e-4))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    what = "held-out photos and edited copies" if kind == "all" else "held-out photos"
    ax.set_xlabel(f"false-match rate: searches showing a stranger as a duplicate ({searches} {what})", fontsize=9)
    ax.set_ylabel("true-match rate, mean over edits")
    ax.set_title("Finding the original vs calling a stranger a duplicate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
