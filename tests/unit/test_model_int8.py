"""The INT8 feature model: pinned bytes rebuilt from committed ranges, vectors that agree with FP32.

``vgg16-gmp-int8`` is ``vgg16-gmp-fp32`` statically quantised with activation ranges measured
once on photos and committed under ``layers/model/calibration/``; `make model` builds it.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from PIL import Image

from lookalike.embedding import FeatureModel
from tests.conftest import REPO_ROOT

MODEL_DIR = REPO_ROOT / "layers" / "model"
NAME = "vgg16-gmp-int8"
INT8_PATH = MODEL_DIR / "build" / f"{NAME}.onnx"
CALIBRATION_PATH = MODEL_DIR / "calibration" / f"{NAME}.json"

Vectors = npt.NDArray[np.float32]


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def open_photo(source: Path | io.BytesIO) -> Image.Image:
    with Image.open(source) as image:
        return image.convert("RGB")


def recompressed(image: Image.Image, quality: int = 30) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return open_photo(buffer)


def nearest_other(vectors: Vectors) -> npt.NDArray[np.intp]:
    """For each row, the index of the most similar other row."""
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    return np.asarray(similarity.argmax(axis=1))


def run_build(script_dir: Path, out: Path, *extra: str, seed: str = "0") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(script_dir / "build_model.py"), "--out", str(out), *extra]
    # A different hash seed per run: set iteration order must not reach the bytes.
    environment = {**os.environ, "PYTHONHASHSEED": seed}
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=300, env=environment)


def copy_of_model_dir(directory: Path, spec: dict[str, Any], calibration: dict[str, Any]) -> Path:
    """build_model.py with a model.json and calibration of our own: it reads the ones beside it."""
    (directory / "calibration").mkdir(parents=True)
    shutil.copy(MODEL_DIR / "build_model.py", directory)
    (directory / "model.json").write_text(json.dumps(spec))
    (directory / "calibration" / CALIBRATION_PATH.name).write_text(json.dumps(calibration))
    return directory


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return json.loads((MODEL_DIR / "model.json").read_text())


@pytest.fixture(scope="module")
def calibration() -> dict[str, Any]:
    return json.loads(CALIBRATION_PATH.read_text())


@pytest.fixture(scope="module")
def int8_model() -> FeatureModel:
    return FeatureModel(INT8_PATH, threads=2)


@pytest.fixture(scope="module")
def held_out(photos: list[Path]) -> list[Image.Image]:
    """30 photos the ranges were not measured on (calibration takes indices 0, 5, 10, ...)."""
    return [open_photo(path) for path in photos[2::15][:30]]


@pytest.fixture(scope="module")
def fp32_vectors(feature_model: FeatureModel, held_out: list[Image.Image]) -> Vectors:
    return feature_model.embed_batch(held_out)


@pytest.fixture(scope="module")
def int8_vectors(int8_model: FeatureModel, held_out: list[Image.Image]) -> Vectors:
    return int8_model.embed_batch(held_out)


def test_built_model_has_its_pinned_checksum(spec: dict[str, Any]) -> None:
    assert sha256_of(INT8_PATH) == spec["variants"][NAME]["sha256"]


def test_facts_name_the_fp32_model_the_settings_and_the_calibration_photos(spec: dict[str, Any]) -> None:
    facts = json.loads(INT8_PATH.with_suffix(".json").read_text())
    fp32 = spec["variants"]["vgg16-gmp-fp32"]

    assert facts["name"] == NAME
    assert facts["sha256"] == sha256_of(INT8_PATH)
    assert facts["derived_from"] == {"name": "vgg16-gmp-fp32", "sha256": fp32["sha256"]}
    assert facts["quantisation"]["format"].startswith("QDQ")
    assert facts["quantisation"]["weights"] == "int8, symmetric, per output channel"
    assert facts["calibration"]["sha256"] == sha256_of(CALIBRATION_PATH)
    assert facts["calibration"]["photos"]["count"] == 100
    assert "ImageNet" in facts["calibration"]["photos"]["description"]
    assert "not shipped" in facts["calibration"]["note"]
    # Same contract as FP32: the runtime prepares the input the same way for both.
    assert facts["input"]["shape"] == ["N", "H", "W", 3]
    assert facts["output"] == {"name": "features", "shape": ["N", 512], "dtype": "float32"}


def test_the_committed_calibration_is_every_fifth_photo_and_ranges_only(
    calibration: dict[str, Any], photos: list[Path], spec: dict[str, Any]
) -> None:
    assert calibration["photos"]["files"] == [path.name for path in photos[::5]]
    assert calibration["photos"]["count"] == len(calibration["photos"]["files"]) == 100
    assert calibration["measured_on"]["sha256"] == spec["variants"]["vgg16-gmp-fp32"]["sha256"]
    ranges = calibration["ranges"]
    assert len(ranges) >= 13  # at least the input of every convolution
    assert all(low <= high for low, high in ranges.values())
    assert CALIBRATION_PATH.stat().st_size < 16_000  # derived numbers, no pixels


def test_convolutions_run_on_int8_weights_and_the_head_stays_float() -> None:
    model = onnx.load(str(INT8_PATH))
    ops = Counter(node.op_type for node in model.graph.node)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    dequantised_from = {
        node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"
    }
    convolutions = [node for node in model.graph.node if node.op_type == "Conv"]

    assert ops["Conv"] == 13
    for conv in convolutions:
        weight = initializers[dequantised_from[conv.input[1]]]
        assert weight.data_type == onnx.TensorProto.INT8
        assert conv.input[0] in dequantised_from  # its activations are quantised too
    head = [node for node in model.graph.node if node.op_type in {"ReduceMax", "ReduceL2", "Max", "Div"}]
    assert len(head) == 4
    assert model.ir_version <= 13  # the most onnxruntime 1.31 loads


def test_feature_model_loads_it_under_its_own_name(int8_model: FeatureModel) -> None:
    assert int8_model.name == NAME
    assert int8_model.dimension == 512


def test_vectors_are_unit_norm(int8_vectors: Vectors) -> None:
    assert int8_vectors.shape == (30, 512)
    assert int8_vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(int8_vectors, axis=1), 1.0, atol=1e-5)


def test_vectors_are_almost_the_fp32_ones(fp32_vectors: Vectors, int8_vectors: Vectors) -> None:
    cosine = (fp32_vectors * int8_vectors).sum(axis=1)

    # Measured on these 30 photos: mean 0.9994, minimum 0.9975.
    assert cosine.mean() >= 0.998
    assert cosine.min() >= 0.99


def test_each_photo_has_mostly_the_same_nearest_other_photo_as_with_fp32(
    fp32_vectors: Vectors, int8_vectors: Vectors
) -> None:
    agreement = (nearest_other(fp32_vectors) == nearest_other(int8_vectors)).mean()

    assert agreement >= 0.9  # measured 29 of 30


def test_a_recompressed_copy_finds_its_original_as_with_fp32(
    feature_model: FeatureModel,
    int8_model: FeatureModel,
    held_out: list[Image.Image],
    fp32_vectors: Vectors,
    int8_vectors: Vectors,
) -> None:
    copies = [recompressed(image) for image in held_out]

    int8_found = (int8_model.embed_batch(copies) @ int8_vectors.T).argmax(axis=1)
    fp32_found = (feature_model.embed_batch(copies) @ fp32_vectors.T).argmax(axis=1)

    assert (int8_found == np.arange(len(copies))).all()
    assert (int8_found == fp32_found).mean() >= 0.9


def test_build_from_the_committed_ranges_reproduces_the_pin_whatever_the_hash_seed(
    tmp_path: Path, spec: dict[str, Any]
) -> None:
    out = tmp_path / f"{NAME}.onnx"

    first = run_build(MODEL_DIR, out, seed="1")
    first_sha256 = sha256_of(out)
    forced = run_build(MODEL_DIR, out, "--force", seed="2")
    again = run_build(MODEL_DIR, out)

    assert first.returncode == 0, first.stderr
    assert forced.returncode == 0, forced.stderr
    assert first_sha256 == sha256_of(out) == spec["variants"][NAME]["sha256"]
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == sha256_of(out)
    assert "up to date" in again.stdout


def test_build_fails_loudly_when_the_ranges_no_longer_give_the_pinned_model(
    tmp_path: Path, spec: dict[str, Any], calibration: dict[str, Any]
) -> None:
    altered = copy.deepcopy(calibration)
    for measured in altered["ranges"].values():
        measured[1] *= 1.5
    script_dir = copy_of_model_dir(tmp_path / "model", spec, altered)
    out = tmp_path / "build" / f"{NAME}.onnx"

    result = run_build(script_dir, out)

    assert result.returncode == 1
    assert spec["variants"][NAME]["sha256"] in result.stderr
    assert not out.exists()
    assert out.with_name(out.name + ".unverified").exists()


def test_build_refuses_ranges_measured_on_another_fp32_model(
    tmp_path: Path, spec: dict[str, Any], calibration: dict[str, Any]
) -> None:
    altered = copy.deepcopy(calibration)
    altered["measured_on"]["sha256"] = "e" * 64
    script_dir = copy_of_model_dir(tmp_path / "model", spec, altered)
    out = tmp_path / "build" / f"{NAME}.onnx"

    result = run_build(script_dir, out)

    assert result.returncode == 1
    assert "e" * 64 in result.stderr
    assert "--calibrate-from" in result.stderr
    assert not out.exists()


def test_calibrate_from_measures_every_fifth_photo_and_records_them(
    tmp_path: Path, spec: dict[str, Any], calibration: dict[str, Any], photos: list[Path]
) -> None:
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    for path in photos[:10]:
        shutil.copy(path, photo_dir)
    script_dir = copy_of_model_dir(tmp_path / "model", spec, calibration)
    out = tmp_path / "build" / f"{NAME}.onnx"

    result = run_build(script_dir, out, "--calibrate-from", str(photo_dir), "--photos-description", "ten photos")

    written = json.loads((script_dir / "calibration" / CALIBRATION_PATH.name).read_text())
    assert written["photos"]["files"] == [photos[0].name, photos[5].name]
    assert written["photos"]["description"] == "ten photos"
    assert written["ranges"].keys() == calibration["ranges"].keys()
    assert all(low <= high for low, high in written["ranges"].values())
    # Two photos give other ranges than a hundred, so another model: the pin catches it.
    assert result.returncode == 1
    assert "pin the new sha256" in result.stderr
    assert not out.exists()
