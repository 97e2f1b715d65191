"""lookalike.imaging: hostile bytes are rejected with the right reason; real images come back
upright, opaque, 8-bit RGB and no larger than the working size."""

from __future__ import annotations

import subprocess
import sys
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, features

from lookalike import imaging
from lookalike.errors import ImageRejected
from lookalike.imaging import ACCEPTED_FORMATS, BACKGROUND, DecodedImage, DecodeLimits, decode
from tests.conftest import dataset_photos
from tests.unit.hostile_files import HostileFile, encode, hostile_corpus, png_declaring

PHOTO = Image.open(dataset_photos()[0]).convert("RGB")
HOSTILE = hostile_corpus(PHOTO)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


# --- hostile files --------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE, ids=[f.name for f in HOSTILE])
def test_hostile_file_is_rejected_with_its_reason(hostile: HostileFile) -> None:
    with pytest.raises(ImageRejected) as rejected:
        decode(hostile.data, hostile.limits)

    assert rejected.value.reason == hostile.reason, rejected.value.message
    assert rejected.value.code == "image_rejected"
    assert len(rejected.value.message) > 10


def test_declared_megapixels_are_named_in_the_message() -> None:
    with pytest.raises(ImageRejected) as giant:
        decode(png_declaring(30_000, 30_000))
    with pytest.raises(ImageRejected) as large:
        decode(png_declaring(8_000, 8_000))

    assert giant.value.message == "PNG declares 900 megapixels; the limit is 50 megapixels"
    assert large.value.message == "PNG declares 8000x8000 = 64 megapixels; the limit is 50 megapixels"


def test_a_declared_giant_is_rejected_without_allocating_its_pixels() -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(ImageRejected, match="megapixels"):
            decode(png_declaring(30_000, 30_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 1_000_000  # 30000 x 30000 x 3 bytes would be 2.7 GB


def test_pillows_bomb_warning_is_an_error_even_when_the_caller_ignores_it() -> None:
    # 10000 x 10000 is between Pillow's warning (89 MP) and error (179 MP) thresholds.
    roomy = DecodeLimits(max_pixels=150_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageRejected) as rejected:
            decode(png_declaring(10_000, 10_000), roomy)

    assert rejected.value.reason == "too_many_pixels"
    assert "100 megapixels" in rejected.value.message


def test_decoding_leaves_pillows_global_settings_alone() -> None:
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)

    decode(encode(PHOTO, "JPEG"))
    with pytest.raises(ImageRejected):
        decode(png_declaring(30_000, 30_000))

    assert limit == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_byte_limit_below_the_file_size_rejects_it_by_size_alone() -> None:
    data = encode(PHOTO, "PNG")

    with pytest.raises(ImageRejected) as rejected:
        decode(data, DecodeLimits(max_bytes=len(data) - 1))

    assert rejected.value.reason == "too_large"
    assert decode(data, DecodeLimits(max_bytes=len(data))).width == PHOTO.width


@pytest.mark.parametrize("format", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_damaged_files_raise_nothing_but_image_rejected(format: str) -> None:
    """Random byte damage anywhere in a file: it decodes, or it is rejected; nothing else escapes."""
    source = PHOTO.resize((96, 64))
    data = encode(source.convert("P") if format == "GIF" else source, format)
    rng = np.random.default_rng(20_240_601)
    outcomes: set[str] = set()
    for trial in range(60):
        damaged = bytearray(data)
        reach = len(data) if trial % 2 else min(len(data), 200)  # half of the damage hits the headers
        for position in rng.integers(0, reach, size=int(rng.integers(1, 8))):
            damaged[position] = int(rng.integers(0, 256))
        try:
            decoded = decode(bytes(damaged))
        except ImageRejected as rejected:
            outcomes.add(rejected.reason)
        else:
            assert decoded.image.mode == "RGB"
            outcomes.add("decoded")

    assert outcomes - {"decoded"}, "sixty damaged files and not one rejected"


def test_a_jpeg_missing_only_its_end_marker_decodes_whole_or_not_at_all() -> None:
    """libjpeg finishes without EOI when every scan is present; Pillow then has nothing missing."""
    reasons = set()
    for path in dataset_photos()[:60]:
        data = path.read_bytes()
        try:
            cut = decode(data[:-2])
        except ImageRejected as rejected:
            reasons.add(rejected.reason)
            continue
        assert np.array_equal(pixels(cut.image), pixels(decode(data).image)), path.name

    assert reasons == {"truncated"}


def test_the_heif_opener_is_registered_on_first_use_not_on_import() -> None:
    probe = "import sys, lookalike.imaging; print('pillow_heif' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "False"


# --- accepted formats -----------------------------------------------------------------------


def roundtrip_formats() -> list[str]:
    names = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF"]
    return [*names, "AVIF"] if features.check("avif") else names


@pytest.mark.parametrize("format", roundtrip_formats())
def test_each_accepted_format_round_trips(format: str) -> None:
    source = PHOTO.resize((320, 240))
    if format == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    if format == "GIF":
        source = source.convert("P")  # GIF is lossless once the colours are in a palette
    data = encode(source, format)

    decoded = decode(data)

    assert format in ACCEPTED_FORMATS
    assert decoded.format == format
    assert (decoded.width, decoded.height) == (320, 240)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (320, 240)
    assert mean_difference(decoded.image, source.convert("RGB")) < 6


def test_a_phone_mpo_decodes_as_its_first_picture() -> None:
    first, second = PHOTO.resize((320, 240)), ImageOps.invert(PHOTO.resize((320, 240)))
    buffer = BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second])

    decoded = decode(buffer.getvalue())

    assert decoded.format == "MPO"
    assert mean_difference(decoded.image, first) < 6 < mean_difference(decoded.image, second)


def test_decoding_is_deterministic() -> None:
    data = encode(PHOTO.resize((2000, 1500)), "JPEG")

    assert np.array_equal(pixels(decode(data).image), pixels(decode(data).image))


# --- geometry -------------------------------------------------------------------------------


def half_red_half_blue(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), "blue")
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    return image


@pytest.mark.parametrize("size", [(200, 100), (3000, 1000)], ids=["small", "drafted"])
def test_exif_orientation_6_turns_the_image_upright(size: tuple[int, int]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display after turning 90 degrees clockwise
    data = encode(half_red_half_blue(*size), "JPEG", exif=exif.tobytes())

    decoded = decode(data)

    width, height = size
    assert (decoded.width, decoded.height) == (height, width)
    shown = pixels(decoded.image)
    assert shown.shape[0] > shown.shape[1]
    top, bottom = shown[: shown.shape[0] // 4], shown[-shown.shape[0] // 4 :]
    assert top[..., 0].mean() > 200 and top[..., 2].mean() < 50  # the stored left half (red) is on top
    assert bottom[..., 2].mean() > 200 and bottom[..., 0].mean() < 50


def test_a_large_jpeg_comes_back_at_the_working_size_with_its_full_size_reported() -> None:
    data = encode(PHOTO.resize((6000, 4000)), "JPEG", quality=85)

    decoded = decode(data)

    assert (decoded.width, decoded.height) == (6000, 4000)
    assert decoded.image.size == (1024, 683)


def test_drafted_jpeg_decoding_looks_like_a_full_decode() -> None:
    large = PHOTO.resize((4000, 3000), Image.Resampling.BICUBIC)
    data = encode(large, "JPEG", quality=90)
    full = Image.open(BytesIO(data)).convert("RGB").resize((1024, 768), Image.Resampling.LANCZOS)

    assert mean_difference(decode(data).image, full) < 2.0


def test_other_formats_are_reduced_to_the_working_size_too() -> None:
    decoded = decode(encode(PHOTO.resize((3000, 2000)), "PNG"), DecodeLimits(max_side=512))

    assert (decoded.width, decoded.height) == (3000, 2000)
    assert decoded.image.size == (512, 341)


def test_small_images_are_never_enlarged() -> None:
    decoded = decode(encode(PHOTO.resize((100, 50)), "PNG"))

    assert decoded.image.size == (100, 50)


# --- modes ----------------------------------------------------------------------------------


def test_palette_transparency_becomes_the_background() -> None:
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    image.paste(1, (10, 10, 30, 30))
    image.info["transparency"] = 0

    shown = pixels(decode(encode(image, "PNG")).image)

    assert tuple(shown[0, 0]) == BACKGROUND
    assert tuple(shown[20, 20]) == (200, 30, 30)


def half_transparent_black() -> Image.Image:
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (0, 0, 20, 40))  # opaque black on the left
    rgba.paste((0, 0, 0, 128), (20, 0, 40, 20))  # half-transparent black top right
    return rgba


@pytest.mark.parametrize(("mode", "format"), [("LA", "PNG"), ("RGBA", "PNG"), ("RGBA", "WEBP"), ("PA", None)])
def test_alpha_is_composited_on_the_background(mode: str, format: str | None) -> None:
    image = half_transparent_black().convert(mode)

    if format is None:  # no format Pillow writes keeps "PA": normalise the decoded value directly
        shown = pixels(imaging._to_rgb(image))
    else:
        options = {"lossless": True} if format == "WEBP" else {}
        shown = pixels(decode(encode(image, format, **options)).image)

    assert tuple(shown[30, 30]) == BACKGROUND  # fully transparent
    assert tuple(shown[10, 10]) == (0, 0, 0)  # opaque
    assert np.all(np.abs(shown[10, 30] - 127) <= 2)  # half black over white


def test_cmyk_is_converted_to_rgb() -> None:
    cmyk = Image.new("CMYK", (40, 40), (255, 0, 0, 0))  # pure cyan
    cmyk.paste((0, 0, 0, 255), (0, 0, 20, 40))  # pure black

    for data in (encode(cmyk, "JPEG", quality=95), encode(cmyk, "TIFF")):
        shown = pixels(decode(data).image)
        assert np.all(np.abs(shown[20, 30] - (0, 255, 255)) <= 6)
        assert np.all(shown[20, 5] <= 6)


def test_one_bit_images_become_black_and_white() -> None:
    checker = Image.fromarray((np.indices((32, 32)).sum(axis=0) % 2).astype(bool))

    shown = pixels(decode(encode(checker, "PNG")).image)

    assert set(np.unique(shown)) == {0, 255}
    assert tuple(shown[0, 0]) == (0, 0, 0) and tuple(shown[0, 1]) == (255, 255, 255)


def gradient_image(mode: str, width: int = 512) -> Image.Image:
    """A horizontal gradient over the full range of ``mode``, 16 rows high."""
    ramp = np.linspace(0, 1, width)
    if mode == "F":
        return Image.fromarray(np.tile(ramp.astype(np.float32), (16, 1)), "F")
    if mode == "I":
        return Image.fromarray(np.tile((ramp * 65535).astype(np.int32), (16, 1)), "I")
    values = np.tile((ramp * 65535).round().astype(np.uint16), (16, 1))
    return Image.frombytes(mode, (width, 16), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())


@pytest.mark.parametrize(("mode", "format"), [("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF"), ("F", "TIFF")])
def test_high_bit_depth_gradients_keep_their_whole_range(mode: str, format: str) -> None:
    data = encode(gradient_image(mode), format)

    row = pixels(decode(data).image)[8]

    assert np.all(row[:, 0] == row[:, 2]), "grey stays grey"
    luminance = row[:, 0]
    assert luminance[0] <= 1 and luminance[-1] >= 254
    assert np.all(np.diff(luminance) >= 0), "monotonic"
    assert len(np.unique(luminance)) >= 250, "a gradient, not a few saturated steps"


def test_a_dark_16_bit_image_stays_dark() -> None:
    dark = Image.fromarray(np.full((16, 16), 4096, dtype=np.uint16))

    shown = pixels(decode(encode(dark, "PNG")).image)

    assert np.all(shown == 16)  # 4096 / 65535 of full scale, not stretched to white


@pytest.mark.parametrize("format", ["GIF", "WEBP", "PNG"])
def test_an_animation_gives_its_first_frame(format: str) -> None:
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((220, 20, 20), (20, 220, 20), (20, 20, 220))]
    buffer = BytesIO()
    frames[0].save(buffer, format, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(BytesIO(buffer.getvalue())) as animated:
        assert getattr(animated, "n_frames", 1) == 3

    shown = pixels(decode(buffer.getvalue()).image)

    assert np.all(np.abs(shown - (220, 20, 20)) <= 8)


def test_a_real_photo_decodes_unchanged_in_size(photos: list[Path]) -> None:
    for path in photos[:20]:
        with Image.open(path) as original:
            size = original.size
        decoded = decode(path.read_bytes())
        assert isinstance(decoded, DecodedImage)
        assert (decoded.width, decoded.height) == size
        assert decoded.image.size == size and decoded.image.mode == "RGB"
