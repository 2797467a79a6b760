"""Which score should pick a prompt's best candidates? One set of candidates, several rerankers.

Draws ``--candidates`` images per prompt with the model's saved sampling (reranking off), for
prompts drawn fresh from the caption grammar (about 40 % held-out pairs), judges every
candidate with the shapes checker, and replays the pipeline's choice of the ``--keep`` best
distinct ones (``dalle.reranking.best_distinct``) under each score:

- ``first``: the first ``keep`` drawn (no reranking);
- ``clip``: CLIP's similarity (what ``rerank`` does);
- ``likelihood``: the transformer's own log p(codes | caption); ``unconditional``: log p(codes
  | the all-pad caption); ``pmi``: their difference (by Bayes, log p(caption | codes) up to a
  constant per prompt);
- ``clip+likelihood xW``: CLIP's and the likelihood's scores standardised over the prompt's
  candidates, summed with weight W on the likelihood (noisy-channel style reranking);
- ``ideal``: the checker's own verdicts, the ceiling any reranker of these candidates has.

    python benchmarks/rerank_scorers.py --model demo_out/model [--prompts 144] [--prompt-seed 999]
        [--candidates 16] [--keep 4] [--json FILE]

Rates are of the kept images: seen, held-out and two-object prompts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import RESULTS, header, write_json
from dalle.data.shapes import make_sample
from dalle.eval.shapes_fidelity import satisfies
from dalle.images import tensor_to_image
from dalle.pipeline import DallePipeline
from dalle.reranking import best_distinct


def _z(scores: torch.Tensor, prompts: int) -> torch.Tensor:
    """Each prompt's run of candidate scores, standardised (mean 0, deviation 1)."""
    x = scores.double().view(prompts, -1)
    spread = x.std(dim=1, keepdim=True, unbiased=False).clamp_min(1e-12)
    return ((x - x.mean(dim=1, keepdim=True)) / spread).view(-1)


@torch.no_grad()
def log_likelihood(pipe: DallePipeline, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Sum over each image's codes of log p(code | caption, the codes before it): ``(N,)``."""
    tf, out = pipe.transformer, []
    for t, c in zip(text.split(64), codes.split(64), strict=True):
        h = tf.hidden(t, c[:, :-1])[:, tf.cfg.text_len - 1 :]  # the positions predicting codes
        logp = tf.image_logits(h).float().log_softmax(-1)
        out.append(logp.gather(-1, c[..., None])[..., 0].sum(-1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("demo_out/model"))
    parser.add_argument("--prompts", type=int, default=144)
    parser.add_argument("--prompt-seed", type=int, default=999)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--keep", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=RESULTS / "rerank_scorers.json")
    args = parser.parse_args(argv)
    n, draws = args.prompts, args.candidates
    if not 1 <= args.keep <= draws:
        parser.error(f"--keep must be in [1, --candidates], got {args.keep}")

    pipe = DallePipeline.from_pretrained(args.model, compile=True)
    if pipe.clip is None:
        parser.error(f"{args.model} has no clip/ to rerank with")
    held = round(0.4 * n)
    prompts = [make_sample(args.prompt_seed, "train", i).caption for i in range(n - held)]
    prompts += [make_sample(args.prompt_seed, "holdout", i).caption for i in range(held)]
    start = time.perf_counter()
    codes = pipe.generate_codes(prompts, draws, args.seed, 16, None, pipe.sampler_for(rerank=None))
    images = pipe.decode(codes)
    generate_s = time.perf_counter() - start
    per_draw = [p for p in prompts for _ in range(draws)]
    right = torch.tensor(
        [satisfies(p, tensor_to_image(x)) for p, x in zip(per_draw, images, strict=True)]
    )

    start = time.perf_counter()
    clip = pipe.reranker.score(per_draw, images).double()
    clip_s = time.perf_counter() - start
    text = pipe.encode_prompts(prompts).repeat_interleave(draws, 0)
    start = time.perf_counter()
    cond = log_likelihood(pipe, text, codes).double()
    likelihood_s = time.perf_counter() - start
    uncond = log_likelihood(pipe, torch.zeros_like(text), codes).double()
    scorers = {
        "first": -torch.arange(n * draws, dtype=torch.double),
        "clip": clip,
        "likelihood": cond,
        "unconditional": uncond,
        "pmi": cond - uncond,
        **{f"clip+likelihood x{w:g}": _z(clip, n) + w * _z(cond, n) for w in (0.5, 1.0, 2.0)},
        "ideal": right.double()
        + 1e-3 * torch.rand(n * draws, generator=torch.Generator().manual_seed(0)),
    }
    groups = {
        "seen": [i for i in range(n) if i < n - held],
        "held_out": [i for i in range(n) if i >= n - held],
        "two_object": [i for i, p in enumerate(prompts) if " and " in p],
    }
    rows = {}
    print(f"{'scorer':24s} " + " ".join(f"{g:>10s}" for g in groups))
    for name, score in scorers.items():
        kept = []
        for j in range(n):
            run = slice(j * draws, (j + 1) * draws)
            kept.append(
                [
                    bool(right[j * draws + i])
                    for i in best_distinct(score[run], images[run], args.keep)
                ]
            )
        rows[name] = {
            g: sum(sum(kept[i]) for i in idx) / (args.keep * len(idx)) for g, idx in groups.items()
        }
        print(f"{name:24s} " + " ".join(f"{100 * r:9.1f}%" for r in rows[name].values()))
    candidates = {g: float(right.view(n, draws)[idx].double().mean()) for g, idx in groups.items()}
    print("every candidate          " + " ".join(f"{100 * r:9.1f}%" for r in candidates.values()))
    report = {
        **header("rerank_scorers"),
        "model": str(args.model),
        "prompt_seed": args.prompt_seed,
        "prompts": n,
        "candidates_per_prompt": draws,
        "kept_per_prompt": args.keep,
        "sampling": pipe.sampler.describe(),
        "seconds": {
            "generate": round(generate_s, 1),
            "clip": round(clip_s, 2),
            "likelihood": round(likelihood_s, 2),
        },
        "kept_right": rows,
        "candidates_right": candidates,
    }
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
