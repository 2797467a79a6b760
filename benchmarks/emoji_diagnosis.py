"""Does the emoji model know which picture a caption names? Ranks, not generations.

For the seen captions ``benchmarks/emoji.py`` draws (the same seed, base emoji without a skin
tone), each caption's own picture is put among ``--others`` training pictures drawn at random,
and ranked by:

- the transformer's log p(codes | caption) of each picture's dVAE codes (``likelihood``);
- that minus log p(codes | empty caption) (``pmi``: by Bayes, log p(caption | codes) up to a
  constant per caption, the score that removes how easy a picture is to draw);
- CLIP's similarity (``clip``).

Beside them: the judge's ceiling, the own picture's rank among all training pictures when the
"generation" is the dVAE's reconstruction of that very picture (what a transformer that drew
the right codes would score), and chance, 1 / (others + 1).

    python benchmarks/emoji_diagnosis.py [--work runs/emoji] [--prompts 48] [--others 99]
        [--json FILE]

A model that ranks its own picture first by ``pmi`` but does not draw it has learned the
caption and fails at sampling; one that does not has not learned it.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from common import REPO, RESULTS, header, write_json
from rerank_scorers import log_likelihood


def seen_emoji(work: Path, prompts: int, seed: int) -> tuple[list[str], dict, list[str], torch.Tensor]:
    """The training folder of an ``emoji.py`` run: its stems (sorted), their captions, the seen
    stems ``emoji.py`` draws with ``seed`` (base emoji without a skin tone) and every picture
    ``(N, 3, S, S)`` in stem order. A ``ValueError`` when the folder holds none."""
    from dalle.images import image_to_tensor, load_image

    train_dir = work / "emoji_train"
    stems = sorted(p.stem for p in train_dir.glob("*.txt"))
    if not stems:
        raise ValueError(f"{train_dir} holds no pictures: run benchmarks/emoji.py --work {work}")
    captions = {s: (train_dir / f"{s}.txt").read_text().strip() for s in stems}
    base = [s for s in stems if "-1f3f" not in s]
    seen = random.Random(seed).sample(base, min(prompts, len(base)))  # as emoji.py
    pictures = torch.stack([image_to_tensor(load_image(train_dir / f"{s}.png")) for s in stems])
    return stems, captions, seen, pictures


def top1(scores: torch.Tensor) -> float:
    """``(P, 1 + others)`` scores, the own picture in column 0: how often it scores highest."""
    return float((scores[:, 1:] < scores[:, :1]).all(dim=1).double().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "emoji")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--others", type=int, default=99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "emoji_diagnosis.json")
    args = parser.parse_args(argv)

    from dalle.eval.nearest import own_rank, top_k
    from dalle.pipeline import DallePipeline

    try:
        stems, captions, seen, pictures = seen_emoji(args.work, args.prompts, args.seed)
    except ValueError as error:
        parser.error(str(error))
    pipe = DallePipeline.from_pretrained(args.work / "model", read_defaults=False)
    index = {s: i for i, s in enumerate(stems)}
    start = time.perf_counter()

    # The judge's ceiling: each own picture through the dVAE and back, ranked among all.
    own = torch.tensor([index[s] for s in seen])
    codes_all = torch.cat([pipe.vae.encode(p) for p in pictures.split(256)])
    recon = pipe.vae.decode(codes_all[own])
    ceiling = own_rank(recon, pictures, own.tolist())

    # Each caption's own picture (column 0) among `others` random training pictures.
    rng = torch.Generator().manual_seed(args.seed)
    columns = []
    for i in own.tolist():
        pool = torch.randperm(len(stems), generator=rng)
        columns.append(torch.cat([torch.tensor([i]), pool[pool != i][: args.others]]))
    pick = torch.stack(columns)  # (P, 1 + others) picture indices
    k = pick.shape[1]
    text = pipe.encode_prompts([captions[s] for s in seen]).repeat_interleave(k, 0)
    codes = codes_all[pick.flatten()]
    cond = log_likelihood(pipe, text, codes).double().view(-1, k)
    uncond = log_likelihood(pipe, torch.zeros_like(text), codes).double().view(-1, k)
    scores = {"likelihood": cond, "pmi": cond - uncond}
    if pipe.clip is not None:
        prompts = [captions[s] for s in seen for _ in range(k)]
        scores["clip"] = pipe.score(prompts, pictures[pick.flatten()]).double().view(-1, k)
    rows = {name: top1(s) for name, s in scores.items()}
    seconds = time.perf_counter() - start

    print(f"{len(seen)} seen captions, own picture among {k}: chance {100 / k:.1f} %")
    print(f"  dVAE reconstruction, own picture nearest of {len(stems)}: "
          f"top-1 {100 * top_k(ceiling, 1):.1f} %, top-5 {100 * top_k(ceiling, 5):.1f} %")  # fmt: skip
    for name, rate in rows.items():
        print(f"  ranked first by {name:<11s} {100 * rate:5.1f} %")
    report = {
        **header("emoji_diagnosis"),
        "work": str(args.work),
        "prompts": len(seen),
        "candidates_per_prompt": k,
        "chance": 1 / k,
        "reconstruction_ceiling": {
            "top1": top_k(ceiling, 1),
            "top5": top_k(ceiling, 5),
            "references": len(stems),
        },
        "own_ranked_first": rows,
        "seconds": round(seconds, 1),
    }
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
