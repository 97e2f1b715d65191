"""A corpus of hostile and broken files, generated on demand (nothing binary is committed).

Each :class:`HostileFile` carries the bytes, the name it might arrive under (a renamed file
keeps lying about its type) and the reason :func:`lookalike.imaging.decode` must give.
Headers that Pillow cannot write (huge dimensions, EPS, PSD) are written by hand with
``struct`` and ``zlib``, so the files stay a few hundred bytes however much they declare.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

from PIL import Image

from lookalike.errors import RejectionReason
from lookalike.imaging import DEFAULT_LIMITS, DecodeLimits


@dataclass(frozen=True)
class HostileFile:
    name: str
    data: bytes
    reason: RejectionReason
    limits: DecodeLimits = DEFAULT_LIMITS

    def __repr__(self) -> str:  # pytest ids and failure messages stay short
        return f"HostileFile({self.name!r}, {len(self.data)} bytes, {self.reason})"


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR declares ``width`` x ``height`` 8-bit RGB pixels.

    Only one row of pixel data follows: the file is tiny, and any decoder that allocates
    from the header before checking it would try to allocate width x height x 3 bytes.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    one_row = zlib.compress(b"\x00" + b"\x80" * 3 * min(width, 4096))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", one_row) + png_chunk(b"IEND", b"")


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF89a whose screen and single frame declare ``width`` x ``height``, with 4 pixels of data."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    lzw = b"\x02" + b"\x02\x44\x01" + b"\x00"  # minimum code size 2, one sub-block, terminator
    return screen + frame + lzw + b"\x3b"


def with_bad_crc(png: bytes, chunk: bytes) -> bytes:
    """``png`` with the CRC of its first ``chunk`` flipped; every data byte is intact."""
    position = 8
    while True:
        length, kind = struct.unpack_from(">I4s", png, position)
        crc_at = position + 8 + length
        if kind == chunk:
            broken = bytearray(png)
            broken[crc_at] ^= 0xFF
            return bytes(broken)
        position = crc_at + 4


def minimal_eps() -> bytes:
    """An Encapsulated PostScript file with a real header and bounding box: a grey square."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
        b"0.5 setgray 0 0 64 64 rectfill\nshowpage\n%%EOF\n"
    )


def minimal_pdf() -> bytes:
    """A one-page PDF (header, catalog, page tree, trailer)."""
    return (
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
        b"1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
        b"3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 64 64] >> endobj\n"
        b"trailer << /Root 1 0 R >>\n%%EOF\n"
    )


def minimal_psd() -> bytes:
    """A Photoshop header (signature, version 1, 3 channels, 64x64, 8 bits, RGB) and empty sections."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 64, 64, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + b"\x80" * (3 * 64 * 64)


def truncated(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def hostile_corpus(photo: Image.Image) -> list[HostileFile]:
    """Every hostile file, the truncated ones cut from real encodings of ``photo`` (RGB)."""
    encodings = {
        "jpg": encode(photo, "JPEG", quality=90),
        "png": encode(photo, "PNG"),
        "gif": encode(photo.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        "webp": encode(photo, "WEBP", quality=80),
        "avif": encode(photo, "AVIF", quality=60),
    }
    png = encodings["png"]
    return [
        HostileFile("empty.jpg", b"", "empty"),
        HostileFile("notes.jpg", b"Meeting notes, not a picture.\nSecond line.\n" * 20, "not_an_image"),
        HostileFile("page.html.png", b"<!DOCTYPE html><html><body><img src=x></body></html>", "not_an_image"),
        HostileFile("archive.zip.jpg", b"PK\x03\x04" + bytes(60), "not_an_image"),
        *(
            HostileFile(f"cut-{int(fraction * 100)}.{extension}", truncated(data, fraction), "truncated")
            for extension, data in encodings.items()
            for fraction in (0.1, 0.5, 0.9)
        ),
        HostileFile("cut-in-icc-profile.jpg", encode(photo, "JPEG", icc_profile=bytes(4000))[:1500], "truncated"),
        HostileFile("no-iend.png", png[:-12], "truncated"),
        HostileFile("bad-idat-crc.png", with_bad_crc(png, b"IDAT"), "corrupt"),
        HostileFile("bad-ihdr-crc.png", with_bad_crc(png, b"IHDR"), "corrupt"),
        HostileFile("drawing.eps.png", minimal_eps(), "unsupported_format"),
        HostileFile("document.pdf.png", minimal_pdf(), "unsupported_format"),
        HostileFile("layers.psd.png", minimal_psd(), "unsupported_format"),
        HostileFile("icon.ico.png", encode(photo.resize((32, 32)), "ICO"), "unsupported_format"),
        HostileFile("vector.svg.png", b'<?xml version="1.0"?>\n<svg xmlns="x"/>', "unsupported_format"),
        HostileFile("30000x30000.png", png_declaring(30_000, 30_000), "too_many_pixels"),
        HostileFile("8000x8000.png", png_declaring(8_000, 8_000), "too_many_pixels"),
        HostileFile("20000x20000.gif", gif_declaring(20_000, 20_000), "too_many_pixels"),
        HostileFile("1x1.png", encode(Image.new("RGB", (1, 1), "red"), "PNG"), "too_small"),
        HostileFile("5000x4.png", encode(Image.new("L", (5000, 4), 128), "PNG"), "too_small"),
        HostileFile("large.jpg", encodings["jpg"], "too_large", DecodeLimits(max_bytes=4096)),
    ]
