"""Image-caption folders: every image (.png/.jpg/.jpeg/.webp, nested folders allowed) with a
``.txt`` of the same stem beside it; each non-empty line of the ``.txt`` is one caption.
Images are resized (shorter side) and centre-cropped to the model's size.

A bad pair (an unreadable, truncated or non-image file, an empty or non-UTF-8 caption file)
never stops a run: it is skipped for the next good pair, and recorded in ``skipped`` (path ->
reason) so that commands can report it. Images without a caption file are counted in
``unpaired``. A folder where nothing reads is a clear error."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from dalle.images import prepare_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _scan(root: Path) -> tuple[list[tuple[Path, Path]], int]:
    """``(pairs, number of images without a caption file)``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder {root} does not exist or is not a folder")
    pairs, unpaired = [], 0
    images = (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for image in sorted(images):  # is_file: a pipe or socket named x.png would block reading
        txt = image.with_suffix(".txt")
        if txt.is_file():
            pairs.append((image, txt))
        else:
            unpaired += 1
    if not pairs:
        raise ValueError(
            f"no image + .txt caption pairs found under {root} (expected e.g. 0001.png + 0001.txt)"
        )
    return pairs, unpaired


def read_caption_lines(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: caption file is not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: caption file is empty")
    return lines


class ImageFolderDataset(torch.utils.data.Dataset):
    """``{"image": (3, size, size) float in [0, 1], "caption": str}`` for each pair of a folder;
    a pair that cannot be read yields the next good one instead (see the module docstring)."""

    def __init__(self, root: Path, image_size: int, seed: int = 0):
        self.root = Path(root)
        self.pairs, self.unpaired = _scan(self.root)
        self.image_size = image_size
        self.rng = random.Random(seed)
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, i: int) -> dict:
        image_path, txt_path = self.pairs[i]
        caption = self.rng.choice(read_caption_lines(txt_path))
        return {"image": prepare_image(image_path, self.image_size), "caption": caption}

    def get(self, i: int) -> dict | None:
        """Pair ``i``, or ``None`` (recorded in ``skipped``) when it cannot be read."""
        if str(self.pairs[i][0]) in self.skipped:
            return None
        try:
            return self._load(i)
        except ValueError as e:
            self.skipped[str(self.pairs[i][0])] = str(e)
            return None

    def __getitem__(self, i: int) -> dict:
        n = len(self.pairs)
        for k in range(n):
            j = (i + k) % n
            item = self.get(j)
            if item is not None:
                return item
        raise ValueError(f"none of the {n} image + caption pairs under {self.root} can be read")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def report(self) -> str:
        """One line on what was left out, or ``""`` when nothing was."""
        parts = []
        if self.skipped:
            first = next(iter(self.skipped.values()))
            parts.append(f"skipped {len(self.skipped)} unreadable pairs (first: {first})")
        if self.unpaired:
            parts.append(f"{self.unpaired} images without a .txt caption were left out")
        return "; ".join(parts)
