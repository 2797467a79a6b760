"""Image conversion and I/O helpers: PIL <-> tensors in [0, 1], the one preprocessing every
image gets (RGB, shorter side scaled, centre square: :func:`prepare_image`), PNG bytes and
contact sheets."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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


def to_rgb(image: Image.Image) -> Image.Image:
    """A Pillow image of any mode as RGB, the way training images are read: 16-bit grey keeps
    its top 8 bits rather than saturating; alpha is dropped (the colour under it stays); CMYK,
    palette and grey images are converted."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        grey = np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def load_image(
    path: Path | BinaryIO,
    max_pixels: int = MAX_IMAGE_PIXELS,
    formats: tuple[str, ...] | None = None,
    name: str | None = None,
) -> Image.Image:
    """Open an image file (or a binary file object) fully as RGB (see :func:`to_rgb`), or raise
    ``ValueError`` naming it (``name``, default the path): unreadable, not one of ``formats``
    (Pillow's format names, default any), or over ``max_pixels`` (checked before decoding)."""
    where = str(path) if name is None else name
    try:
        with Image.open(path, formats=formats) as im:
            w, h = im.size
            if w * h <= max_pixels:
                im.load()
                return to_rgb(im)
    except UnidentifiedImageError:  # its message repeats the path, or shows a file object
        kind = "an image format Pillow reads" if formats is None else f"one of {', '.join(formats)}"
        raise ValueError(f"{where}: not a readable image (expected {kind})") from None
    # Pillow's decoders also raise ValueError, EOFError and SyntaxError on damaged files.
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{where}: not a readable image ({e.__class__.__name__}: {e})") from None
    raise ValueError(f"{where}: image of {w}x{h} pixels exceeds the {max_pixels}-pixel limit")


ImageInput = Image.Image | np.ndarray | torch.Tensor | str | Path
IMAGE_TYPES = "a PIL image, a path, an array (H, W[, 1|3|4]) or a tensor ([1, ]C, H, W)"


def as_image(image: ImageInput) -> Image.Image:
    """A picture given as a path (read by :func:`load_image`), a PIL image, a numpy array
    ``(H, W)`` or ``(H, W, 1|3|4)`` or a tensor ``(C, H, W)`` or ``(1, C, H, W)`` with C 1, 3
    or 4 (uint8, or float in [0, 1], rounded to 8 bits) -> an RGB PIL image (:func:`to_rgb`:
    alpha dropped). ``ValueError`` for anything else."""
    if isinstance(image, (str, Path)):
        return load_image(Path(image))
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        t = t.float() if t.is_floating_point() else t  # numpy has no bfloat16
        t = t[0] if t.ndim == 4 and t.shape[0] == 1 else t
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            shape = tuple(image.shape)
            raise ValueError(f"expected an image tensor (C, H, W) with C 1, 3 or 4, got {shape}")
        array = t.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise ValueError(f"expected an image as {IMAGE_TYPES}, got {type(image).__name__}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or not array.size:
        raise ValueError(f"expected an image array (H, W) or (H, W, 3|4), got {array.shape}")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"expected float image values in [0, 1], got [{array.min():g}, {array.max():g}]"
            )
        array = (array.astype(np.float64) * 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 or float image array, got dtype {array.dtype}")
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))  # uint8: L, RGB or RGBA


def resize_crop(image: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to ``size`` (bicubic), then crop the centre square."""
    w, h = image.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        image = image.resize(
            (max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC
        )
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def prepare_image(image: ImageInput, size: int) -> torch.Tensor:
    """Any picture (a path, a PIL image, an array or a tensor: see :func:`as_image`)
    -> ``(3, size, size)`` float in [0, 1], converted exactly as the images of a training folder
    are: read as RGB (alpha dropped, 16-bit grey to its top 8 bits), the shorter side scaled to
    ``size`` (bicubic) and the centre square cropped."""
    return image_to_tensor(resize_crop(as_image(image), size))


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
