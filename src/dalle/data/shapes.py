"""The built-in captioned-shapes dataset (specification: shared/SHAPES.md).

Every sample is a pure function of ``(seed, split, index)``: a scene of one or two
coloured shapes on a 3x3 grid of a 64x64 black canvas, and a caption that may leave
the size or the position of an object out. Four colour-shape pairs are held out of
the ``train`` split; every ``holdout`` scene contains at least one of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from dalle.images import image_to_tensor, png_bytes
from dalle.io import prepare_output_dir, write_bytes_atomic

CANVAS = 64
SHAPES = ("circle", "square", "triangle", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 200, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "orange": (255, 140, 0),
    "white": (255, 255, 255),
}
SIZES: dict[str, int] = {"small": 10, "large": 18}
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("orange", "circle"), ("blue", "diamond"), ("white", "square")}
)
POSITIONS: dict[tuple[int, int], str] = {  # (col, row) -> phrase
    (0, 0): "in the top left",
    (1, 0): "at the top",
    (2, 0): "in the top right",
    (0, 1): "on the left",
    (1, 1): "in the center",
    (2, 1): "on the right",
    (0, 2): "in the bottom left",
    (1, 2): "at the bottom",
    (2, 2): "in the bottom right",
}
SPLITS = ("train", "holdout")
_SPLIT_KEY = {"train": 0, "holdout": 1}


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object; ``(cx, cy)`` is its bounding-box centre after jitter."""

    shape: str
    color: str
    size: str
    col: int
    row: int
    cx: int
    cy: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Inclusive pixel box ``(x0, y0, x1, y1)``."""
        s = SIZES[self.size]
        x0, y0 = self.cx - s // 2, self.cy - s // 2
        return x0, y0, x0 + s - 1, y0 + s - 1


@dataclass(frozen=True)
class ShapesSample:
    image: Image.Image  # 64x64 RGB
    caption: str
    objects: tuple[ShapeObject, ...]

    def metadata(self) -> dict:
        return {"caption": self.caption, "objects": [asdict(o) for o in self.objects]}


def is_held_out(color: str, shape: str) -> bool:
    return (color, shape) in HELD_OUT


def draw_scene(objects: tuple[ShapeObject, ...] | list[ShapeObject]) -> Image.Image:
    """Render objects, in order, on a black 64x64 canvas with hard edges."""
    image = Image.new("RGB", (CANVAS, CANVAS), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for o in objects:
        x0, y0, x1, y1 = o.box
        fill = COLORS[o.color]
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        if o.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif o.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(x0, y1), (x1, y1), (xm, y0)], fill=fill)
        elif o.shape == "diamond":
            draw.polygon([(xm, y0), (x1, ym), (xm, y1), (x0, ym)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}; expected one of {SHAPES}")
    return image


def object_phrase(o: ShapeObject, with_size: bool, with_position: bool) -> str:
    words = ["a"]
    if with_size:
        words.append(o.size)
    words += [o.color, o.shape]
    if with_position:
        words.append(POSITIONS[(o.col, o.row)])
    return " ".join(words)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _draw_objects(rng: np.random.Generator, n: int) -> list[ShapeObject]:
    cells = rng.choice(9, size=n, replace=False)
    objects = []
    for cell in cells:
        col, row = int(cell) % 3, int(cell) // 3
        dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
        objects.append(
            ShapeObject(
                shape=SHAPES[rng.integers(len(SHAPES))],
                color=list(COLORS)[rng.integers(len(COLORS))],
                size=list(SIZES)[rng.integers(len(SIZES))],
                col=col,
                row=row,
                cx=11 + 21 * col + dx,
                cy=11 + 21 * row + dy,
            )
        )
    return objects


def make_sample(seed: int, split: str, index: int) -> ShapesSample:
    """The sample ``index`` of ``split`` for ``seed``: the same on every machine."""
    _check_split(split)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng([seed, _SPLIT_KEY[split], index])
    n = 1 if rng.random() < 0.5 else 2  # drawn once, so the split rule cannot skew it
    while True:  # rejection sampling keeps the other attributes independent and uniform
        objects = _draw_objects(rng, n)
        held = [is_held_out(o.color, o.shape) for o in objects]
        if (split == "train" and not any(held)) or (split == "holdout" and any(held)):
            break
    phrases = [object_phrase(o, rng.random() >= 0.25, rng.random() >= 0.25) for o in objects]
    return ShapesSample(draw_scene(objects), " and ".join(phrases), tuple(objects))


EVAL_SEED = 1_000_003  # the seed of the held-out evaluation sets: no training run draws it


def eval_set(n: int = 256, seed: int = EVAL_SEED) -> tuple[torch.Tensor, list[str]]:
    """Held-out evaluation images ``(n, 3, 64, 64)`` and captions: half unseen ``train``-split
    scenes, half ``holdout`` scenes (the first ``n - n // 2`` are the ``train`` ones)."""
    return stack_samples(eval_samples(n, seed))


def eval_samples(n: int = 256, seed: int = EVAL_SEED) -> list[ShapesSample]:
    """The samples of :func:`eval_set`, with their object lists."""
    samples = [make_sample(seed, "train", i) for i in range(n - n // 2)]
    return samples + [make_sample(seed, "holdout", i) for i in range(n // 2)]


def stack_samples(samples: list[ShapesSample]) -> tuple[torch.Tensor, list[str]]:
    """The samples' images ``(N, 3, 64, 64)`` and captions."""
    return torch.stack([image_to_tensor(s.image) for s in samples]), [s.caption for s in samples]


class ShapesDataset(torch.utils.data.Dataset):
    """Map-style view of ``num`` samples: ``{"image": (3,64,64) float, "caption", "objects"}``."""

    def __init__(self, split: str = "train", num: int = 10_000, seed: int = 0, offset: int = 0):
        _check_split(split)
        if num <= 0:
            raise ValueError(f"num must be a positive number of samples, got {num}")
        self.split, self.num, self.seed, self.offset = split, num, seed, offset

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num:
            raise IndexError(f"index {i} out of range for {self.num} samples")
        s = make_sample(self.seed, self.split, self.offset + i)
        return {"image": image_to_tensor(s.image), "caption": s.caption, "objects": s.objects}


class ShapesStream(torch.utils.data.IterableDataset):
    """Endless stream of samples from ``start``; worker processes take interleaved indices."""

    def __init__(self, split: str = "train", seed: int = 0, start: int = 0):
        _check_split(split)
        self.split, self.seed, self.start = split, seed, start

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        step, first = (1, 0) if info is None else (info.num_workers, info.id)
        i = self.start + first
        while True:
            s = make_sample(self.seed, self.split, i)
            yield {"image": image_to_tensor(s.image), "caption": s.caption, "objects": s.objects}
            i += step


def collate(batch: list[dict]) -> dict:
    """Stack images; keep captions and object lists as lists."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "caption": [b["caption"] for b in batch],
        "objects": [b["objects"] for b in batch],
    }


def write_folder(
    out: Path, split: str, num: int, seed: int, force: bool = False, progress: bool = True
) -> None:
    """Write samples ``0..num-1`` as ``{i:06d}.png/.txt/.json`` triples (SHAPES.md, On disk)."""
    _check_split(split)
    if num <= 0:
        raise ValueError(f"--num must be a positive number of samples, got {num}")
    prepare_output_dir(out, force=force)
    for i in tqdm(range(num), desc=f"shapes {split}", unit="img", disable=not progress):
        s = make_sample(seed, split, i)
        stem = out / f"{i:06d}"
        write_bytes_atomic(stem.with_suffix(".png"), png_bytes(s.image))
        write_bytes_atomic(stem.with_suffix(".txt"), (s.caption + "\n").encode())
        write_bytes_atomic(stem.with_suffix(".json"), json.dumps(s.metadata()).encode())
