"""The seeded edits the evaluation searches with: valid uploads, reproducible, doing what they say."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.edits import EDITS, LETTERBOX_BAR, edit_seed, edited_upload, jpeg_bytes, select_edits


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="module")
def photo(photos: list[Path]) -> Image.Image:
    # A 500x375 landscape photo (the robin): the edits' geometry is checked against it.
    return Image.open(next(p for p in photos if "robin" in p.name)).convert("RGB")


@pytest.mark.parametrize("edit", list(EDITS))
def test_every_edit_is_a_jpeg_upload_of_a_sensible_size(photo: Image.Image, edit: str) -> None:
    data = edited_upload(photo, edit, seed=0, photo_name="robin")

    image = _open(data)
    assert image.format == "JPEG"
    # Nothing shrinks below a quarter or grows beyond one and a half times the original's sides.
    assert photo.width / 4 - 1 <= image.width <= photo.width * 1.5
    assert photo.height / 4 - 1 <= image.height <= photo.height * 1.5


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edit_is_reproducible_and_changes_more_than_a_plain_resave(photo: Image.Image, edit: str) -> None:
    first = edited_upload(photo, edit, seed=7, photo_name="robin")
    again = edited_upload(photo, edit, seed=7, photo_name="robin")

    assert first == again
    edited = _open(first)
    if edited.size == photo.size:  # the geometric edits change the size, which is change enough
        original = np.asarray(photo, dtype=np.int16)
        resaved = np.asarray(_open(jpeg_bytes(photo)).convert("RGB"), dtype=np.int16)
        change = np.abs(np.asarray(edited.convert("RGB"), dtype=np.int16) - original).mean()
        assert change > 1.3 * np.abs(resaved - original).mean()
    else:
        assert edited.size != photo.size


def test_seeded_edits_vary_with_the_seed_and_the_photo(photo: Image.Image) -> None:
    variants = {edited_upload(photo, "crop_offset_70", seed=s, photo_name="robin") for s in range(8)}
    assert len(variants) > 1
    assert edit_seed(0, "a.jpg", "black_frame") != edit_seed(0, "b.jpg", "black_frame")
    assert edit_seed(0, "a.jpg", "black_frame") == edit_seed(0, "a.jpg", "black_frame")


def test_letterbox_bars_are_black_and_the_photo_is_between_them(photo: Image.Image) -> None:
    boxed = np.asarray(_open(edited_upload(photo, "letterbox_15", seed=0, photo_name="robin")).convert("RGB"))

    bar = round(photo.height * LETTERBOX_BAR)
    assert boxed.shape == (photo.height + 2 * bar, photo.width, 3)
    margin = 3  # JPEG blocks ring a little next to the photo's edge
    assert boxed[: bar - margin].max() <= 8
    assert boxed[-(bar - margin) :].max() <= 8
    middle = boxed[bar + margin : -bar - margin].astype(np.int16)
    assert np.abs(middle - np.asarray(photo, dtype=np.int16)[margin:-margin]).mean() < 4


def test_flip_mirrors_left_and_right(photo: Image.Image) -> None:
    flipped = np.asarray(_open(edited_upload(photo, "flip_h", seed=0, photo_name="robin")).convert("RGB"))
    original = np.asarray(photo, dtype=np.int16)

    mirrored_error = np.abs(flipped[:, ::-1].astype(np.int16) - original).mean()
    unmirrored_error = np.abs(flipped.astype(np.int16) - original).mean()
    resaved_error = np.abs(np.asarray(_open(jpeg_bytes(photo)).convert("RGB"), dtype=np.int16) - original).mean()
    assert mirrored_error < 1.5 * resaved_error
    assert unmirrored_error > 5 * mirrored_error


def test_grayscale_has_no_colour_and_jpeg_quality_sets_the_size(photo: Image.Image) -> None:
    gray = _open(edited_upload(photo, "grayscale", seed=0, photo_name="robin"))
    q20 = edited_upload(photo, "jpeg_q20", seed=0, photo_name="robin")
    q30 = edited_upload(photo, "jpeg_q30", seed=0, photo_name="robin")

    assert gray.mode == "L"
    assert len(q20) < len(q30) < len(edited_upload(photo, "flip_h", seed=0, photo_name="robin"))


def test_frames_surround_the_photo_with_their_colour(photo: Image.Image) -> None:
    framed = np.asarray(_open(edited_upload(photo, "black_frame", seed=0, photo_name="robin")).convert("RGB"))
    shot = np.asarray(_open(edited_upload(photo, "screenshot_frame", seed=0, photo_name="robin")).convert("RGB"))

    assert framed.shape[0] > photo.height and framed.shape[1] > photo.width
    assert max(framed[:2].max(), framed[-2:].max(), framed[:, :2].max(), framed[:, -2:].max()) <= 8
    # Light padding on the left and right of a window screenshot.
    assert shot[shot.shape[0] // 2, :2].min() >= 200 and shot[shot.shape[0] // 2, -2:].min() >= 200


def test_select_edits_keeps_report_order_and_rejects_unknown_names() -> None:
    assert select_edits(None) == list(EDITS)
    assert select_edits("flip_h, jpeg_q30") == ["jpeg_q30", "flip_h"]
    with pytest.raises(ValueError, match="unknown edit"):
        select_edits("jpeg_q30,sepia")
