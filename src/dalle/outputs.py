"""The files of a generation, the contract benchmarks and users script against: one PNG per
image at the model's native resolution, ``manifest.jsonl`` with one ``{"prompt", "file",
"seed", "index"}`` line per image (``file`` relative to the folder, ``index`` the image's
number within its prompt; with reranking also ``"score"``, the CLIP similarity, images best
first) and ``grid.png`` with one captioned row per prompt.

A completion of a picture adds ``"image"`` (the source's path as given) and ``"keep_rows"``
(the code rows kept from its top) to every line, and each row of ``grid.png`` starts with the
source (the rows not kept shaded) and its dVAE reconstruction, then the completions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dalle.images import captioned_grid, png_bytes
from dalle.io import write_bytes_atomic


@dataclass(frozen=True)
class Source:
    """The picture a generation completed: its ``path`` as given, the code rows kept of the
    ``grid`` rows, the ``image`` as the model saw it and its dVAE ``reconstruction``."""

    path: str
    keep_rows: int
    grid: int
    image: Image.Image
    reconstruction: Image.Image

    def shaded(self) -> Image.Image:
        """The source with the rows that were not kept (those sampled anew) shaded grey."""
        image = self.image.copy()
        w, h = image.size
        top = self.keep_rows * h // self.grid
        if top < h:
            lower = image.crop((0, top, w, h))
            grey = Image.new("RGB", lower.size, (128, 128, 128))
            image.paste(Image.blend(lower, grey, 0.6), (0, top))
        return image


def write_generation(
    out: Path,
    prompts: list[str],
    images: list[Image.Image],
    num_images: int,
    seed: int,
    scores: list[float] | None = None,
    source: Source | None = None,
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
        if source is not None:
            entry.update(image=source.path, keep_rows=source.keep_rows)
        lines.append(json.dumps(entry))
    write_bytes_atomic(out / "manifest.jsonl", ("\n".join(lines) + "\n").encode())
    rows = [images[p * num_images : (p + 1) * num_images] for p in range(len(prompts))]
    captions = list(prompts)
    if source is not None:
        rows = [[source.shaded(), source.reconstruction, *row] for row in rows]
        kept = f"source ({source.keep_rows}/{source.grid} rows kept), dVAE, completions"
        captions = [f"{p or '(no caption: variations)'} | {kept}" for p in prompts]
    write_bytes_atomic(out / "grid.png", png_bytes(captioned_grid(rows, captions)))
