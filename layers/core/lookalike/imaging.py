"""Bytes → a normalised RGB working image: the one decoder the indexer, the search API and the CLI share.

Index and query must see identical pixels (see MEASUREMENTS.md: the resize filter moves the
feature vectors far more than quantisation does), so everything that shapes the pixels is
fixed here: which formats are opened, how EXIF orientation, transparency and high bit depths
are handled, and the one resampling filter.

Hostile input is expected. Only allow-listed formats are ever parsed (an EPS would otherwise
start Ghostscript), the pixel count is checked from the header before a single pixel is
decoded, truncated files are rejected rather than half-decoded, and the only exception that
leaves :func:`decode` is :class:`lookalike.errors.ImageRejected`.

>>> from io import BytesIO
>>> buffer = BytesIO()
>>> Image.new("RGB", (4000, 3000), "teal").save(buffer, "JPEG")
>>> decoded = decode(buffer.getvalue())
>>> decoded.format, decoded.width, decoded.height, decoded.image.size
('JPEG', 4000, 3000, (1024, 768))
"""

from __future__ import annotations

import logging
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps, features

from lookalike.errors import ImageRejected

logger = logging.getLogger(__name__)

#: Pillow format names lookalike decodes. MPO (the multi-picture JPEG many phones write) is
#: reached through Pillow's JPEG opener; HEIF needs pillow-heif, AVIF Pillow's built-in codec.
ACCEPTED_FORMATS: Final = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "HEIF"})

# The order Pillow tries the openers in. AVIF comes before HEIF because both claim the
# generic "mif1" brand; Pillow moves on to the next opener when one refuses the file.
_OPEN_ORDER: Final = ("JPEG", "PNG", "WEBP", "GIF", "AVIF", "HEIF", "TIFF", "BMP")

#: The one resampling filter; index and query must resize identically, everywhere. Pillow's
#: BILINEAR widens its triangle kernel by the reduction ratio, so downscaling is antialiased at
#: any ratio. On a drafted 12 MP JPEG it differed from LANCZOS by about 0.1 grey level on
#: average and cost less than half as much: with LANCZOS the resize outweighed the decode.
RESAMPLING: Final = Image.Resampling.BILINEAR

#: What transparent pixels become. White, because transparent images (logos, stickers,
#: cut-outs) are drawn to be seen on white pages: a screenshot or a JPEG re-save of one shows
#: white where it was transparent, and dark line art survives (on black it would vanish).
#: Border trimming then sees transparent padding as ordinary uniform padding.
BACKGROUND: Final = (255, 255, 255)

_SNIFF_BYTES: Final = 64


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What :func:`decode` accepts.

    Pillow's own decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, about 89 megapixels by
    default; its warning is an error inside :func:`decode`) still applies on top of ``max_pixels``.
    """

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 50_000_000  # checked from the header, before any pixel is decoded
    max_side: int = 1024  # the returned working image is at most this on its longer side
    min_side: int = 8  # an image with a shorter side is rejected as too small

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_side, self.min_side) < 1:
            raise ValueError(f"decode limits must be positive: {self}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} exceeds max_side {self.max_side}")


DEFAULT_LIMITS: Final = DecodeLimits()


@dataclass(frozen=True, slots=True)
class DecodedImage:
    image: Image.Image  # mode "RGB", EXIF orientation applied, longer side <= limits.max_side
    format: str  # Pillow format name, e.g. "JPEG", "MPO", "PNG", "HEIF"
    width: int  # full size after EXIF orientation, before any reduction
    height: int


def decode(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode untrusted bytes into an RGB working image no larger than ``limits.max_side``.

    Raises :class:`ImageRejected` (and nothing else) when the bytes are empty, too large,
    not an image, in a format that is not accepted, truncated, corrupt, too small, or declare
    more than ``limits.max_pixels`` pixels.
    """
    if not data:
        raise ImageRejected("empty", "the file is empty")
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large", f"the file is {_bytes(len(data))}; the limit is {_bytes(limits.max_bytes)}")
    claimed = _identify(data[:_SNIFF_BYTES])
    if claimed is None:
        raise ImageRejected("not_an_image", "the data is not in any image format lookalike recognises")
    if claimed not in _openers():
        raise ImageRejected("unsupported_format", _unsupported_message(claimed))
    _check_container(claimed, data)

    with warnings.catch_warnings(record=True) as noticed:
        # Locally, so that neither Pillow's global limit nor the caller's filters change.
        # Other warnings (odd metadata in a hostile file) are the uploader's problem, not the
        # caller's: they are logged rather than shown.
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode(data, claimed, limits)
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected("too_many_pixels", _bomb_message(claimed, exc, limits)) from exc
        except Exception as exc:  # a hostile file can make any decoder raise anything
            raise _rejection_from(claimed, exc) from exc
        finally:
            for notice in noticed:
                logger.debug("while decoding %s: %s", claimed, notice.message)


def _decode(data: bytes, claimed: str, limits: DecodeLimits) -> DecodedImage:
    try:
        opened = Image.open(BytesIO(data), formats=list(_openers()))
    except Image.UnidentifiedImageError as exc:
        raise ImageRejected("corrupt", f"the data starts like {claimed} but its header is unreadable") from exc
    with opened:
        width, height = opened.size
        if width * height > limits.max_pixels:
            raise ImageRejected(
                "too_many_pixels",
                f"{opened.format} declares {width}x{height} = {_megapixels(width * height)}; "
                f"the limit is {_megapixels(limits.max_pixels)}",
            )
        if min(width, height) < limits.min_side:
            raise ImageRejected(
                "too_small", f"the image is {width}x{height}; each side must be at least {limits.min_side}"
            )
        target = _fit((width, height), limits.max_side)
        if opened.format in ("JPEG", "MPO") and target != (width, height):
            # libjpeg scales by 1/2, 1/4 or 1/8 inside the DCT, never below the requested
            # size: a 12-megapixel photo decodes several times faster than at full size.
            opened.draft(None, target)
        opened.load()  # the first frame of an animation; raises on truncated data
        stored = opened.size
        image = _transposed(opened)
        if image.size == (stored[1], stored[0]) != stored:
            width, height, target = height, width, (target[1], target[0])
        image = _to_rgb(image)
        if image.size != target:
            image = image.resize(target, RESAMPLING)
        elif isinstance(image, ImageFile.ImageFile):
            image = image.copy()  # detach the result from the (closing) file
    return DecodedImage(image=image, format=opened.format or claimed, width=width, height=height)


@cache
def _openers() -> tuple[str, ...]:
    """The Pillow openers of the accepted formats this installation can decode, in order.

    The HEIF opener is registered here, on first use, rather than at import time.
    """
    Image.init()
    try:
        import pillow_heif
    except ImportError:
        logger.info("pillow-heif is not installed: HEIF images will be rejected")
    else:
        pillow_heif.register_heif_opener()
    has_codec = {"AVIF": features.check("avif")}
    return tuple(name for name in _OPEN_ORDER if name in Image.OPEN and has_codec.get(name, True))


# Formats Pillow has no opener for but that people do upload, recognised by their first bytes
# so that the answer is "not accepted" rather than "not an image".
_FOREIGN_SIGNATURES: Final = (
    (re.compile(rb"%PDF-"), "PDF"),
    (re.compile(rb"\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*(<!DOCTYPE svg[^>]*>\s*)?<svg", re.S | re.I), "SVG"),
    (re.compile(rb"\xff\x0a|\x00\x00\x00\x0cJXL \r\n\x87\n"), "JPEG XL"),
    (re.compile(rb"....ftyp(avif|avis)", re.S), "AVIF"),
    (re.compile(rb"....ftyp(heic|heix|heim|heis|hevc|hevx|mif1|msf1)", re.S), "HEIF"),
)


def _identify(prefix: bytes) -> str | None:
    """The format the first bytes claim, by signature only: nothing is parsed.

    Accepted formats are tried first; then the formats Pillow could open but lookalike
    does not accept (EPS, ICO, PSD, ...), whose Pillow signature checks are pure byte
    comparisons; then a few formats Pillow cannot open at all.
    """
    pillow_formats = [*_openers(), *(name for name in Image.OPEN if name not in ACCEPTED_FORMATS)]
    for name in pillow_formats:
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(prefix[:16]):
                return name
        except Exception:  # noqa: S112 - some checks index past a short prefix: no match
            continue
    for pattern, name in _FOREIGN_SIGNATURES:
        if pattern.match(prefix):
            return name
    return None


def _unsupported_message(claimed: str) -> str:
    accepted = ", ".join(_openers())
    if claimed in ACCEPTED_FORMATS:
        return f"no {claimed} decoder is installed here; send {accepted}"
    return f"{claimed} images are not accepted; send {accepted}"


def _check_container(claimed: str, data: bytes) -> None:
    """Reject truncation and corruption that the container itself reveals, before decoding.

    Pillow does not check PNG data checksums and reports a cut-off WebP or AVIF file as an
    unreadable one; the containers' own length fields and CRCs say exactly what is wrong.
    """
    if claimed == "JPEG":
        _check_jpeg_headers(data)
    elif claimed == "PNG":
        _check_png_chunks(data)
    elif claimed == "WEBP":
        declared = 8 + struct.unpack_from("<I", data, 4)[0]  # the RIFF header's own size
        if len(data) < declared:
            raise ImageRejected("truncated", f"WEBP declares {declared} bytes but has {len(data)}")
    elif claimed in ("AVIF", "HEIF"):
        _check_bmff_boxes(claimed, data)


def _check_jpeg_headers(data: bytes) -> None:
    """The marker segments before the first scan must fit in the file.

    A cut inside the scans is left to libjpeg, which reports it; a cut inside the headers
    (EXIF, ICC profile, tables) would otherwise look like an unreadable file.
    """
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return  # not a marker: the decoder will say what is wrong
        marker = data[position + 1]
        if marker in (0xDA, 0xD9):  # start of scan (or an early end): the headers are complete
            return
        if marker == 0xFF:  # fill byte before a marker
            position += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length (TEM, RSTn, SOI)
            position += 2
        else:
            position += 2 + struct.unpack_from(">H", data, position + 2)[0]
    raise ImageRejected("truncated", f"JPEG ends after {len(data)} bytes, inside its headers")


def _check_png_chunks(data: bytes) -> None:
    """Walk the chunks: each must fit in the file and match its CRC, up to IEND.

    A bad CRC on a complete file is ``corrupt`` (the data is all there but damaged, and
    libpng refuses such files too); running out of data before IEND is ``truncated``.
    """
    position = 8
    while True:
        if position + 12 > len(data):
            raise ImageRejected("truncated", f"PNG ends after {len(data)} bytes, before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 8 + length
        if end + 4 > len(data):
            raise ImageRejected("truncated", f"PNG chunk {kind!r} needs {end + 4} bytes but the file has {len(data)}")
        (stored_crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[position + 4 : end]) != stored_crc:
            raise ImageRejected("corrupt", f"PNG chunk {kind!r} at byte {position} fails its CRC check")
        if kind == b"IEND":
            return
        position = end + 4


def _check_bmff_boxes(claimed: str, data: bytes) -> None:
    """Each top-level ISO-BMFF box (ftyp, meta, mdat, ...) must fit in the file."""
    position = 0
    while position + 8 <= len(data):
        size = struct.unpack_from(">I", data, position)[0]
        header = 8
        if size == 1 and position + 16 <= len(data):
            size, header = struct.unpack_from(">Q", data, position + 8)[0], 16
        elif size == 0:  # the last box runs to the end of the file
            return
        if size < header:
            raise ImageRejected("corrupt", f"{claimed} box at byte {position} declares size {size}")
        if position + size > len(data):
            raise ImageRejected(
                "truncated", f"{claimed} box at byte {position} needs {size} bytes; {len(data) - position} remain"
            )
        position += size
    if position != len(data):
        raise ImageRejected("truncated", f"{claimed} ends inside a box header at byte {position}")


def _rejection_from(claimed: str, exc: Exception) -> ImageRejected:
    """Name what went wrong inside a decoder: running out of data, or anything else."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or "truncated" in text.lower():
        return ImageRejected("truncated", f"{claimed} data ends early: {text}")
    return ImageRejected("corrupt", f"{claimed} data cannot be decoded: {text}")


def _bomb_message(claimed: str, exc: Warning | Exception, limits: DecodeLimits) -> str:
    # Pillow's check runs inside Image.open, before the size can be read off the image.
    declared = re.search(r"\((\d+) pixels\)", str(exc))
    size = _megapixels(int(declared.group(1))) if declared else "more pixels than Pillow allows"
    return f"{claimed} declares {size}; the limit is {_megapixels(limits.max_pixels)}"


def _transposed(image: Image.Image) -> Image.Image:
    """The image turned upright as its EXIF orientation says (in place when it must turn).

    Unreadable metadata does not make the pixels unreadable: the image is then kept as stored.
    """
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:
        logger.debug("EXIF orientation ignored: %s", exc)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, compositing transparency on :data:`BACKGROUND`."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_high_depth_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    if image.has_transparency_data:  # RGBA, LA, PA, P or RGB with a transparent colour
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, HSV ...
    except ValueError as exc:
        raise ImageRejected("unsupported_format", f"pixel mode {image.mode} is not supported") from exc


def _high_depth_to_uint8(values: npt.NDArray[np.generic], mode: str) -> npt.NDArray[np.uint8]:
    """Scale 16-bit, 32-bit and float samples to 0..255 without clipping.

    16-bit samples are scaled by the range of the type (65535 -> 255), so a dark 16-bit
    image stays dark. Mode "I" holds 16-bit samples when they fit (Pillow opens some 16-bit
    files that way) and is otherwise stretched over its own range; "F" is read as 0..1 when
    it fits there, and likewise stretched otherwise.
    """
    samples = values.astype(np.float64)
    low, high = float(samples.min()), float(samples.max())
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        scaled = samples / 257.0
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = samples * 255.0
    else:
        scaled = (samples - low) * (255.0 / (high - low)) if high > low else np.zeros_like(samples)
    return np.rint(scaled).astype(np.uint8)


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down so that its longer side is ``max_side``; never scaled up."""
    width, height = size
    longer = max(width, height)
    if longer <= max_side:
        return size
    return max(1, round(width * max_side / longer)), max(1, round(height * max_side / longer))


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} megapixels" if pixels >= 10_000_000 else f"{pixels / 1e6:.1f} megapixels"


def _bytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB" if size >= 1024 * 1024 else f"{size:,} bytes"
