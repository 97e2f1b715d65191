"""FP32 against INT8: what the quantised feature model buys (speed, start, memory) and costs (agreement).

Measures, for ``vgg16-gmp-fp32`` and ``vgg16-gmp-int8`` (both built by ``make model``):
  1. images per second at batch 1, 8 and 32 on 1 and 2 threads (median of timed runs of a
     few seconds each, after one warm-up run), and the ratio to this CPU's FP32 limit:
     VGG16's convolutional base costs 15.35 G multiply-adds per 224x224 image, so a CPU
     that peaks at P FLOP/s in a large sgemm computes at most P / (2 x 15.35 G) images/s
     in FP32. P is measured here: numpy float32 matmul, 4096 x 4096, best of 3, with the
     kernel OpenBLAS picks and, where the CPU has AVX-512, with OpenBLAS's AVX-512 kernel
     (on this Zen CPU it picks an AVX2 kernel that reaches only half the peak);
  2. cold start: a fresh interpreter, from spawning it to the first embedding (imports,
     checksum, session, one photo), with its peak resident memory;
  3. agreement of INT8 with FP32 on 100 dataset photos the calibration did not see: cosine
     of each photo's two vectors, top-1 and top-10 neighbour overlap among those photos.

Timings on a shared machine are noisy: the load average is recorded before and after.
Prints the tables and writes bench-results/models.json. Run from the repository root:

    .venv/bin/python benchmarks/models.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image

from lookalike.benchmark import SGEMM_SIZE, has_avx512, sgemm_gflops
from lookalike.embedding import FeatureModel, to_model_input

log = logging.getLogger("models")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_DIR = REPO_ROOT.parent / "shared" / "datasets" / "imagenet-samples-odd"
BUILD_DIR = REPO_ROOT / "layers" / "model" / "build"
RESULTS_PATH = REPO_ROOT / "bench-results" / "models.json"

MODELS = ("vgg16-gmp-fp32", "vgg16-gmp-int8")
BATCHES = (1, 8, 32)
THREADS = (1, 2)
MULTIPLY_ADDS_PER_IMAGE = 15.35e9  # VGG16 convolutional base at 224x224
DOCUMENTED_GFLOPS_PER_CORE = 100.0  # MEASUREMENTS.md, for comparison with the figure measured here
COLD_STARTS = 3
NEIGHBOURS = 10

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Throughput:
    model: str
    threads: int
    batch: int
    images_per_second: float
    runs: int
    fraction_of_fp32_limit: float


@dataclass(frozen=True)
class ColdStart:
    model: str
    seconds_to_first_embedding: float  # spawn → first vector, interpreter start included
    imports_seconds: float
    load_seconds: float  # checksum and session
    first_embedding_seconds: float
    peak_rss_mb: float


def held_out_photos(count: int) -> list[Path]:
    """Photos the INT8 ranges were not measured on (calibration took every 5th from the first)."""
    photos = sorted(DATASET_DIR.glob("*.JPEG"))
    if not photos:
        raise SystemExit(f"no photos in {DATASET_DIR}")
    return photos[2::5][:count]


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def open_photo(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


# --- 1. Throughput and the FP32 limit --------------------------------------------------------


def open_session(path: Path, threads: int) -> ort.InferenceSession:
    """A session set up as ``FeatureModel`` sets up its own, fed whole batches (FeatureModel feeds 4 at a time)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def images_per_second(
    session: ort.InferenceSession, inputs: npt.NDArray[np.float32], batch: int, seconds: float, min_runs: int = 3
) -> tuple[float, int]:
    """Median images/s over timed runs of one batch, after a warm-up run; and how many runs."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(inputs[np.arange(batch) % len(inputs)])}
    session.run(None, feed)  # warm-up: allocations and weight pre-packing
    durations: list[float] = []
    budget_ends = time.perf_counter() + seconds
    while len(durations) < min_runs or time.perf_counter() < budget_ends:
        started = time.perf_counter()
        session.run(None, feed)
        durations.append(time.perf_counter() - started)
    return batch / statistics.median(durations), len(durations)


def measure_throughput(
    paths: dict[str, Path], inputs: npt.NDArray[np.float32], fp32_limits: dict[int, float], seconds: float
) -> list[Throughput]:
    results = []
    for name, path in paths.items():
        for threads in THREADS:
            session = open_session(path, threads)
            for batch in BATCHES:
                rate, runs = images_per_second(session, inputs, batch, seconds)
                result = Throughput(name, threads, batch, rate, runs, rate / fp32_limits[threads])
                log.info("%s, %d thread(s), batch %d: %.2f images/s", name, threads, batch, rate)
                results.append(result)
            del session
    return results


# --- 2. Cold start ---------------------------------------------------------------------------

_COLD_START = """
import json, sys, time
started = time.perf_counter()
from PIL import Image
from lookalike.embedding import FeatureModel
imported = time.perf_counter()
model = FeatureModel(sys.argv[1], threads=int(sys.argv[2]))
loaded = time.perf_counter()
with Image.open(sys.argv[3]) as image:
    model.embed(image.convert("RGB"))
embedded = time.perf_counter()
print(json.dumps({
    "finished_at": time.time(),
    "imports_seconds": imported - started,
    "load_seconds": loaded - imported,
    "first_embedding_seconds": embedded - loaded,
    # VmHWM, not getrusage: ru_maxrss survives exec, so it would report the parent's peak.
    "peak_rss_mb": next(
        int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")
    ),
}))
"""


def cold_start(name: str, path: Path, photo: Path, threads: int = 2) -> ColdStart:
    """The median of ``COLD_STARTS`` fresh interpreters, each from spawn to its first embedding."""
    samples = []
    for _ in range(COLD_STARTS):
        spawned = time.time()  # wall clock: the child reports on the same one
        result = subprocess.run(
            [sys.executable, "-c", _COLD_START, str(path), str(threads), str(photo)],
            capture_output=True,
            text=True,
            check=True,
        )
        child = json.loads(result.stdout)
        samples.append({"seconds_to_first_embedding": child.pop("finished_at") - spawned, **child})
    medians = {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}
    return ColdStart(model=name, **medians)


# --- 3. Agreement ----------------------------------------------------------------------------


def neighbours(vectors: Vectors, count: int) -> npt.NDArray[np.intp]:
    """Each row's ``count`` most similar other rows, nearest first."""
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :count]


def agreement(fp32: Vectors, int8: Vectors) -> dict[str, float]:
    cosine = (fp32 * int8).sum(axis=1)
    fp32_near, int8_near = neighbours(fp32, NEIGHBOURS), neighbours(int8, NEIGHBOURS)
    overlap = [len(set(a) & set(b)) / NEIGHBOURS for a, b in zip(fp32_near, int8_near, strict=True)]
    return {
        "photos": len(fp32),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "cosine_p5": float(np.percentile(cosine, 5)),
        "top1_neighbour_agreement": float((fp32_near[:, 0] == int8_near[:, 0]).mean()),
        f"top{NEIGHBOURS}_neighbour_overlap": float(np.mean(overlap)),
    }


# --- Report ----------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    limits = results["fp32_limit"]
    print(f"\nload average before {results['load_before']}, after {results['load_after']}")
    for kernel, by_threads in limits["sgemm_gflops_by_kernel"].items():
        figures = ", ".join(f"{value:.0f} on {threads} thread(s)" for threads, value in by_threads.items())
        print(f"sgemm GFLOP/s, OpenBLAS {kernel} kernel: {figures}")
    for threads in THREADS:
        print(
            f"peak {limits['sgemm_gflops'][str(threads)]:.0f} GFLOP/s on {threads} thread(s) → FP32 limit "
            f"{limits['images_per_second'][str(threads)]:.2f} images/s "
            f"(documented {DOCUMENTED_GFLOPS_PER_CORE * threads:.0f} GFLOP/s → "
            f"{DOCUMENTED_GFLOPS_PER_CORE * threads * 1e9 / (2 * MULTIPLY_ADDS_PER_IMAGE):.2f})"
        )
    print(f"\n{'model':16} {'threads':>7} {'batch':>5} {'images/s':>9} {'× FP32 limit':>12} {'runs':>5}")
    for row in results["throughput"]:
        print(
            f"{row['model']:16} {row['threads']:>7} {row['batch']:>5} {row['images_per_second']:>9.2f} "
            f"{row['fraction_of_fp32_limit']:>12.2f} {row['runs']:>5}"
        )
    print(f"\ncold start (2 threads, median of {COLD_STARTS})")
    print(f"{'model':16} {'to 1st vector':>13} {'imports':>8} {'load':>6} {'embed':>6} {'peak RSS':>9}")
    for row in results["cold_start"]:
        print(
            f"{row['model']:16} {row['seconds_to_first_embedding']:>12.2f}s {row['imports_seconds']:>7.2f}s "
            f"{row['load_seconds']:>5.2f}s {row['first_embedding_seconds']:>5.2f}s {row['peak_rss_mb']:>6.0f} MB"
        )
    print(f"\nINT8 against FP32 on {results['agreement']['photos']} held-out photos")
    for key, value in results["agreement"].items():
        print(f"  {key:28} {value:.4f}" if isinstance(value, float) else f"  {key:28} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare the FP32 and INT8 feature models.")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per throughput figure")
    parser.add_argument("--photos", type=int, default=100, help="held-out photos for the agreement")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    paths = {name: BUILD_DIR / f"{name}.onnx" for name in MODELS}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run `make model`")
    load_before = os.getloadavg()
    photos = held_out_photos(args.photos)
    images = [open_photo(path) for path in photos]

    log.info("agreement on %d photos", len(images))
    vectors = {name: FeatureModel(path, threads=2).embed_batch(images) for name, path in paths.items()}
    agreed = agreement(vectors[MODELS[0]], vectors[MODELS[1]])

    log.info("sgemm peak")
    kernels: dict[str, str | None] = {"default": None, **({"avx512": "SkylakeX"} if has_avx512() else {})}
    sgemm = {kernel: {threads: sgemm_gflops(threads, core) for threads in THREADS} for kernel, core in kernels.items()}
    gflops = {threads: max(by_threads[threads] for by_threads in sgemm.values()) for threads in THREADS}
    fp32_limits = {threads: gflops[threads] * 1e9 / (2 * MULTIPLY_ADDS_PER_IMAGE) for threads in THREADS}

    inputs = np.stack([to_model_input(image) for image in images[:32]])
    throughput = measure_throughput(paths, inputs, fp32_limits, args.seconds)

    log.info("cold starts")
    starts = [cold_start(name, path, photos[0]) for name, path in paths.items()]

    results: dict[str, Any] = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
        "load_before": [round(value, 2) for value in load_before],
        "load_after": [round(value, 2) for value in os.getloadavg()],
        "models": {name: json.loads(path.with_suffix(".json").read_text())["sha256"] for name, path in paths.items()},
        "fp32_limit": {
            "multiply_adds_per_image": MULTIPLY_ADDS_PER_IMAGE,
            "sgemm_size": SGEMM_SIZE,
            "sgemm_gflops_by_kernel": {
                kernel: {str(threads): value for threads, value in by_threads.items()}
                for kernel, by_threads in sgemm.items()
            },
            "sgemm_gflops": {str(threads): value for threads, value in gflops.items()},
            "images_per_second": {str(threads): value for threads, value in fp32_limits.items()},
            "documented_gflops_per_core": DOCUMENTED_GFLOPS_PER_CORE,
        },
        "throughput": [asdict(row) for row in throughput],
        "cold_start": [asdict(row) for row in starts],
        "agreement": agreed,
    }
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
