"""Image completion on the shapes (issue 22, item 5): keep the top of an unseen picture, complete
the rest under a caption that adds a second object lower down.

    python benchmarks/completion.py [--model demo_out/model] [--prompts 64] [--samples 4]
        [--split holdout] [--temperature T] [--top-k K] [--cond-scale C] [--baseline]
        [--grid FILE] [--json benchmarks/results/completion.json]

Sources: one-object scenes ``make_sample(EVAL_SEED, split, i)`` (a seed no training run draws;
``holdout``: every one shows a held-out colour-shape pair) whose object sits in the top row of
cells. The kept code rows cover that row of cells: no object crosses the first grid line at
pixel 21 (SHAPES.md; ``dalle.eval.shapes_fidelity.GRID_LINES``), so ``ceil(21 / (64 / grid))`` rows
(16x16 codes of 4 px: 6 rows, 24 px; 8x8 codes: 3 rows). The prompt is the scene's caption,
``" and "``, and the phrase (``ObjectSpec.phrase``, size and cell stated) of a second object in
a lower cell that lies wholly below the kept rows whatever its jitter (a bottom-row cell, or a
middle-row one for a small object when the kept rows end above it), of a seen colour-shape pair.

Each prompt draws ``--samples`` images through ``DallePipeline.generate_codes`` with the
source's kept codes as the prime (one batch for all prompts; ``pipe(prompt, image=...,
keep_rows=R)`` draws the same, ``tests/test_pipeline.py``), sampling with the model's defaults
unless a flag overrides one (no reranking). Reported, per image:

- ``codes_kept``: the kept codes equal the source's (this must be 1.0);
- the kept pixel rows against the source's dVAE reconstruction (all its codes decoded):
  ``region_exact`` (every kept pixel identical), ``region_pixels`` (the fraction of kept pixels
  identical), ``region_max_diff`` (0..255), and ``object_exact`` (the source object's bounding
  box identical: the kept object survives pixel for pixel). The codes are the same, but the
  decoder sees the new rows too, so pixels near the boundary may differ a little;
- ``reconstruction_exact`` per source: the reconstruction's kept rows equal the source's own
  pixels (how far "exact" can reach: the dVAE is not lossless);
- ``satisfied``: the full caption holds in the pixels (``dalle.eval.shapes_fidelity.satisfies``), and
  ``oracle``: some image of the prompt satisfies it; with ``--baseline`` the same captions
  drawn without the picture (plain text-to-image, same seed) beside them.

Prints a table and writes JSON (machine, torch, threads, settings, timings, figures).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import REPO, RESULTS, header, write_json


def kept_rows(grid: int, image_size: int) -> int:
    """Code rows covering the top row of cells: everything above the first grid line."""
    from dalle.data.shapes import CANVAS
    from dalle.eval.shapes_fidelity import GRID_LINES

    if image_size != CANVAS or CANVAS % grid:
        raise ValueError(f"expected a {CANVAS} px model with whole-pixel code rows")
    return math.ceil(GRID_LINES[1] / (CANVAS // grid))


def second_object(rng: np.random.Generator, kept_px: int) -> Any:
    """A seen colour-shape pair in a lower cell wholly below ``kept_px`` pixel rows."""
    from dalle.data.shapes import COLORS, HELD_OUT, SHAPES, SIZES
    from dalle.data.shapes_captions import ObjectSpec

    pairs = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT]
    color, shape = pairs[rng.integers(len(pairs))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    top = {row: 11 + 21 * row - 1 - SIZES[size] // 2 for row in (1, 2)}  # highest y0 (jitter)
    cells = [(col, row) for row in (1, 2) for col in range(3) if top[row] >= kept_px]
    col, row = cells[rng.integers(len(cells))]
    return ObjectSpec(shape, color, size, col, row)


def scenes(n: int, split: str, rows: int, kept_px: int) -> list[tuple[Any, str]]:
    """``n`` (source sample, full prompt) pairs: one-object scenes in the top row of cells."""
    from dalle.data.shapes import EVAL_SEED, make_sample

    out, i = [], 0
    while len(out) < n:
        sample = make_sample(EVAL_SEED, split, i)
        obj = sample.objects[0]
        if len(sample.objects) == 1 and obj.row == 0:
            assert obj.box[3] < kept_px, (i, obj)  # the object lies in the kept rows
            extra = second_object(np.random.default_rng([EVAL_SEED, i]), kept_px)
            out.append((sample, f"{sample.caption} and {extra.phrase()}"))
        i += 1
    return out


def compare(images: np.ndarray, recon: np.ndarray, kept_px: int, box: tuple) -> dict[str, Any]:
    """Kept rows and object box of ``images`` (N, H, W, 3) uint8 against ``recon`` (H, W, 3)."""
    region, ref = images[:, :kept_px].astype(int), recon[:kept_px].astype(int)
    same = (region == ref).all(-1)  # (N, kept_px, W)
    x0, y0, x1, y1 = box
    obj = (images[:, y0 : y1 + 1, x0 : x1 + 1] == recon[y0 : y1 + 1, x0 : x1 + 1]).all((1, 2, 3))
    return {
        "region_exact": same.all((1, 2)).tolist(),
        "region_pixels": same.mean((1, 2)).tolist(),
        "region_max_diff": np.abs(region - ref).max((1, 2, 3)).tolist(),
        "object_exact": obj.tolist(),
    }


def uint8(images: Any) -> np.ndarray:
    """``(N, 3, H, W)`` float in [0, 1] -> ``(N, H, W, 3)`` uint8, rounded as PNGs are."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def mean(values: list) -> float | None:
    return float(np.mean(values)) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "demo_out" / "model")
    parser.add_argument("--prompts", type=int, default=64, help="source pictures")
    parser.add_argument("--samples", type=int, default=4, help="completions per picture")
    parser.add_argument("--split", choices=("holdout", "train"), default="holdout")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--cond-scale", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baseline", action="store_true", help="also draw without the picture")
    parser.add_argument("--grid", type=Path, help="write source | dVAE | completions rows here")
    parser.add_argument("--json", type=Path, default=RESULTS / "completion.json")
    args = parser.parse_args()

    import torch

    from dalle.eval.shapes_fidelity import satisfies
    from dalle.images import captioned_grid, image_to_tensor
    from dalle.pipeline import DallePipeline

    pipe = DallePipeline.from_pretrained(args.model)
    overrides = {"temperature": args.temperature, "top_k": args.top_k}
    overrides["cond_scale"] = args.cond_scale
    sampling = pipe.settings(**{k: v for k, v in overrides.items() if v is not None})
    grid = pipe.vae.cfg.grid_size
    rows = kept_rows(grid, pipe.vae.cfg.image_size)
    kept_px, k = rows * (pipe.vae.cfg.image_size // grid), rows * grid
    pairs = scenes(args.prompts, args.split, rows, kept_px)
    prompts = [p for _, p in pairs]
    sources = torch.stack([image_to_tensor(s.image) for s, _ in pairs])  # (P, 3, 64, 64)
    codes = torch.cat([pipe.vae.encode(x.to(pipe.device)) for x in sources.split(64)])  # (P, h*w)
    recon = uint8(pipe.decode(codes))  # (P, 64, 64, 3)

    t0 = time.perf_counter()
    drawn = pipe.generate_codes(
        prompts, args.samples, args.seed, args.batch_size, sampling=sampling, prime=codes[:, :k]
    )  # (P * samples, h*w)
    wall = time.perf_counter() - t0
    pixels = uint8(pipe.decode(drawn))  # (P * samples, 64, 64, 3)
    n = args.samples
    per_image: dict[str, list] = {"codes_kept": [], "satisfied": []}
    oracle, recon_exact = [], []
    for p, (sample, prompt) in enumerate(pairs):
        mine = slice(p * n, (p + 1) * n)
        per_image["codes_kept"] += (drawn[mine, :k] == codes[p, :k]).all(1).tolist()
        for key, value in compare(pixels[mine], recon[p], kept_px, sample.objects[0].box).items():
            per_image.setdefault(key, []).extend(value)
        ok = [satisfies(prompt, x) for x in pixels[mine]]
        per_image["satisfied"] += ok
        oracle.append(any(ok))
        source = np.asarray(sample.image)
        recon_exact.append(bool((recon[p, :kept_px] == source[:kept_px]).all()))
    results: dict[str, Any] = {k2: mean(v) for k2, v in per_image.items()}
    results["region_max_diff"] = max(per_image["region_max_diff"])
    results["region_max_diff_mean"] = mean(per_image["region_max_diff"])
    results.update(oracle=mean(oracle), reconstruction_exact=mean(recon_exact))
    baseline = None
    if args.baseline:
        plain = uint8(pipe.decode(pipe.generate_codes(
            prompts, n, args.seed, args.batch_size, sampling=sampling)))  # fmt: skip
        ok = [satisfies(prompts[i // n], x) for i, x in enumerate(plain)]
        baseline = {
            "satisfied": mean(ok),
            "oracle": mean([any(ok[p * n : (p + 1) * n]) for p in range(len(prompts))]),
        }

    if args.grid is not None:  # the first 8 pictures: source (shaded below the cut) | dVAE | ...
        from PIL import Image

        from dalle.outputs import Source

        shown = []
        for p, (sample, _) in enumerate(pairs[:8]):
            src = Source("", rows, grid, sample.image, Image.fromarray(recon[p]))
            done = [Image.fromarray(x) for x in pixels[p * n : (p + 1) * n]]
            shown.append([src.shaded(), src.reconstruction, *done])
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        captioned_grid(shown, prompts[:8]).save(args.grid)

    report = {
        **header("completion"),
        "model": str(args.model),
        "split": args.split,
        "prompts": len(prompts),
        "samples_per_prompt": n,
        "seed": args.seed,
        "sampling": sampling.describe(),
        "grid": grid,
        "keep_rows": rows,
        "kept_px": kept_px,
        "generate_wall_s": round(wall, 2),
        "results": results,
        "baseline_without_picture": baseline,
        "examples": prompts[:4],
    }
    write_json(args.json, report)
    pct = lambda x: "-" if x is None else f"{100 * x:.1f} %"  # noqa: E731
    table = [
        ("images", f"{len(pixels)} ({len(prompts)} pictures x {n}), {args.split} split"),
        ("kept", f"top {rows} of {grid} code rows ({kept_px} px)"),
        ("sampling", sampling.describe()),
        ("generate wall time", f"{wall:.1f} s"),
        ("codes kept exactly", pct(results["codes_kept"])),
        ("kept rows pixel-exact", pct(results["region_exact"])),
        ("kept pixels identical", pct(results["region_pixels"])),
        ("kept rows max diff", f"{results['region_max_diff']} / 255"),
        ("kept object pixel-exact", pct(results["object_exact"])),
        ("dVAE exact on kept rows", pct(results["reconstruction_exact"])),
        ("caption satisfied", pct(results["satisfied"])),
        (f"oracle@{n}", pct(results["oracle"])),
    ]
    if baseline is not None:
        table += [("without the picture", f"{pct(baseline['satisfied'])} satisfied, "
                                          f"oracle {pct(baseline['oracle'])}")]  # fmt: skip
    for name, value in table:
        print(f"{name:<26} {value}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
