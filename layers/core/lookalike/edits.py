"""The edits people make to a picture before uploading it again, as seeded, pure functions.

``lookalike eval`` and ``benchmarks/quality.py`` search with these copies of known photos to
measure whether the original is found (and, on photos that are not in the gallery, whether
something else is wrongly called a duplicate). Each edit is ``(image, rng) -> image or bytes``;
:func:`edited_upload` runs one and encodes the result as a JPEG (quality 90 unless the edit
encodes itself), so every query is an upload like any other. The ``rng`` is
``random.Random(edit_seed(seed, photo, edit))``: the same photo, edit and seed always give
the same bytes, in any process.

>>> from PIL import Image
>>> photo = Image.new("RGB", (400, 300), (200, 120, 40))
>>> edited_upload(photo, "letterbox_15", seed=0, photo_name="orange.jpg")[:2]
b'\\xff\\xd8'
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

EditResult = Image.Image | bytes
Edit = Callable[[Image.Image, random.Random], EditResult]

#: Quality of the JPEG every edited image is uploaded as, unless the edit chooses its own.
UPLOAD_QUALITY = 90
#: Height of each letterbox bar, as a share of the photo's height.
LETTERBOX_BAR = 0.15
#: Resampling for every resize an editor makes (what most tools offer by default).
RESAMPLE = Image.Resampling.BICUBIC


def jpeg_bytes(image: Image.Image, quality: int = UPLOAD_QUALITY) -> bytes:
    """``image`` encoded as a baseline JPEG (RGB, or L for grayscale)."""
    buffer = io.BytesIO()
    mode = "L" if image.mode in ("L", "1") else "RGB"
    image.convert(mode).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, RESAMPLE)


def _crop(image: Image.Image, share: float, left_share: float, top_share: float) -> Image.Image:
    """Keep ``share`` of each side; ``left_share``/``top_share`` place it in the slack (0.5 = centred)."""
    width, height = round(image.width * share), round(image.height * share)
    left = round((image.width - width) * left_share)
    top = round((image.height - height) * top_share)
    return image.crop((left, top, left + width, top + height))


def _overlay(image: Image.Image, draw: Callable[[ImageDraw.ImageDraw], None]) -> Image.Image:
    """Alpha-composite what ``draw`` paints on a transparent layer over ``image``."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw(ImageDraw.Draw(layer))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def _font_for_width(text: str, width: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font, sized so that ``text`` is about ``width`` pixels wide."""
    probe = ImageFont.load_default(size=100)
    left, _, right, _ = probe.getbbox(text)
    return ImageFont.load_default(size=max(8, round(100 * width / max(1, right - left))))


# --- the edits, in the order the reports list them -------------------------------------------


def jpeg_q30(image: Image.Image, rng: random.Random) -> bytes:
    return jpeg_bytes(image, 30)


def jpeg_q20(image: Image.Image, rng: random.Random) -> bytes:
    return jpeg_bytes(image, 20)


def downscale_50(image: Image.Image, rng: random.Random) -> Image.Image:
    return _scaled(image, 0.5)


def downscale_25(image: Image.Image, rng: random.Random) -> Image.Image:
    return _scaled(image, 0.25)


def letterbox_15(image: Image.Image, rng: random.Random) -> Image.Image:
    """Black bars above and below, each 15 % of the photo's height (a video still, a phone story)."""
    bar = round(image.height * LETTERBOX_BAR)
    canvas = Image.new("RGB", (image.width, image.height + 2 * bar), (0, 0, 0))
    canvas.paste(image.convert("RGB"), (0, bar))
    return canvas


def black_frame(image: Image.Image, rng: random.Random) -> Image.Image:
    """A black border on all four sides, 5 to 10 % of the shorter side wide."""
    border = round(min(image.size) * rng.uniform(0.05, 0.10))
    return ImageOps.expand(image.convert("RGB"), border=border, fill=(0, 0, 0))


def screenshot_frame(image: Image.Image, rng: random.Random) -> Image.Image:
    """The photo as seen in a screenshot of a window: light padding, a coloured title bar, text."""
    photo = image.convert("RGB")
    unit = max(4, round(min(photo.size) * 0.05))
    title_height, caption_height = 2 * unit, 5 * unit
    background = rng.choice([(246, 246, 246), (236, 239, 244), (250, 248, 240)])
    title_colour = rng.choice([(45, 85, 160), (60, 60, 66), (30, 120, 90), (150, 40, 60)])
    canvas = Image.new("RGB", (photo.width + 2 * unit, photo.height + title_height + caption_height), background)
    canvas.paste(photo, (unit, title_height + unit // 2))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, canvas.width, title_height), fill=title_colour)
    title_font = ImageFont.load_default(size=max(6, round(unit * 1.1)))
    draw.text(
        (unit, title_height // 2),
        f"IMG_{rng.randrange(1000, 9999)}.jpg",
        font=title_font,
        fill=(255, 255, 255),
        anchor="lm",
    )
    text_font = ImageFont.load_default(size=max(6, round(unit * 0.8)))
    words = ["shared", "from", "my", "phone", "holiday", "photo", "look", "at", "this", "view", "today"]
    top = title_height + unit // 2 + photo.height + unit // 2
    for line in range(3):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 7)))
        draw.text((unit, top + line * unit * 1.1), text, font=text_font, fill=(70, 70, 70))
    return canvas


def text_watermark(image: Image.Image, rng: random.Random) -> Image.Image:
    """Large half-transparent white text across about 80 % of the width (a stock-photo mark)."""
    text = rng.choice(["© SAMPLE", "PREVIEW", "© STOCK", "DRAFT"])
    font = _font_for_width(text, image.width * 0.8)
    centre = (image.width / 2, image.height * rng.uniform(0.35, 0.65))
    alpha = rng.randint(110, 150)
    return _overlay(image, lambda d: d.text(centre, text, font=font, fill=(255, 255, 255, alpha), anchor="mm"))


def logo_watermark(image: Image.Image, rng: random.Random) -> Image.Image:
    """A half-transparent badge (disc, ring and initial) in one corner, a fifth of the shorter side."""
    size = max(8, round(min(image.size) * 0.2))
    margin = round(size * 0.25)
    left = margin if rng.random() < 0.5 else image.width - size - margin
    top = margin if rng.random() < 0.5 else image.height - size - margin
    colour = rng.choice([(255, 255, 255), (230, 30, 40), (20, 90, 200)])
    letter = rng.choice("ABKLMPRSTW")
    font = ImageFont.load_default(size=max(6, round(size * 0.6)))

    def draw(d: ImageDraw.ImageDraw) -> None:
        box = (left, top, left + size, top + size)
        d.ellipse(box, fill=(*colour, 120))
        d.ellipse(box, outline=(255, 255, 255, 170), width=max(1, size // 14))
        d.text((left + size / 2, top + size / 2), letter, font=font, fill=(255, 255, 255, 190), anchor="mm")

    return _overlay(image, draw)


def crop_center_80(image: Image.Image, rng: random.Random) -> Image.Image:
    return _crop(image, 0.8, 0.5, 0.5)


def crop_offset_70(image: Image.Image, rng: random.Random) -> Image.Image:
    """70 % of each side, pushed towards a random corner (what a re-framing crop does)."""

    def towards_an_edge() -> float:
        near = rng.uniform(0.0, 0.2)
        return near if rng.random() < 0.5 else 1.0 - near

    return _crop(image, 0.7, towards_an_edge(), towards_an_edge())


def brightness_contrast(image: Image.Image, rng: random.Random) -> Image.Image:
    """Brightness and contrast each moved by 20 to 30 %, up or down."""

    def factor() -> float:
        return 1.0 + rng.choice([-1, 1]) * rng.uniform(0.2, 0.3)

    brighter = ImageEnhance.Brightness(image.convert("RGB")).enhance(factor())
    return ImageEnhance.Contrast(brighter).enhance(factor())


def grayscale(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.grayscale(image)


def rotate_5(image: Image.Image, rng: random.Random) -> Image.Image:
    """Turned 5 degrees either way, same size, the uncovered corners filled with black."""
    return image.convert("RGB").rotate(rng.choice([-5, 5]), resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))


def flip_h(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.mirror(image)


def blur_noise(image: Image.Image, rng: random.Random) -> Image.Image:
    """A Gaussian blur (radius 1.5) then Gaussian sensor-like noise (sigma 8 of 255)."""
    blurred = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, 8.0, blurred.shape)
    return Image.fromarray(np.clip(blurred + noise, 0, 255).astype(np.uint8))


def combo(image: Image.Image, rng: random.Random) -> bytes:
    """Centre crop 80 %, half size, a text watermark, saved at JPEG quality 30: a re-posted copy."""
    return jpeg_bytes(text_watermark(downscale_50(crop_center_80(image, rng), rng), rng), 30)


EDITS: dict[str, Edit] = {
    edit.__name__: edit
    for edit in (
        jpeg_q30,
        jpeg_q20,
        downscale_50,
        downscale_25,
        letterbox_15,
        black_frame,
        screenshot_frame,
        text_watermark,
        logo_watermark,
        crop_center_80,
        crop_offset_70,
        brightness_contrast,
        grayscale,
        rotate_5,
        flip_h,
        blur_noise,
        combo,
    )
}


def select_edits(names: str | Sequence[str] | None) -> list[str]:
    """Validated edit names in report order; None (or "all") means every edit.

    >>> select_edits("flip_h,jpeg_q30")
    ['jpeg_q30', 'flip_h']
    """
    if names is None or names == "all":
        return list(EDITS)
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    unknown = sorted(set(wanted) - set(EDITS))
    if unknown:
        raise ValueError(f"unknown edit(s) {', '.join(unknown)}; known: {', '.join(EDITS)}")
    return [name for name in EDITS if name in wanted]


def edit_seed(seed: int, photo_name: str, edit: str) -> int:
    """A seed for one (photo, edit): stable across processes, unlike ``hash()``."""
    digest = hashlib.blake2b(f"{seed}\x00{photo_name}\x00{edit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def edited_upload(image: Image.Image, edit: str, *, seed: int, photo_name: str) -> bytes:
    """The JPEG bytes of ``edit`` applied to ``image``, reproducible for (seed, photo_name, edit)."""
    result = EDITS[edit](image, random.Random(edit_seed(seed, photo_name, edit)))
    return result if isinstance(result, bytes) else jpeg_bytes(result)
