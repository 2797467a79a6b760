"""Prompt fidelity on the captioned-shapes dataset (shared/SHAPES.md, "Checking a generated image").

The checker reads pixels only: no dataset metadata, no model. It finds the objects in an
image (threshold, cut along the empty grid lines, connected components), names each one's
colour, shape, size and cell, and decides whether they match a prompt's objects one to one
with every stated attribute holding and nothing left over. Prompt fidelity is the fraction of
images that satisfy their prompt, reported for seen colour-shape pairs and held-out ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dalle.data.shapes import CANVAS, COLORS, SHAPES
from dalle.data.shapes_captions import (  # noqa: F401  (the grammar, re-exported for callers)
    ObjectSpec,
    as_specs,
    format_prompt,
    is_held_out_prompt,
    matches,
    parse_prompt,
)
from dalle.images import load_image, tensor_to_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FOREGROUND = 96  # a pixel is foreground when its brightest channel exceeds this (0..255)
MIN_AREA = 12  # components smaller than this many pixels are specks, not objects
LARGE_FROM = 14  # bounding-box side (px) from which an object is large (small 10, large 18)
GRID_LINES = (0, 21, 42, 63)  # pixel rows/columns no object of the spec ever covers
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # (8, 3)
ImageLike = Image.Image | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class FoundObject:
    """An object found in an image; ``bbox`` is ``(x0, y0, x1, y1)`` inclusive, in 64x64 pixels."""

    shape: str
    color: str
    size: str
    col: int
    row: int
    area: int
    bbox: tuple[int, int, int, int]


def _to_array(image: ImageLike) -> np.ndarray:
    """Any accepted image -> uint8 ``(64, 64, 3)``, resized (BOX down, BILINEAR up) if needed."""
    if isinstance(image, torch.Tensor):
        if not image.is_floating_point():
            raise ValueError(f"expected a float image tensor in [0, 1], got dtype {image.dtype}")
        image = tensor_to_image(image)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"expected a uint8 array (H, W, 3), got {image.dtype} {tuple(image.shape)}"
            )
        image = Image.fromarray(image, "RGB")
    elif not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, array or tensor, got {type(image).__name__}")
    image = image.convert("RGB")
    if image.size != (CANVAS, CANVAS):
        shrink = image.width >= CANVAS and image.height >= CANVAS
        resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
        image = image.resize((CANVAS, CANVAS), resample)
    return np.asarray(image)


def _neighbourhood(a: np.ndarray, pad: int | bool, reduce: np.ufunc) -> np.ndarray:
    """``reduce`` (a binary ufunc) over each pixel's 3x3 neighbourhood; the border reads ``pad``."""
    h, w = a.shape
    p = np.full((h + 2, w + 2), pad, dtype=a.dtype)
    p[1:-1, 1:-1] = a
    rows = reduce(reduce(p[:-2], p[1:-1]), p[2:])  # (h, w + 2): over each column's 3 rows
    return reduce(reduce(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def _label(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a boolean mask: 0 background, else the component's label.

    A label is the flat index + 1 of a pixel of the component; every pass takes the smallest
    label in each 3x3 neighbourhood, then the label of the pixel that label points at.
    """
    none = mask.size + 1
    labels = np.where(mask, np.arange(1, none).reshape(mask.shape), none)
    while True:
        spread = np.where(mask, _neighbourhood(labels, none, np.minimum), none)
        spread = np.append(spread.ravel(), none)[spread - 1]  # pointer jump
        if np.array_equal(spread, labels):
            return np.where(mask, labels, 0)
        labels = spread


@lru_cache(maxsize=1024)
def _shape_templates(h: int, w: int) -> dict[str, np.ndarray]:
    """Each shape inscribed in an ``h`` x ``w`` box, sampled at pixel centres (read-only)."""
    v, u = np.mgrid[0:h, 0:w]
    u, v = (u + 0.5) / w - 0.5, (v + 0.5) / h  # u in (-1/2, 1/2) across, v in (0, 1) down
    return {
        "circle": u**2 + (v - 0.5) ** 2 <= 0.25,
        "square": np.ones((h, w), dtype=bool),
        "triangle": np.abs(u) <= v / 2,  # apex up
        "diamond": np.abs(u) + np.abs(v - 0.5) <= 0.5,
    }


def _classify_shape(mask: np.ndarray) -> str:
    """The shape whose template inscribed in the mask's box overlaps it best (IoU)."""
    best, best_iou = SHAPES[0], -1.0
    for shape, t in _shape_templates(*mask.shape).items():
        iou = (t & mask).sum() / (t | mask).sum()
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def find_objects(image: ImageLike) -> list[FoundObject]:
    """Objects in an image, row by row then column by column of their bounding boxes.

    ``image``: PIL image, uint8 array ``(H, W, 3)`` or float tensor ``(3, H, W)`` in [0, 1];
    any size, resized to 64x64. Colour is the palette colour nearest the mean of the
    object's interior pixels; size, shape and cell come from its bounding box and outline.
    """
    rgb = _to_array(image)  # (64, 64, 3) uint8
    mask = rgb.max(axis=2) > FOREGROUND
    mask[list(GRID_LINES), :] = False  # objects never cross a grid line: cut merges there
    mask[:, list(GRID_LINES)] = False
    labels = _label(mask)
    found = []
    for label in np.unique(labels[labels > 0]):
        part = labels == label
        area = int(part.sum())
        if area < MIN_AREA:
            continue
        ys, xs = np.nonzero(part)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        interior = part & _neighbourhood(part, False, np.logical_and)
        mean = rgb[interior if interior.any() else part].astype(np.float32).mean(axis=0)
        color = list(COLORS)[int(np.argmin(((_PALETTE - mean) ** 2).sum(axis=1)))]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        found.append(
            FoundObject(
                shape=_classify_shape(part[y0 : y1 + 1, x0 : x1 + 1]),
                color=color,
                size="large" if max(x1 - x0, y1 - y0) + 1 >= LARGE_FROM else "small",
                col=min(int(cx // 21), 2),
                row=min(int(cy // 21), 2),
                area=area,
                bbox=(x0, y0, x1, y1),
            )
        )
    return sorted(found, key=lambda o: (o.bbox[1], o.bbox[0]))


def satisfies(prompt: str | list[ObjectSpec], image: ImageLike) -> bool:
    """Does ``image`` show exactly the prompt's objects (SHAPES.md's "satisfies")?"""
    return matches(as_specs(prompt), find_objects(image))


def fidelity(pairs: Iterable[tuple[str, ImageLike]]) -> dict:
    """Prompt fidelity over ``(prompt, image)`` pairs, split by seen / held-out prompts.

    Returns ``{"seen", "held_out", "overall"}`` as fractions (``None`` when nothing was scored),
    ``"n"`` the number of pairs and ``"counts"`` ``{"seen": [ok, total], "held_out": [ok, total]}``.
    """
    counts = {"seen": [0, 0], "held_out": [0, 0]}
    for prompt, image in pairs:
        specs = parse_prompt(prompt)
        group = counts["held_out" if is_held_out_prompt(specs) else "seen"]
        group[0] += int(matches(specs, find_objects(image)))
        group[1] += 1
    ok, n = (sum(c[k] for c in counts.values()) for k in (0, 1))
    result: dict = {k: (c[0] / c[1] if c[1] else None) for k, c in counts.items()}
    result.update(overall=ok / n if n else None, n=n, counts=counts)
    return result


def read_folder(folder: Path) -> list[tuple[str, Path]]:
    """``(caption, image path)`` for each image in ``folder`` with a same-stem ``.txt``.

    Captions are checked against the prompt grammar here, so a bad one names its file.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder (expected images with .txt captions)")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return [(_read_caption(p.with_suffix(".txt"), p), p) for p in images]


def _read_caption(txt: Path, image: Path) -> str:
    if not txt.is_file():
        raise ValueError(f"{image}: no caption file {txt.name} beside it")
    lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{txt}: the first line (the caption) is empty")
    return _checked(lines[0].strip(), str(txt))


def _checked(prompt: str, where: str) -> str:
    """``prompt`` if it parses, else a ``ValueError`` that says where it came from."""
    try:
        parse_prompt(prompt)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return prompt


def read_manifest(path: Path) -> list[tuple[str, Path]]:
    """``(prompt, image path)`` per JSONL line ``{"prompt": ..., "file": ...}``.

    ``file`` is relative to the manifest's folder; blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {path} is not a file")
    items, keys = [], ("prompt", "file")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in keys):
            raise ValueError(f'{path} line {n}: expected {{"prompt": str, "file": str}}')
        file = path.parent / row["file"]
        if not file.is_file():
            raise ValueError(f"{path} line {n}: image {file} does not exist")
        items.append((_checked(row["prompt"], f"{path} line {n}"), file))
    if not items:
        raise ValueError(f"manifest {path} lists no images")
    return items


def open_pairs(items: Iterable[tuple[str, Path]]) -> Iterator[tuple[str, Image.Image]]:
    """Load the images of ``(prompt, path)`` items lazily (``load_image`` names bad files)."""
    for prompt, path in items:
        yield prompt, load_image(path)
