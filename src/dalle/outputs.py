"""The files of a generation, the contract benchmarks and users script against: one PNG per
image at the model's native resolution, ``manifest.jsonl`` with one ``{"prompt", "file",
"seed", "index"}`` line per image (``file`` relative to the folder, ``index`` the image's
number within its prompt; with reranking also ``"score"``, the CLIP similarity, images best
first) and ``grid.png`` with one captioned row per prompt."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from dalle.images import captioned_grid, png_bytes
from dalle.io import write_bytes_atomic


def write_generation(
    out: Path,
    prompts: list[str],
    images: list[Image.Image],
    num_images: int,
    seed: int,
    scores: list[float] | None = None,
) -> None:
    """PNGs, ``manifest.jsonl`` and ``grid.png`` (each written atomically) into ``out``."""
    lines = []
    for n, image in enumerate(images):
        p, index = divmod(n, num_images)
        name = f"{p:04d}_{index:02d}.png"
        write_bytes_atomic(out / name, png_bytes(image))
        entry = {"prompt": prompts[p], "file": name, "seed": seed, "index": index}
        if scores is not None:
            entry["score"] = round(scores[n], 4)
        lines.append(json.dumps(entry))
    write_bytes_atomic(out / "manifest.jsonl", ("\n".join(lines) + "\n").encode())
    rows = [images[p * num_images : (p + 1) * num_images] for p in range(len(prompts))]
    write_bytes_atomic(out / "grid.png", png_bytes(captioned_grid(rows, prompts)))
