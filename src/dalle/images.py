"""Image conversion and I/O helpers: PIL <-> tensors in [0, 1], PNG bytes, contact sheets."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Refuse decompression bombs early with a clear error instead of Pillow's warning.
MAX_IMAGE_PIXELS = 8192 * 8192


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor ``(3, H, W)`` in [0, 1] (converted to RGB)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def check_images(images: torch.Tensor, channels: int, size: int) -> None:
    """ValueError unless ``images`` is a float batch ``(B, channels, size, size)``."""
    c, s = channels, size
    if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
        raise ValueError(f"expected images of shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """Float tensor ``(3, H, W)`` in [0, 1] -> PIL RGB image (clamped, rounded)."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected an image tensor (3, H, W), got shape {tuple(tensor.shape)}")
    array = (tensor.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), "RGB")


def load_image(path: Path) -> Image.Image:
    """Open an image file fully as RGB, or raise ``ValueError`` naming the file. 16-bit grey
    (PNG) keeps its top 8 bits rather than saturating; alpha is dropped, CMYK converted."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h <= MAX_IMAGE_PIXELS:
                im.load()
                if im.mode == "I" or im.mode.startswith("I;16"):
                    grey = np.asarray(im, dtype=np.int64).clip(0, 65535) >> 8
                    return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
                return im.convert("RGB")
    # Pillow's decoders also raise ValueError, EOFError and SyntaxError on damaged files.
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from None
    raise ValueError(f"{path}: image of {w}x{h} pixels exceeds the {MAX_IMAGE_PIXELS} limit")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(images: list[Image.Image], columns: int = 8, pad: int = 2) -> Image.Image:
    """Tile equally sized images in a grid with a grey gutter, row by row."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (64, 64, 64))
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        sheet.paste(im, (pad + c * (w + pad), pad + r * (h + pad)))
    return sheet


def captioned_grid(
    rows: list[list[Image.Image]], captions: list[str], pad: int = 2, caption_width: int = 240
) -> Image.Image:
    """One row per caption: the caption text on the left, then that row's images."""
    from PIL import ImageDraw

    if not rows or len(rows) != len(captions):
        raise ValueError(
            f"captioned_grid needs one caption per row, got {len(captions)} for {len(rows)}"
        )
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    row_h = max(h, 12)
    sheet = Image.new(
        "RGB",
        (caption_width + cols * (w + pad) + pad, len(rows) * (row_h + pad) + pad),
        (32, 32, 32),
    )
    draw = ImageDraw.Draw(sheet)
    for r, (images, text) in enumerate(zip(rows, captions, strict=True)):
        y = pad + r * (row_h + pad)
        words, line, lines = text.split(), "", []
        for word in words:  # wrap at ~38 characters per line of the default bitmap font
            if line and len(line) + 1 + len(word) > 38:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        for i, part in enumerate(lines[: max(1, row_h // 11)]):
            draw.text((4, y + 2 + 11 * i), part, fill=(230, 230, 230))
        for c, im in enumerate(images):
            sheet.paste(im, (caption_width + pad + c * (w + pad), y))
    return sheet
