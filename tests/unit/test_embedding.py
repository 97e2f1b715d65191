"""lookalike.embedding: unit vectors that stay put under edits and put dogs next to dogs.

The pinned vectors in ``data/embedding_pinned.json`` catch any silent change of model or
preprocessing (which would make stored vectors incomparable with new ones). After an
intended change, regenerate them and re-index every collection::

    .venv/bin/python -m tests.unit.test_embedding
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from lookalike.embedding import BATCH_CHUNK, BGR_MEAN, INPUT_SIZE, MODEL_NAME, FeatureModel, to_model_input
from lookalike.errors import ModelError
from tests.conftest import MODEL_PATH, dataset_photos

Vectors = npt.NDArray[np.float32]

PINNED_PATH = Path(__file__).parent / "data" / "embedding_pinned.json"
PINNED_PHOTOS = ("n01443537_goldfish.JPEG", "n02085620_Chihuahua.JPEG", "n04487394_trombone.JPEG")
# Four fixed, smooth projections of the whole vector: a change anywhere moves them.
PROJECTIONS = np.cos(np.outer(np.arange(1, 5), np.arange(512) * 0.01)).astype(np.float32)

DOG_CLASSES = range(151, 269)  # ImageNet class indices of the dog breeds


def open_photo(source: Path | io.BytesIO) -> Image.Image:
    with Image.open(source) as image:
        return image.convert("RGB")


def jpeg_copy(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return open_photo(buffer)


def half_size_copy(image: Image.Image) -> Image.Image:
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)


def summary(vector: Vectors) -> dict[str, Any]:
    return {
        "head": [round(float(value), 6) for value in vector[:16]],
        "sum": round(float(vector.sum()), 6),
        "max": round(float(vector.max()), 6),
        "projections": [round(float(value), 6) for value in PROJECTIONS @ vector],
    }


# --- to_model_input ---------------------------------------------------------------------


def test_model_input_is_bgr_minus_the_imagenet_means() -> None:
    red = Image.new("RGB", (50, 30), (255, 0, 0))

    pixels = to_model_input(red)

    assert pixels.shape == (INPUT_SIZE, INPUT_SIZE, 3)
    assert pixels.dtype == np.float32
    assert np.allclose(pixels[..., 0], 0 - 103.939)  # blue first
    assert np.allclose(pixels[..., 1], 0 - 116.779)
    assert np.allclose(pixels[..., 2], 255 - 123.68)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_model_input_converts_other_modes_to_rgb(mode: str) -> None:
    rgb = Image.new("RGB", (40, 40), (128, 128, 128))
    gray = rgb.convert(mode, palette=Image.Palette.ADAPTIVE) if mode == "P" else rgb.convert(mode)

    pixels = to_model_input(gray)

    assert pixels.shape == (INPUT_SIZE, INPUT_SIZE, 3)
    assert np.allclose(pixels, 128 - BGR_MEAN, atol=1.0)


def test_model_input_squeezes_the_whole_picture_ignoring_aspect_ratio() -> None:
    wide = Image.new("RGB", (800, 100), (0, 0, 0))
    wide.paste((255, 255, 255), (0, 0, 400, 100))  # left half white

    pixels = to_model_input(wide) + BGR_MEAN

    assert np.allclose(pixels[:, : INPUT_SIZE // 2 - 2], 255)  # no crop: the white half is all there
    assert np.allclose(pixels[:, INPUT_SIZE // 2 + 2 :], 0)


# --- FeatureModel -----------------------------------------------------------------------


def test_vectors_are_unit_norm_float32_of_the_model_dimension(feature_model: FeatureModel, photos: list[Path]) -> None:
    vector = feature_model.embed(open_photo(photos[0]))

    assert (feature_model.name, feature_model.dimension) == (MODEL_NAME, 512)
    assert vector.shape == (512,)
    assert vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_a_batch_gives_the_same_vectors_as_one_by_one(feature_model: FeatureModel, photos: list[Path]) -> None:
    images = [open_photo(path) for path in photos[: BATCH_CHUNK + 1]]  # crosses a chunk boundary

    batch = feature_model.embed_batch(images)

    assert batch.shape == (len(images), 512)
    assert batch.dtype == np.float32
    for index in (0, BATCH_CHUNK - 1, BATCH_CHUNK):
        assert np.allclose(batch[index], feature_model.embed(images[index]), atol=1e-5)


def test_an_empty_batch_gives_no_vectors(feature_model: FeatureModel) -> None:
    vectors = feature_model.embed_batch([])

    assert vectors.shape == (0, 512)
    assert vectors.dtype == np.float32


def test_an_edited_copy_is_much_closer_to_its_original_than_to_other_photos(
    feature_model: FeatureModel, photos: list[Path]
) -> None:
    originals = [open_photo(path) for path in photos[3::62]]  # nine photos of unrelated classes
    vectors = feature_model.embed_batch(originals)
    unrelated = vectors @ vectors.T
    np.fill_diagonal(unrelated, -1.0)
    nearest_other = unrelated.max(axis=1)

    for edit in (lambda image: jpeg_copy(image, 20), half_size_copy):
        copies = feature_model.embed_batch([edit(image) for image in originals])
        to_original = np.sum(copies * vectors, axis=1)

        assert (to_original > 0.9).all(), to_original
        assert (to_original > nearest_other + 0.2).all(), (to_original, nearest_other)


def test_pinned_photos_keep_their_vectors(feature_model: FeatureModel, photos: list[Path]) -> None:
    pinned = json.loads(PINNED_PATH.read_text())["photos"]
    by_name = {path.name: path for path in photos}

    for name in PINNED_PHOTOS:
        actual = summary(feature_model.embed(open_photo(by_name[name])))
        expected = pinned[name]

        assert np.allclose(actual["head"], expected["head"], atol=1e-4), name
        assert np.allclose(actual["projections"], expected["projections"], atol=1e-4), name
        assert actual["sum"] == pytest.approx(expected["sum"], abs=1e-4), name
        assert actual["max"] == pytest.approx(expected["max"], abs=1e-4), name


# --- errors -----------------------------------------------------------------------------


def test_a_missing_model_file_asks_for_make_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="make model"):
        FeatureModel(tmp_path / "absent.onnx")


def test_a_file_that_is_not_a_model_asks_for_make_model(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx model")

    with pytest.raises(ModelError, match="make model"):
        FeatureModel(path)


def test_a_checksum_mismatch_is_refused() -> None:
    with pytest.raises(ModelError, match="checksum"):
        FeatureModel(MODEL_PATH, expected_sha256="0" * 64)


def test_the_checksum_in_the_facts_beside_the_model_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.symlink_to(MODEL_PATH)
    path.with_suffix(".json").write_text(json.dumps({"name": "swapped", "sha256": "0" * 64}))

    with pytest.raises(ModelError, match="make model"):
        FeatureModel(path)


def test_the_name_comes_from_the_facts_beside_the_model(tmp_path: Path) -> None:
    named, bare = tmp_path / "named" / "model.onnx", tmp_path / "bare" / "model.onnx"
    for path in (named, bare):
        path.parent.mkdir()
        path.symlink_to(MODEL_PATH)
    facts = json.loads(MODEL_PATH.with_suffix(".json").read_text())
    named.with_suffix(".json").write_text(json.dumps({**facts, "name": "vgg16-gmp-fp32-copy"}))

    assert FeatureModel(named, threads=1).name == "vgg16-gmp-fp32-copy"
    assert FeatureModel(bare, threads=1).name == MODEL_NAME


# --- semantics (slow: embeds all 500 dataset photos once) -------------------------------


@pytest.fixture(scope="module")
def dataset_vectors(feature_model: FeatureModel, photos: list[Path]) -> Vectors:
    chunks = [
        feature_model.embed_batch([open_photo(path) for path in photos[start : start + 32]])
        for start in range(0, len(photos), 32)
    ]
    return np.concatenate(chunks)


def precision_at_k(vectors: Vectors, queries: Sequence[int], relevant: set[int], k: int) -> list[float]:
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)  # a photo is not its own neighbour
    neighbours = np.argsort(-similarity[list(queries)], axis=1)[:, :k]
    return [sum(int(n) in relevant for n in row) / k for row in neighbours]


@pytest.mark.slow
def test_the_neighbours_of_a_dog_are_mostly_dogs(dataset_vectors: Vectors, photos: list[Path]) -> None:
    # The odd half of ImageNet: photo i in file-name order is class 2i + 1.
    dogs = [index for index in range(len(photos)) if 2 * index + 1 in DOG_CLASSES]
    assert len(dogs) == 59

    precisions = precision_at_k(dataset_vectors, dogs, set(dogs), k=10)

    mean = float(np.mean(precisions))
    print(f"dog precision@10 over {len(dogs)} dog photos: mean {mean:.3f}, min {min(precisions):.1f}")
    assert mean >= 0.7


def regenerate_pinned_vectors() -> None:
    """Rewrite data/embedding_pinned.json from the current model (see the module docstring)."""
    model = FeatureModel(MODEL_PATH, threads=os.cpu_count())
    by_name = {path.name: path for path in dataset_photos()}
    document = {
        "about": "Summaries of the vectors of three dataset photos; regenerate with "
        "`.venv/bin/python -m tests.unit.test_embedding` after an intended model change.",
        "model": model.name,
        "photos": {name: summary(model.embed(open_photo(by_name[name]))) for name in PINNED_PHOTOS},
    }
    PINNED_PATH.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {PINNED_PATH}")


if __name__ == "__main__":
    regenerate_pinned_vectors()
