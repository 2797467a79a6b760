"""Pictures sent to the HTTP API to complete: a base64 string in the JSON body -> checked bytes
-> an RGB image, or a one-line ``ValueError`` (the app answers 422 naming the ``image`` field).

The checks, cheapest first: the length of the text, valid base64 (whitespace and a
``data:image/...;base64,`` prefix are allowed), at most :data:`MAX_IMAGE_BYTES` bytes, one of
:data:`FORMATS` by its content (not its name), at most :data:`MAX_IMAGE_PIXELS` pixels by its
header (before decoding anything, so a decompression bomb is refused unread), then a full
decode (a truncated or corrupt file is refused). The picture is then converted as training
images are (:func:`dalle.images.prepare_image`) by the pipeline.
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image

from dalle.images import load_image

MAX_IMAGE_BYTES = 4 * 1024 * 1024  # a phone photo as JPEG; the model sees it at 64-256 px
MAX_IMAGE_PIXELS = 4096 * 4096  # 16.8 MP: decoded as RGB, 48 MiB at most
MAX_IMAGE_CHARS = 4 * -(-MAX_IMAGE_BYTES // 3) + 256  # its base64, a data: prefix, line breaks
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


def decode_image(text: str) -> Image.Image:
    """A base64 picture -> an RGB PIL image; ``ValueError`` (one line, ``image: ...``) for
    anything that is not a picture of an accepted format within the limits."""
    if len(text) > MAX_IMAGE_CHARS:
        raise ValueError(
            f"image: {len(text)} characters of base64, over the limit of {MAX_IMAGE_CHARS} "
            f"({MAX_IMAGE_BYTES} bytes)"
        )
    if text.startswith("data:"):
        head, comma, text = text.partition(",")
        if not comma or not head.endswith(";base64"):
            raise ValueError("image: a data: URL must be base64 (data:image/png;base64,...)")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"image: not valid base64 ({e})") from None
    if not data:
        raise ValueError("image: empty (expected a base64 PNG, JPEG, WebP or GIF)")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image: {len(data)} bytes, over the limit of {MAX_IMAGE_BYTES}")
    return load_image(io.BytesIO(data), MAX_IMAGE_PIXELS, FORMATS, name="image")
