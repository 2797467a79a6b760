"""Seen-caption emoji fidelity of a trained emoji model under a few sampling settings.

Draws the seen captions ``benchmarks/emoji.py`` draws (the same seed: base emoji without a
skin tone) with each setting and ranks every image's own emoji among all training pictures
(``dalle.eval.nearest.own_rank``): top-1, top-5 and the median rank, as ``emoji.py`` reports.

    python benchmarks/emoji_rerank.py [--work runs/emoji] [--prompts 48] [--samples 2]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import REPO, RESULTS, header, write_json

SETTINGS = {
    "temperature 0.5, guidance 2 (the recipe's)": {"temperature": 0.5, "cond_scale": 2.0},
    "the same, best of 8 by CLIP": {"temperature": 0.5, "cond_scale": 2.0, "rerank": 8},
    "guidance 4, best of 8 by CLIP": {"temperature": 0.5, "cond_scale": 4.0, "rerank": 8},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "emoji")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "emoji_rerank.json")
    args = parser.parse_args(argv)

    import torch

    from dalle.eval.nearest import own_rank, top_k
    from dalle.images import image_to_tensor
    from dalle.pipeline import DallePipeline
    from emoji_diagnosis import seen_emoji

    try:
        stems, captions, seen, pictures = seen_emoji(args.work, args.prompts, args.seed)
    except ValueError as error:
        parser.error(str(error))
    pipe = DallePipeline.from_pretrained(args.work / "model")
    index = {s: i for i, s in enumerate(stems)}
    targets = [index[s] for s in seen for _ in range(args.samples)]
    rows = {}
    for name, setting in SETTINGS.items():
        start = time.perf_counter()
        out = pipe([captions[s] for s in seen], args.samples, args.seed, **setting)
        drawn = torch.stack([image_to_tensor(im) for im in out.images])
        ranks = own_rank(drawn, pictures, targets)
        rows[name] = {
            "top1": top_k(ranks, 1),
            "top5": top_k(ranks, 5),
            "median_rank": sorted(ranks)[len(ranks) // 2],
            "seconds": round(time.perf_counter() - start, 1),
        }
        r = rows[name]
        print(f"{name:<44s} top-1 {100 * r['top1']:5.1f} %  top-5 {100 * r['top5']:5.1f} %  "
              f"median rank {r['median_rank']}  {r['seconds']} s", flush=True)  # fmt: skip
    write_json(args.json, {**header("emoji_rerank"), "work": str(args.work),
                           "prompts": len(seen), "samples": args.samples, "settings": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
