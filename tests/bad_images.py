"""Image files that must be refused (``BAD_IMAGES``: empty, truncated, not an image, a
decompression bomb, over the pixel limit) and odd ones that must load as RGB (``ODD_IMAGES``),
shared by the bad-input battery and the upload tests of ``dalle serve``."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels and holds almost no data (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def image_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
GREY16 = Image.fromarray((np.arange(2000, dtype=np.uint16).reshape(40, 50) * 32) + 100)
BAD_IMAGES = {  # name -> bytes: none of these is a readable image
    "zero.png": b"",
    "truncated.png": image_bytes(RGB, "PNG")[:300],
    "truncated.jpg": image_bytes(RGB, "JPEG")[:300],
    "text.png": b"not an image\n",
    "bomb.png": png_header(100_000, 100_000),  # 10^10 pixels
    "huge.png": png_header(9000, 9000),  # over our 8192^2 limit, under Pillow's
}
ODD_IMAGES = {  # name -> bytes: unusual modes that must load as RGB
    "cmyk.jpg": image_bytes(RGB.convert("CMYK"), "JPEG"),
    "grey.png": image_bytes(RGB.convert("L"), "PNG"),
    "grey16.png": image_bytes(GREY16, "PNG"),
    "grey-alpha.png": image_bytes(RGB.convert("LA"), "PNG"),
    "rgba.png": image_bytes(RGB.convert("RGBA"), "PNG"),
    "palette-alpha.png": image_bytes(RGB.convert("P"), "PNG", transparency=0),
}
