"""lookalike.borders: borders a copy gained are trimmed back to the photo; photographs that
merely look dark or plain are left whole."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from lookalike.borders import Trimmed, trim_borders
from lookalike.hashing import phash
from lookalike.imaging import decode

Box = tuple[int, int, int, int]
BLACK, WHITE, LIGHT_GREY, TEAL = (0, 0, 0), (255, 255, 255), (190, 190, 190), (30, 110, 200)


def working_photos(photos: list[Path], count: int = 30) -> list[Image.Image]:
    """``count`` photos spread over the dataset's classes, as the indexer sees them."""
    step = len(photos) // count
    return [decode(path.read_bytes()).image for path in photos[::step][:count]]


def with_border(
    photo: Image.Image, left: int, top: int, right: int, bottom: int, colour: tuple[int, ...]
) -> tuple[Image.Image, Box]:
    canvas = Image.new("RGB", (photo.width + left + right, photo.height + top + bottom), colour)
    canvas.paste(photo, (left, top))
    return canvas, (left, top, left + photo.width, top + photo.height)


def framed(photo: Image.Image, shape: str, colour: tuple[int, ...], share: float = 0.15) -> tuple[Image.Image, Box]:
    across, down = round(photo.width * share), round(photo.height * share)
    sides = {
        "letterbox": (0, down, 0, down),
        "pillarbox": (across, 0, across, 0),
        "frame": (across, down, across, down),
    }
    return with_border(photo, *sides[shape], colour)


def recompressed(image: Image.Image, quality: int) -> Image.Image:
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(BytesIO(buffer.getvalue())).convert("RGB")


def box_error(found: Box, expected: Box) -> int:
    return max(abs(a - b) for a, b in zip(found, expected, strict=True))


def kept_share(result: Trimmed, image: Image.Image) -> float:
    """The smaller of the kept width and height shares."""
    left, top, right, bottom = result.box
    return min((right - left) / image.width, (bottom - top) / image.height)


# --- borders are trimmed ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["letterbox", "pillarbox", "frame"])
def test_noisy_black_borders_are_trimmed_back_to_the_photo(photos: list[Path], shape: str) -> None:
    for photo in working_photos(photos):
        image, expected = framed(photo, shape, BLACK)

        result = trim_borders(recompressed(image, quality=40))

        assert result.kind == "black"
        assert box_error(result.box, expected) <= 4, (shape, result.box, expected)


@pytest.mark.parametrize("colour", [WHITE, LIGHT_GREY, TEAL], ids=["white", "light-grey", "teal"])
@pytest.mark.parametrize("shape", ["letterbox", "pillarbox", "frame"])
def test_flat_borders_of_any_colour_are_trimmed(photos: list[Path], shape: str, colour: tuple[int, ...]) -> None:
    """Photos whose own edge has the border's colour (a white dog on snow) may keep or lose a
    little; nine in ten come back within a few pixels."""
    results = []
    for photo in working_photos(photos):
        image, expected = framed(photo, shape, colour)
        results.append((trim_borders(recompressed(image, quality=40)), expected))

    close = [box_error(result.box, expected) <= 4 for result, expected in results]
    assert sum(close) >= 0.9 * len(close)
    assert all(result.kind == "uniform" for result, _ in results if result.trimmed)


def test_asymmetric_borders_are_trimmed_side_by_side(photos: list[Path]) -> None:
    photo = working_photos(photos)[0]
    image, expected = with_border(photo, 0, 90, 35, 20, BLACK)

    result = trim_borders(recompressed(image, quality=60))

    assert box_error(result.box, expected) <= 3


def test_stray_pixels_in_a_border_do_not_stop_the_trim(photos: list[Path]) -> None:
    photo = working_photos(photos)[1]
    image, expected = framed(photo, "letterbox", BLACK)
    rng = np.random.default_rng(3)
    pixels = np.asarray(image).copy()
    band = expected[1]
    for _ in range(band):  # about one pixel per row of the band
        pixels[rng.integers(0, band), rng.integers(0, image.width)] = (255, 255, 255)

    result = trim_borders(Image.fromarray(pixels))

    assert box_error(result.box, expected) <= 2


def test_a_thin_exact_frame_is_trimmed_but_thin_dark_rows_are_not(photos: list[Path]) -> None:
    photo = working_photos(photos)[2]
    exact, expected = with_border(photo, 1, 1, 1, 1, BLACK)
    nearly_flat = np.asarray(photo).copy()
    rng = np.random.default_rng(5)
    for row in (0, -1):  # flat within a grey level or two, but one pixel is no border
        nearly_flat[row] = 8 + rng.integers(0, 3, size=nearly_flat[row].shape)

    assert trim_borders(exact).box == expected
    assert not trim_borders(Image.fromarray(nearly_flat)).trimmed


def test_grainy_dark_bands_are_content_not_borders(photos: list[Path]) -> None:
    """Curtains above and below a lit stage: within tolerance, sharp-edged, but not flat."""
    photo = working_photos(photos)[3]
    stage = np.asarray(with_border(photo, 0, 60, 0, 60, BLACK)[0]).astype(np.float64)
    rng = np.random.default_rng(9)
    for band in (slice(0, 60), slice(-60, None)):
        stage[band] = 16 + rng.normal(0, 6, stage[band].shape)
    image = Image.fromarray(np.clip(stage, 0, 255).astype(np.uint8))

    assert not trim_borders(image).trimmed


def test_screenshot_padding_and_a_flat_title_bar_are_trimmed(photos: list[Path]) -> None:
    photo = working_photos(photos)[3]
    for padding in (WHITE, (232, 232, 232)):
        screenshot, content = with_border(photo, 40, 30 + 40, 40, 40, padding)
        ImageDraw.Draw(screenshot).rectangle((0, 0, screenshot.width, 29), fill=(40, 60, 120))

        result = trim_borders(recompressed(screenshot, quality=75))

        assert result.kind == "uniform"
        assert box_error(result.box, content) <= 2


def test_a_title_bar_with_text_still_loses_the_padding_and_never_the_content(photos: list[Path]) -> None:
    photo = working_photos(photos)[3]
    screenshot, content = with_border(photo, 40, 30 + 40, 40, 40, WHITE)
    draw = ImageDraw.Draw(screenshot)
    draw.rectangle((0, 0, screenshot.width, 29), fill=(40, 60, 120))
    draw.text((10, 9), "Photo viewer - IMG_0042.JPG", fill=WHITE)

    left, top, right, bottom = trim_borders(recompressed(screenshot, quality=75)).box

    assert left <= content[0] and top <= content[1] and right >= content[2] and bottom >= content[3]
    assert abs(right - content[2]) <= 2 and abs(bottom - content[3]) <= 2


def test_a_border_wider_than_the_bound_goes_when_the_content_edge_is_sharp() -> None:
    noise = Image.effect_noise((200, 120), 80).convert("RGB")
    image, expected = with_border(ImageEnhance.Brightness(noise).enhance(1.5), 0, 90, 0, 90, BLACK)

    assert trim_borders(image).box == expected  # 60% of the height, but a clear edge
    assert not trim_borders(image, min_remaining=0.5).trimmed


def test_the_trimmed_image_is_the_kept_box_of_the_input(photos: list[Path]) -> None:
    image, _ = framed(working_photos(photos)[4], "frame", BLACK)

    result = trim_borders(image)

    assert result.trimmed
    assert np.array_equal(np.asarray(result.image), np.asarray(image.crop(result.box)))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_other_modes_are_trimmed_like_rgb(photos: list[Path], mode: str) -> None:
    image, expected = framed(working_photos(photos)[2], "letterbox", BLACK)

    assert trim_borders(image.convert(mode)).box == trim_borders(image).box == expected


# --- photographs stay whole ------------------------------------------------------------------


def test_photos_darkened_to_a_tenth_stay_whole(photos: list[Path]) -> None:
    for photo in working_photos(photos):
        if trim_borders(photo).trimmed:  # a frame of its own: not what this test is about
            continue
        dark = recompressed(ImageEnhance.Brightness(photo).enhance(0.1), quality=75)

        assert kept_share(trim_borders(dark), dark) >= 0.95


def night_sky(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """Sensor noise over a faint gradient: how a dark sky actually comes out of a camera."""
    gradient = np.linspace(0, 10, height)[:, None, None]
    sky = np.clip(8 + gradient + rng.normal(0, 3, (height, width, 3)), 0, 255)
    return Image.fromarray(sky.astype(np.uint8))


def test_a_night_scene_with_a_bright_moon_stays_whole() -> None:
    rng = np.random.default_rng(7)
    scene = night_sky(rng)
    draw = ImageDraw.Draw(scene)
    draw.ellipse((360, 50, 410, 100), fill=(235, 235, 220))
    for x in range(0, scene.width, 37):  # rooftops, and a few lit windows
        draw.rectangle((x, 300 + int(rng.integers(0, 30)), x + 25, scene.height), fill=(4, 4, 6))
    for _ in range(30):
        x, y = int(rng.integers(0, scene.width)), int(rng.integers(320, scene.height))
        draw.rectangle((x, y, x + 2, y + 2), fill=(250, 200, 90))
    moon_alone = night_sky(rng)
    ImageDraw.Draw(moon_alone).ellipse((200, 150, 260, 210), fill=(240, 240, 230))

    assert not trim_borders(recompressed(scene, quality=75)).trimmed
    assert not trim_borders(recompressed(moon_alone, quality=75)).trimmed


@pytest.mark.parametrize("backdrop_noise", [4.0, 0.0], ids=["photographed", "rendered"])
def test_a_black_object_on_a_black_background_stays_whole(backdrop_noise: float) -> None:
    rng = np.random.default_rng(11)
    height, width = 375, 500
    y, x = np.mgrid[:height, :width]
    inside = ((x - 250) / 150) ** 2 + ((y - 190) / 110) ** 2 < 1
    backdrop = np.clip(10 * (backdrop_noise > 0) + rng.normal(0, backdrop_noise, (height, width, 3)), 0, 255)
    surface = np.clip(28 + rng.normal(0, 9, (height, width, 3)) + 25 * np.sin(x / 9.0)[..., None], 0, 255)
    scene = Image.fromarray(np.where(inside[..., None], surface, backdrop).astype(np.uint8))

    result = trim_borders(recompressed(scene.filter(ImageFilter.GaussianBlur(1)), quality=80))

    assert kept_share(result, scene) >= 0.95


@pytest.mark.parametrize("colour", [(128, 128, 128), BLACK, WHITE])
def test_a_uniform_image_is_left_alone(colour: tuple[int, ...]) -> None:
    flat = Image.new("RGB", (300, 200), colour)
    grainy = Image.fromarray(
        np.clip(np.asarray(flat) + np.random.default_rng(1).normal(0, 2, (200, 300, 3)), 0, 255).astype(np.uint8)
    )

    for image in (flat, grainy):
        result = trim_borders(image)
        assert not result.trimmed and result.box == (0, 0, 300, 200) and result.image is image


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (15, 40), (16, 16), (17, 300)])
@pytest.mark.parametrize("mode", ["RGB", "L", "1", "RGBA"])
def test_tiny_images_do_not_break_anything(size: tuple[int, int], mode: str) -> None:
    image = Image.new(mode, size)
    if min(size) > 2:
        image.paste(Image.effect_noise((size[0], max(1, size[1] // 2)), 60).convert(mode), (0, size[1] // 4))

    result = trim_borders(image)

    left, top, right, bottom = result.box
    assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
    assert result.image.size == (right - left, bottom - top)
    if min(size) < 16:
        assert not result.trimmed


# --- the point of it all: pHash --------------------------------------------------------------


@pytest.mark.parametrize("shape", ["letterbox", "pillarbox", "frame"])
def test_trimming_brings_a_bordered_copy_back_to_the_originals_phash(photos: list[Path], shape: str) -> None:
    trimmed_distances, untrimmed_distances = [], []
    for photo in working_photos(photos):
        original = phash(trim_borders(photo).image)  # the indexer trims too
        copy = recompressed(framed(photo, shape, BLACK)[0], quality=75)
        trimmed_distances.append(phash(trim_borders(copy).image).distance(original))
        untrimmed_distances.append(phash(copy).distance(original))

    assert max(trimmed_distances) <= 6, trimmed_distances
    assert np.median(untrimmed_distances) >= 10, untrimmed_distances
    assert np.mean(trimmed_distances) + 8 < np.mean(untrimmed_distances)
