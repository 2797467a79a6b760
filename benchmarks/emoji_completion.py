"""Image completion on real artwork (issue 22, item 5): keep the top of a training emoji, let the
model draw the rest under the emoji's own name, and ask whether the result is nearest to that
emoji among all training pictures (L2 on 32x32 pixels, ``dalle.eval.nearest``).

Kept rows carry much of the answer, so the figures come with their bounds, all on the same
emoji: the dVAE reconstruction (every row kept: the ceiling), the kept rows over a blank
bottom (the picture's top alone), and plain text-to-image (no rows kept).

    python benchmarks/emoji_completion.py --model runs/emoji/model --train runs/emoji/emoji_train
        [--prompts 48] [--samples 2] [--keep-rows 0.5] [--json FILE] [--grid FILE]

Prints a table and writes JSON (machine, torch, settings, figures).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from common import RESULTS, header, write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True, help="the emoji train folder")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--keep-rows", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "emoji_completion.json")
    parser.add_argument("--grid", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from dalle.eval.nearest import own_rank, top_k
    from dalle.images import image_to_tensor, load_image
    from dalle.outputs import write_generation
    from dalle.pipeline import DallePipeline

    pipe = DallePipeline.from_pretrained(args.model)
    stems = sorted(p.stem for p in args.train.glob("*.txt"))
    captions = {s: (args.train / f"{s}.txt").read_text().strip() for s in stems}
    index = {s: i for i, s in enumerate(stems)}
    base = [s for s in stems if "-1f3f" not in s]  # no skin-tone variants: one per emoji
    pick = random.Random(args.seed).sample(base, min(args.prompts, len(base)))
    size = pipe.vae.cfg.image_size
    references = torch.stack([image_to_tensor(load_image(args.train / f"{s}.png")) for s in stems])
    if references.shape[-1] != size:
        raise SystemExit(f"the emoji are {references.shape[-1]} px, the model draws {size} px")
    rows = pipe.rows_kept(args.keep_rows)
    cut = rows * (size // pipe.vae.cfg.grid_size)  # pixel rows kept
    n = args.samples

    def ranks_of(images: torch.Tensor, repeat: int) -> list[int]:
        return own_rank(images, references, [index[s] for s in pick for _ in range(repeat)])

    start = time.perf_counter()
    completions, plain, recon, top_only, grid_images, grid_prompts = [], [], [], [], [], []
    for s in pick:
        out = pipe(captions[s], num_images=n, seed=args.seed, image=args.train / f"{s}.png",
                   keep_rows=rows)  # fmt: skip
        completions += [image_to_tensor(im) for im in out.images]
        recon.append(image_to_tensor(out.reconstruction))
        blank = image_to_tensor(out.reconstruction).clone()
        blank[:, cut:] = 1.0  # the emoji's background is white
        top_only.append(blank)
        if len(grid_prompts) < 8:
            grid_prompts.append(captions[s])
            grid_images += [out.source, *out.images]
    completion_s = time.perf_counter() - start
    out_plain = pipe([captions[s] for s in pick], num_images=n, seed=args.seed)
    plain = [image_to_tensor(im) for im in out_plain.images]

    rows_out = {}
    for name, images, repeat in [
        ("reconstruction (all rows kept)", recon, 1),
        (f"completion ({rows} of {pipe.vae.cfg.grid_size} rows kept)", completions, n),
        ("kept rows over a blank bottom", top_only, 1),
        ("text only (no rows kept)", plain, n),
    ]:
        ranks = ranks_of(torch.stack(images), repeat)
        rows_out[name] = {
            "images": len(ranks),
            "top1": round(top_k(ranks, 1), 4),
            "top5": round(top_k(ranks, 5), 4),
            "median_rank": sorted(ranks)[len(ranks) // 2],
        }
    print(f"{len(pick)} seen emoji x {n}; references: {len(stems)} training pictures; "
          f"sampling: {pipe.sampler.describe()}")  # fmt: skip
    print(f"{'':40s} {'top-1':>7s} {'top-5':>7s} {'median rank':>12s}")
    for name, r in rows_out.items():
        print(f"{name:40s} {100 * r['top1']:6.1f}% {100 * r['top5']:6.1f}% {r['median_rank']:12d}")
    if args.grid is not None:
        args.grid.mkdir(parents=True, exist_ok=True)
        write_generation(args.grid, grid_prompts, grid_images, n + 1, args.seed)

    result = {
        **header("emoji_completion"),
        "model": str(args.model),
        "prompts": len(pick),
        "samples_per_prompt": n,
        "keep_rows": rows,
        "kept_px": cut,
        "sampling": pipe.sampler.describe(),
        "completion_wall_s": round(completion_s, 1),
        "results": rows_out,
    }
    write_json(args.json, result, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
