"""Image-caption folders: every image (.png/.jpg/.jpeg/.webp, nested folders allowed) with a
``.txt`` of the same stem beside it; each non-empty line of the ``.txt`` is one caption.
Images are resized (shorter side) and centre-cropped to the model's size."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image

from dalle.images import image_to_tensor, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def find_pairs(root: Path) -> list[tuple[Path, Path]]:
    """All ``(image, caption file)`` pairs under ``root``, sorted; images without a .txt are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder {root} does not exist or is not a folder")
    pairs = []
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        txt = image.with_suffix(".txt")
        if txt.is_file():
            pairs.append((image, txt))
    if not pairs:
        raise ValueError(
            f"no image + .txt caption pairs found under {root} (expected e.g. 0001.png + 0001.txt)"
        )
    return pairs


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
    """``{"image": (3, size, size) float in [0, 1], "caption": str}`` for each pair of a folder."""

    def __init__(self, root: Path, image_size: int, seed: int = 0):
        self.pairs = find_pairs(root)
        self.image_size = image_size
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        image_path, txt_path = self.pairs[i]
        image = resize_crop(load_image(image_path), self.image_size)
        caption = self.rng.choice(read_caption_lines(txt_path))
        return {"image": image_to_tensor(image), "caption": caption}
