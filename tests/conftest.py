"""Fixtures shared by every tier of tests: where the photos and the built model are."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from lookalike.embedding import FeatureModel

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_DIR = REPO_ROOT.parent / "shared" / "datasets" / "imagenet-samples-odd"
MODEL_PATH = REPO_ROOT / "layers" / "model" / "build" / "vgg16-gmp-fp32.onnx"


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """``image`` as an RGB JPEG upload."""
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def dataset_photos() -> list[Path]:
    """The natural photos beside the repository, in file-name (= ImageNet class) order."""
    photos = sorted(DATASET_DIR.glob("*.JPEG"))
    if not photos:
        raise RuntimeError(f"no photos in {DATASET_DIR}: the tests need ../shared/datasets beside the repo")
    return photos


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    return dataset_photos()


@pytest.fixture(scope="session")
def feature_model() -> FeatureModel:
    """The FP32 VGG16 feature model built by `make model`, one session for the whole run."""
    return FeatureModel(MODEL_PATH, threads=2)
