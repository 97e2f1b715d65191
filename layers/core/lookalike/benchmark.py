"""`lookalike bench`: what each step costs on this machine, and how search scales with the gallery.

Figures, not pass/fail: a slow or busy machine changes the numbers, never the exit status.

For each feature model (the configured one and every other model built beside it, so FP32
and INT8 after ``make model``; or those given with ``--models``):

1. Per-image cost of each stage (decode, trim borders, pHash, embed) on dataset photos and on
   a generated 12-megapixel JPEG (a phone upload).
2. Embedding throughput at batch 1, 8 and 32 with 1 and 2 threads, against the FP32 compute
   limit of this CPU. VGG16's convolutional base does 15.35 G multiply-adds (30.7 GFLOP) per
   224x224 image, so a CPU whose float32 matrix product peaks at P GFLOP/s on t threads can
   embed at most P / 30.7 images/s in FP32 on t threads. P is measured in a fresh process
   (NumPy's float32 matmul, 4096x4096, best of 3) with OpenBLAS's AVX-512 kernels where the
   CPU has AVX-512 (on Zen CPUs OpenBLAS otherwise picks its AVX2 kernels, half the peak).
   The ratio images/s / limit is reported: about 1 means FP32 convolutions at the CPU's
   peak; above 1 is arithmetic FP32 cannot do (INT8's VNNI multiplies four pairs at once).
3. Indexing throughput end to end (``IndexService.index_many`` into the embedded stores).
4. Cold start of a fresh process up to its first signatures (wall time, peak RSS).

Then, once (the stores do not depend on the model):

5. Search latency (median, p99) of the hash tier (SQLite; OpenSearch API on osmem-server) and
   the vector tier (Milvus Lite) as the gallery grows, with synthetic entries beyond the real
   photos: random pHashes with the DC bit set and random unit vectors, plus planted
   near-duplicates of half the queries (whose recall is checked as a sanity test).
6. Candidates a hash query examines as the duplicate distance r grows (rows sharing at least
   m - r segments, on the largest synthetic gallery), and SQLite's latency at each r; the
   peak memory of this process.

Writes ``<out>/bench.json`` and ``<out>/latency_vs_size.png``; docs/performance.md shows a run.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from lookalike.hashing import DEFAULT_LAYOUT, HASH_BITS, PHash
from lookalike.identity import image_id
from lookalike.ports import ImageRecord, VectorEntry
from lookalike.services.search import MAX_DUPLICATES
from lookalike.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

    from lookalike.embedding import FeatureModel
    from lookalike.ports import HashIndex, VectorIndex

logger = logging.getLogger(__name__)

U64Array = npt.NDArray[np.uint64]
F32Array = npt.NDArray[np.float32]

#: VGG16's 13 convolutions at 224x224: (output side, input channels, output channels), 3x3 kernels.
VGG16_CONVOLUTIONS = (
    (224, 3, 64), (224, 64, 64),
    (112, 64, 128), (112, 128, 128),
    (56, 128, 256), (56, 256, 256), (56, 256, 256),
    (28, 256, 512), (28, 512, 512), (28, 512, 512),
    (14, 512, 512), (14, 512, 512), (14, 512, 512),
)  # fmt: skip
MULTIPLY_ADDS = sum(side * side * cin * cout * 9 for side, cin, cout in VGG16_CONVOLUTIONS)  # 15.35 G
GFLOP_PER_IMAGE = 2 * MULTIPLY_ADDS / 1e9  # 30.7
SGEMM_SIZE = 4096
THREAD_COUNTS = (1, 2)

OWNER = "bench"
BUCKET = "bench"
#: Queries per gallery size and backend: half find a planted near-duplicate, half find nothing.
QUERIES = 100
#: Page 1 of 20 similar images, after up to MAX_DUPLICATES duplicates: the service's vector depth.
VECTOR_DEPTH = 20 + MAX_DUPLICATES + 1
INSERT_CHUNK = 10_000
DC_BIT = np.uint64(1 << (HASH_BITS - 1))
DATASET_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "imagenet-samples-odd"


# --- 1-2. stages, embedding throughput, the compute limit --------------------------------------


def _median_ms(samples: Sequence[float]) -> float:
    return round(float(np.median(samples)) * 1000, 2)


def phone_jpeg(photo: Path, size: tuple[int, int] = (4000, 3000)) -> bytes:
    """A 12-megapixel JPEG made from a dataset photo: upscaled, with sensor-like noise, quality 90."""
    with Image.open(photo) as opened:
        big = opened.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0.0, 4.0, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(big, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def stage_costs(model: FeatureModel, uploads: Sequence[bytes], repeat: int = 1) -> dict[str, float]:
    """Median milliseconds per image of each stage of ``SignatureExtractor``, embedding at batch 1."""
    from lookalike.borders import trim_borders
    from lookalike.hashing import phash
    from lookalike.imaging import decode

    times: dict[str, list[float]] = {"decode": [], "trim": [], "phash": [], "embed": []}
    for _ in range(repeat):
        for data in uploads:
            t0 = time.perf_counter()
            decoded = decode(data)
            t1 = time.perf_counter()
            trimmed = trim_borders(decoded.image)
            t2 = time.perf_counter()
            phash(trimmed.image)
            t3 = time.perf_counter()
            model.embed(trimmed.image)
            t4 = time.perf_counter()
            for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[name].append(seconds)
    costs = {name: _median_ms(samples) for name, samples in times.items()}
    costs["total"] = round(sum(costs.values()), 2)
    return costs


def embedding_throughput(
    model_path: Path,
    images: Sequence[Image.Image],
    batches: Sequence[int] = (1, 8, 32),
    threads: Sequence[int] = (1, 2),
    rounds: int = 2,
) -> list[dict[str, Any]]:
    """Images per second of ``FeatureModel.embed_batch`` for each thread count and batch size.

    Each figure is the best of ``rounds`` passes over ``images``: on a shared machine the
    other jobs only ever slow a pass down, so the fastest pass is the closest to the truth.
    """
    from lookalike.embedding import BATCH_CHUNK, FeatureModel

    rows = []
    for count in threads:
        model = FeatureModel(model_path, threads=count)
        model.embed_batch(images[:2])  # the first run allocates and plans
        for batch in batches:
            best = min(_embedding_pass(model, images, batch) for _ in range(rounds))
            rows.append(
                {
                    "threads": count,
                    "batch": batch,
                    "model_runs_per_batch": -(-batch // BATCH_CHUNK),
                    "images": len(images),
                    "rounds": rounds,
                    "images_per_second": round(len(images) / best, 2),
                }
            )
    return rows


def _embedding_pass(model: FeatureModel, images: Sequence[Image.Image], batch: int) -> float:
    """Seconds to embed ``images`` in batches of ``batch``."""
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        model.embed_batch(images[start : start + batch])
    return time.perf_counter() - started


_SGEMM = """
import sys, time
import numpy as np
n = int(sys.argv[1])
rng = np.random.default_rng(0)
a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
a @ b
seconds = []
for _ in range(3):
    started = time.perf_counter()
    a @ b
    seconds.append(time.perf_counter() - started)
print(2 * n**3 / min(seconds) / 1e9)
"""


def has_avx512() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and " avx512f " in cpuinfo.read_text()


def sgemm_gflops(threads: int, openblas_core: str | None = None) -> float:
    """Float32 matmul GFLOP/s on ``threads`` threads (a fresh process: BLAS reads its settings at import).

    ``openblas_core`` forces an OpenBLAS kernel family ("SkylakeX" is its AVX-512 one): it
    picks kernels by CPU model and falls back to AVX2 on models it does not know.
    """
    environment = {
        **os.environ,
        **dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), str(threads)),
    }
    if openblas_core:
        environment["OPENBLAS_CORETYPE"] = openblas_core
    result = subprocess.run(  # noqa: S603 - this interpreter running our own script
        [sys.executable, "-c", _SGEMM, str(SGEMM_SIZE)], capture_output=True, text=True, check=True, env=environment
    )
    return float(result.stdout)


def fp32_limit(threads: Sequence[int] = THREAD_COUNTS) -> dict[str, Any]:
    """This CPU's FP32 limit in VGG16 images per second, per thread count (see the module's doc)."""
    kernel = "SkylakeX" if has_avx512() else None
    peaks = {count: max(sgemm_gflops(count, kernel), sgemm_gflops(count)) for count in threads}
    return {
        "gflop_per_image": round(GFLOP_PER_IMAGE, 2),
        "openblas_kernel": kernel or "OpenBLAS's choice",
        "sgemm_gflops": {str(t): round(g, 1) for t, g in peaks.items()},
        "images_per_second": {str(t): round(g / GFLOP_PER_IMAGE, 2) for t, g in peaks.items()},
    }


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# --- 3. indexing -----------------------------------------------------------------------------


def indexing_throughput(settings: Settings, photos: Sequence[Path]) -> dict[str, Any]:
    """Images per second through ``IndexService.index_many`` (batches of 16) into fresh embedded stores."""
    from lookalike.bootstrap import build_services
    from lookalike.evaluation import BATCH, embedded_settings
    from lookalike.services.indexing import IndexRequest

    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as temp:
        services = build_services(embedded_settings(settings, Path(temp)))
        requests = [IndexRequest(f"users/{OWNER}/{p.name}", p.read_bytes(), OWNER) for p in photos]
        services.indexer.index_many(requests[:2])  # warm-up: first embedding, store creation
        started = time.perf_counter()
        for start in range(2, len(requests), BATCH):
            services.indexer.index_many(requests[start : start + BATCH])
        seconds = time.perf_counter() - started
        services.close()
    indexed = len(requests) - 2
    return {"images": indexed, "seconds": round(seconds, 2), "images_per_second": round(indexed / seconds, 2)}


# --- 4-5. search latency as the gallery grows --------------------------------------------------


def random_hashes(count: int, rng: np.random.Generator) -> U64Array:
    """Uniform random 64-bit values with the DC bit set, as in every real pHash."""
    values = rng.integers(0, np.iinfo(np.uint64).max, size=count, dtype=np.uint64, endpoint=True)
    return values | DC_BIT


def flip_bits(value: int, bits: int, rng: np.random.Generator) -> int:
    """``value`` with ``bits`` distinct non-DC bits flipped: a near-duplicate's pHash."""
    for bit in rng.choice(HASH_BITS - 1, size=bits, replace=False):
        value ^= 1 << int(bit)
    return value


def random_unit_vectors(count: int, dimension: int, rng: np.random.Generator) -> F32Array:
    vectors = rng.standard_normal((count, dimension), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@dataclass
class SyntheticGallery:
    """Synthetic entries, made in order and reproducibly, with planted near-duplicates first.

    Query i < QUERIES/2 has a near-duplicate planted as entry i (pHash 1 to 6 bits away,
    cosine about 0.9); the other queries have none.
    """

    dimension: int
    model: str
    seed: int = 0
    hashes: U64Array = field(init=False)
    query_hashes: U64Array = field(init=False)
    query_vectors: F32Array = field(init=False)
    planted_vectors: F32Array = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.hashes = np.empty(0, dtype=np.uint64)
        self.query_hashes = random_hashes(QUERIES, rng)
        self.query_vectors = random_unit_vectors(QUERIES, self.dimension, rng)
        planted = QUERIES // 2
        noise = rng.standard_normal((planted, self.dimension), dtype=np.float32) * np.float32(
            0.48 / self.dimension**0.5
        )
        near = self.query_vectors[:planted] + noise
        self.planted_vectors = near / np.linalg.norm(near, axis=1, keepdims=True)
        self._planted_hashes = np.array(
            [flip_bits(int(h), int(rng.integers(1, 7)), rng) for h in self.query_hashes[:planted]], dtype=np.uint64
        )

    def grow(self, count: int) -> Iterator[tuple[list[ImageRecord], list[VectorEntry]]]:
        """Make ``count`` more entries, in chunks of records and vector entries."""
        start = self.hashes.size
        rng = np.random.default_rng([self.seed, start])
        for chunk_start in range(start, start + count, INSERT_CHUNK):
            n = min(INSERT_CHUNK, start + count - chunk_start)
            hashes = random_hashes(n, rng)
            vectors = random_unit_vectors(n, self.dimension, rng)
            planted = max(0, min(n, self._planted_hashes.size - chunk_start))
            hashes[:planted] = self._planted_hashes[chunk_start : chunk_start + planted]
            vectors[:planted] = self.planted_vectors[chunk_start : chunk_start + planted]
            self.hashes = np.concatenate([self.hashes, hashes])
            records, entries = [], []
            for offset in range(n):
                i = chunk_start + offset
                key = f"users/{OWNER}/synthetic/{i:07d}.jpg"
                record = ImageRecord(
                    id=image_id(BUCKET, key),
                    owner=OWNER,
                    key=key,
                    sha256=f"{i:064x}",
                    phash=f"{int(hashes[offset]):016x}",
                    size=100_000,
                    width=500,
                    height=375,
                    trim="none",
                    indexed_at=0.0,
                    model=self.model,
                )
                records.append(record)
                entries.append(VectorEntry(record.id, OWNER, key, record.sha256, self.model, vectors[offset]))
            yield records, entries

    def planted_key(self, query: int) -> str | None:
        return f"users/{OWNER}/synthetic/{query:07d}.jpg" if query < self._planted_hashes.size else None


def _latency(call: Callable[[int], list[str]], gallery: SyntheticGallery, planted: bool) -> dict[str, Any]:
    """Median and p99 milliseconds over the queries, and the share of planted entries found first."""
    seconds, found = [], []
    for q in range(QUERIES):
        started = time.perf_counter()
        keys = call(q)
        seconds.append(time.perf_counter() - started)
        key = gallery.planted_key(q)
        if planted and key is not None:
            found.append(bool(keys) and keys[0] == key)
    return {
        "median_ms": _median_ms(seconds),
        "p99_ms": round(float(np.percentile(seconds, 99)) * 1000, 2),
        "planted_found_first": round(sum(found) / len(found), 3) if found else None,
    }


@dataclass
class Backend:
    name: str
    tier: str
    index: HashIndex | VectorIndex
    insert: Callable[[list[ImageRecord], list[VectorEntry]], None]
    search: Callable[[int], list[str]]
    after_insert: Callable[[], None] = lambda: None
    insert_seconds: float = 0.0
    planted: bool = True  # its queries are the synthetic ones, with planted near-duplicates


def search_latency(
    sizes: Sequence[int],
    backends: Sequence[Backend],
    gallery: SyntheticGallery,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Grow the synthetic gallery through ``sizes``, timing each backend's queries at each size."""
    rows = []
    for size in sorted(sizes):
        progress(f"growing the synthetic gallery to {size:,}")
        for records, entries in gallery.grow(size - gallery.hashes.size):
            for backend in backends:
                started = time.perf_counter()
                backend.insert(records, entries)
                backend.insert_seconds += time.perf_counter() - started
        for backend in backends:
            started = time.perf_counter()
            backend.after_insert()
            backend.insert_seconds += time.perf_counter() - started
            progress(f"{backend.name} at {size:,}")
            row = {"size": size, "backend": backend.name, "tier": backend.tier}
            row |= _latency(backend.search, gallery, backend.planted)
            writes = backend.tier != "both"  # the whole search reads the other backends' stores
            row["inserts_per_second_so_far"] = round(size / backend.insert_seconds, 1) if writes else None
            rows.append(row)
    return rows


def candidates_by_distance(gallery: SyntheticGallery, sqlite: HashIndex, queries: int = 10) -> list[dict[str, Any]]:
    """Per r: mean rows sharing >= m - r segments (what the terms query admits), mean rows really
    within r, and SQLite's median ``find_near`` latency at r."""
    layout = DEFAULT_LAYOUT
    stored = layout.segment_matrix(gallery.hashes)
    wanted = gallery.query_hashes
    matched = np.stack([(stored == row).sum(axis=1) for row in layout.segment_matrix(wanted)])
    distances = np.stack([np.bitwise_count(gallery.hashes ^ q) for q in wanted])
    rows = []
    for r in range(layout.max_distance + 1):
        latencies = []
        for q in range(queries):
            started = time.perf_counter()
            sqlite.find_near(OWNER, PHash(int(wanted[q])), r, MAX_DUPLICATES)
            latencies.append(time.perf_counter() - started)
        rows.append(
            {
                "r": r,
                "minimum_should_match": layout.count - r,
                "candidates_per_query": round(float((matched >= layout.count - r).sum(axis=1).mean()), 1),
                "within_r_per_query": round(float((distances <= r).sum(axis=1).mean()), 2),
                "sqlite_median_ms": _median_ms(latencies),
            }
        )
    return rows


def _backends(
    workdir: Path,
    gallery: SyntheticGallery,
    settings: Settings,
    use_opensearch: bool,
    stack: list[Callable[[], None]],
    query_photos: Sequence[bytes],
) -> list[Backend]:
    """The stores to time, each with its insert and its query; their closers go on ``stack``.

    The last is the whole search, as a user waits for it: ``SearchService.search_image`` over
    the SQLite and Milvus Lite stores with a dataset photo, its signatures computed by the
    configured model (decode, trim, pHash, embedding), then both tiers.
    """
    from lookalike.adapters.milvus import MilvusVectorIndex
    from lookalike.adapters.sqlite_hashes import SqliteHashIndex

    thresholds = settings.thresholds

    def hash_search(index: HashIndex) -> Callable[[int], list[str]]:
        def search(q: int) -> list[str]:
            phash = PHash(int(gallery.query_hashes[q]))
            return [h.record.key for h in index.find_near(OWNER, phash, thresholds.duplicate_distance, MAX_DUPLICATES)]

        return search

    sqlite = SqliteHashIndex(workdir / "hashes.sqlite")
    stack.append(sqlite.close)
    backends = [Backend("SQLite", "hash", sqlite, lambda r, _: sqlite.upsert(r), hash_search(sqlite))]
    if use_opensearch:
        from osmem_server import OsmemServer

        from lookalike.adapters.opensearch_hashes import OpenSearchHashIndex, opensearch_client

        server = OsmemServer.start(japanese=False)
        stack.append(server.close)
        client = opensearch_client(server.url, timeout=120)
        opensearch = OpenSearchHashIndex(client, "bench")
        opensearch.ensure_index()
        backends.append(
            Backend(
                "OpenSearch (osmem)",
                "hash",
                opensearch,
                lambda r, _: opensearch.upsert(r),
                hash_search(opensearch),
                after_insert=lambda: client.indices.refresh(index="bench"),
            )
        )
    milvus = MilvusVectorIndex(uri=str(workdir / "vectors.db"), collection="bench", dimension=gallery.dimension)
    stack.append(milvus.close)

    def vector_search(q: int) -> list[str]:
        hits = milvus.search(OWNER, gallery.query_vectors[q], VECTOR_DEPTH, thresholds.min_similarity)
        return [h.key for h in hits]

    # Flushed before timing, as a server does in the background: Milvus Lite searches rows
    # still in its growing segment several times slower than sealed ones.
    backends.append(
        Backend(
            "Milvus Lite",
            "vector",
            milvus,
            lambda _, e: milvus.upsert(e),
            vector_search,
            after_insert=lambda: milvus.client.flush(milvus.collection),
        )
    )
    from lookalike.embedding import FeatureModel
    from lookalike.services.search import SearchService
    from lookalike.signatures import SignatureExtractor

    extractor = SignatureExtractor(FeatureModel(settings.model_path, threads=settings.model_threads))
    searcher = SearchService(
        extractor, sqlite, milvus, bucket=BUCKET, owner_prefix=settings.owner_prefix, defaults=thresholds
    )
    searcher.search_image(query_photos[0], OWNER)  # the first run allocates and plans

    def whole_search(q: int) -> list[str]:
        result = searcher.search_image(query_photos[q % len(query_photos)], OWNER)
        return [h.key for h in result.duplicates + result.similar]

    model = extractor.model.name
    backends.append(Backend(f"search_image, {model}", "both", milvus, lambda r, e: None, whole_search, planted=False))
    return backends


def sqlite_of(backends: Sequence[Backend]) -> HashIndex:
    from lookalike.adapters.sqlite_hashes import SqliteHashIndex

    return next(b.index for b in backends if isinstance(b.index, SqliteHashIndex))


# --- 6. cold start -----------------------------------------------------------------------------

# Peak memory from VmHWM: it starts afresh at exec, whereas Linux carries ru_maxrss over from
# the forked parent, whose size would then count as the child's.
_COLD_START = """
import json, sys, time
started = time.perf_counter()
from lookalike.embedding import FeatureModel
from lookalike.signatures import SignatureExtractor
imported = time.perf_counter()
extractor = SignatureExtractor(FeatureModel(sys.argv[1]))
loaded = time.perf_counter()
extractor.extract(open(sys.argv[2], "rb").read())
done = time.perf_counter()
print(json.dumps({"import_s": imported - started, "session_s": loaded - imported, "first_signatures_s": done - loaded,
                  "peak_rss_mb": next(int(line.split()[1]) for line in open("/proc/self/status")
                                      if line.startswith("VmHWM:")) / 1024}))
"""


def cold_start(model_path: Path, photo: Path, runs: int = 3) -> dict[str, Any]:
    """A fresh interpreter up to the signatures of its first image: wall time and peak memory."""
    walls, reports = [], []
    for _ in range(runs):
        started = time.perf_counter()
        output = subprocess.run(  # noqa: S603 - this interpreter running our own script
            [sys.executable, "-c", _COLD_START, str(model_path), str(photo)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        walls.append(time.perf_counter() - started)
        reports.append(json.loads(output.strip().splitlines()[-1]))
    return {
        "runs": runs,
        "wall_seconds_median": round(float(np.median(walls)), 3),
        "import_seconds": round(float(np.median([r["import_s"] for r in reports])), 3),
        "session_seconds": round(float(np.median([r["session_s"] for r in reports])), 3),
        "first_signatures_seconds": round(float(np.median([r["first_signatures_s"] for r in reports])), 3),
        "peak_rss_mb": round(float(np.median([r["peak_rss_mb"] for r in reports])), 1),
    }


# --- the machine ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores and memory, from /proc."""
    model, memory_kb = platform.processor() or "unknown", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024**2, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


# --- the command ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike bench", description="Performance figures (never pass/fail).")
    p.add_argument("--sizes", default="10000,100000", help="synthetic gallery sizes (default: %(default)s)")
    p.add_argument("--with-1m", action="store_true", help="also 1,000,000 entries (takes a long while)")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--opensearch", action=argparse.BooleanOptionalAction, default=True, help="osmem-server too")
    p.add_argument("--photos", type=int, default=50, help="dataset photos for the per-stage costs")
    p.add_argument("--dataset", type=Path, default=DATASET_DIR)
    p.add_argument(
        "--models",
        type=Path,
        nargs="+",
        metavar="ONNX",
        help="feature models to measure (default: the configured one and every model built beside it)",
    )
    return p


def models_to_measure(settings: Settings, given: Sequence[Path] | None) -> list[Path]:
    """The given models, else the configured one first and then every other model beside it."""
    if given:
        return list(given)
    siblings = sorted(
        p for p in settings.model_path.parent.glob("*.onnx") if p.resolve() != settings.model_path.resolve()
    )
    return [settings.model_path, *siblings]


def measure_model(
    model_path: Path, settings: Settings, photos: Sequence[Path], limit: dict[str, Any], status: Callable[[str], Any]
) -> dict[str, Any]:
    """Stages, embedding throughput against the FP32 limit, indexing and cold start of one model."""
    from dataclasses import replace

    from lookalike.borders import trim_borders
    from lookalike.embedding import FeatureModel
    from lookalike.imaging import decode

    model = FeatureModel(model_path, threads=settings.model_threads)
    status(f"{model.name}: cold start of a fresh process")
    figures: dict[str, Any] = {"path": str(model_path), "cold_start": cold_start(model_path, photos[0])}
    status(f"{model.name}: per-stage costs")
    uploads = [p.read_bytes() for p in photos]
    big = phone_jpeg(photos[0])
    model.embed(Image.new("RGB", (224, 224)))
    figures["stages_ms"] = {
        f"{len(photos)} dataset photos (about 500x375)": stage_costs(model, uploads),
        f"12 MP JPEG ({len(big) / 1e6:.1f} MB)": stage_costs(model, [big], repeat=5),
    }
    status(f"{model.name}: embedding throughput")
    images = [trim_borders(decode(data).image).image for data in uploads[:32]]
    rows = embedding_throughput(model_path, images)
    for row in rows:
        row["fp32_limit_ratio"] = round(row["images_per_second"] / limit["images_per_second"][str(row["threads"])], 2)
    figures["embedding"] = rows
    status(f"{model.name}: indexing throughput")
    figures["indexing"] = indexing_throughput(replace(settings, model_path=model_path), photos[:66])
    return {"name": model.name, "dimension": model.dimension, **figures}


def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> int:
    """Entry point of ``lookalike bench``."""
    args = parser().parse_args(argv)
    settings = settings or Settings.from_env()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()} | ({1_000_000} if args.with_1m else set()))

    from rich.console import Console

    console = Console()
    if args.with_1m:
        console.print("[yellow]--with-1m: inserting and loading a million entries takes 20 minutes or more[/]")
    started = time.perf_counter()
    photos = sorted(args.dataset.glob("*.JPEG"))[: args.photos]
    if not photos:
        console.print(f"[red]no photos in {args.dataset}[/]")
        return 2
    report: dict[str, Any] = {"machine": machine(), "command": "lookalike bench " + " ".join(argv or [])}

    with console.status("the FP32 limit of this CPU") as status:
        report["fp32_limit"] = fp32_limit()
        measured = [
            measure_model(path, settings, photos, report["fp32_limit"], status.update)
            for path in models_to_measure(settings, args.models)
        ]
        report["models"] = {m.pop("name"): m for m in measured}
        dimension = next(iter(report["models"].values()))["dimension"]

        status.update("search latency")
        with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as temp:
            closers: list[Callable[[], None]] = []
            try:
                gallery = SyntheticGallery(dimension=dimension, model="synthetic")
                queries = [p.read_bytes() for p in photos]
                backends = _backends(Path(temp), gallery, settings, args.opensearch, closers, queries)
                report["search"] = search_latency(sizes, backends, gallery, status.update)
                status.update("candidates per hash query by distance")
                report["candidates"] = candidates_by_distance(gallery, sqlite_of(backends))
                report["search_config"] = {
                    "owner": "one owner holds the whole synthetic gallery (the worst case)",
                    "queries_per_size": QUERIES,
                    "hash_duplicate_distance": settings.thresholds.duplicate_distance,
                    "vector_depth": VECTOR_DEPTH,
                    "vector_min_similarity": settings.thresholds.min_similarity,
                    "candidates_size": int(gallery.hashes.size),
                }
            finally:
                for close in reversed(closers):
                    close()

    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_latency(report["search"], args.out / "latency_vs_size.png")
    print_report(console, report)
    console.print(f"wrote {args.out / 'bench.json'} and latency_vs_size.png in {report['total_seconds']:.0f} s")
    return 0


def print_report(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    m = report["machine"]
    console.print(f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}, ORT {m['onnxruntime']}")

    limit = report["fp32_limit"]
    console.print(
        f"FP32 limit of this CPU: float32 matmul {limit['sgemm_gflops']} GFLOP/s by threads "
        f"({limit['openblas_kernel']}) / {limit['gflop_per_image']} GFLOP per image = "
        f"{limit['images_per_second']} images/s by threads"
    )
    names = ["decode", "trim", "phash", "embed", "total"]
    for model, figures in report["models"].items():
        stages = Table(title=f"{model}: milliseconds per image, by stage (median)", title_justify="left")
        stages.add_column("images")
        for name in names:
            stages.add_column(name, justify="right")
        for label, costs in figures["stages_ms"].items():
            stages.add_row(label, *[f"{costs[n]:.1f}" for n in names])
        console.print(stages)

        rows = figures["embedding"]
        embedding = Table(title=f"{model}: images/s (x the FP32 limit)", title_justify="left")
        embedding.add_column("threads")
        batches = sorted({r["batch"] for r in rows})
        for batch in batches:
            embedding.add_column(f"batch {batch}", justify="right")
        for threads in sorted({r["threads"] for r in rows}):
            cells = {r["batch"]: r for r in rows if r["threads"] == threads}
            embedding.add_row(
                str(threads),
                *[f"{cells[b]['images_per_second']:.1f} (x{cells[b]['fp32_limit_ratio']:.2f})" for b in batches],
            )
        console.print(embedding)
        indexing, cold = figures["indexing"], figures["cold_start"]
        console.print(
            f"{model}: indexing end to end {indexing['images_per_second']} images/s ({indexing['images']} photos); "
            f"cold start to first signatures {cold['wall_seconds_median']} s (imports {cold['import_seconds']} s, "
            f"session {cold['session_seconds']} s, first image {cold['first_signatures_seconds']} s), "
            f"peak RSS {cold['peak_rss_mb']} MB"
        )

    search = Table(title="search latency as the gallery grows (ms)", title_justify="left")
    for column in ("size", "backend", "tier", "median", "p99", "planted first", "inserts/s"):
        search.add_column(column, justify="right" if column not in ("backend", "tier") else "left")
    for row in report["search"]:
        search.add_row(
            f"{row['size']:,}",
            row["backend"],
            row["tier"],
            f"{row['median_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            "-" if row["planted_found_first"] is None else f"{100 * row['planted_found_first']:.0f}%",
            "-" if row["inserts_per_second_so_far"] is None else f"{row['inserts_per_second_so_far']:,.0f}",
        )
    console.print(search)

    candidates = Table(
        title=f"hash query at distance r, {report['search_config']['candidates_size']:,} hashes", title_justify="left"
    )
    for column in ("r", "segments >=", "candidates", "within r", "SQLite ms"):
        candidates.add_column(column, justify="right")
    for row in report["candidates"]:
        candidates.add_row(
            str(row["r"]),
            str(row["minimum_should_match"]),
            f"{row['candidates_per_query']:,.1f}",
            f"{row['within_r_per_query']:.2f}",
            f"{row['sqlite_median_ms']:.1f}",
        )
    console.print(candidates)
    console.print(f"peak memory of this process: {report['peak_rss_mb']} MB")


def plot_latency(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Median (solid) and p99 (dashed) latency per backend against gallery size, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, backend in enumerate(dict.fromkeys(r["backend"] for r in rows)):
        mine = [r for r in rows if r["backend"] == backend]
        sizes = [r["size"] for r in mine]
        colour = f"C{i}"
        ax.plot(sizes, [r["median_ms"] for r in mine], marker="o", color=colour, label=f"{backend} median")
        ax.plot(sizes, [r["p99_ms"] for r in mine], marker="x", linestyle="--", color=colour, label=f"{backend} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entries in the owner's gallery")
    ax.set_ylabel("milliseconds per query")
    ax.set_title("Search latency as the gallery grows")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
