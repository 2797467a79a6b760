"""Binding trial (issue 20): per-factor classifier-free guidance for a product codebook,
measured a loser.

The colour factor is guided with its own scale. Code logits are ``pattern[p] + colour[c]``,
so the guided difference ``d = cond - uncond`` splits exactly into a pattern part and a
colour part (the mean of ``d`` over patterns for each colour, centred); the colour part gets
scale SC, the rest S (SC = S is plain guidance, and reproduces the benchmark's figures). The
harness of ``binding_guidance.py`` draws the 48 fresh prompts of ``dalle_fidelity.py`` x 4;
it prints the correct rate per breakdown row and the colour error rate of two-object prompts.

    python benchmarks/binding_factor_guidance.py MODEL TEMPERATURE S SC
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from binding_guidance import evaluate, guided_sampler


def main() -> None:
    model_dir, t, s, sc = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    config = Path(model_dir, "transformer", "config.json")
    palette = json.loads(config.read_text(encoding="utf-8"))["image_palette"]
    if not palette:
        raise SystemExit(f"{model_dir}: a flat codebook has no colour factor")

    def rows(text, g):
        return [text, torch.zeros_like(text)]

    def mix(groups):
        c, u = groups
        d = (c - u).unflatten(-1, (-1, palette))  # (B, P, C): a(p) + b(c)
        colour = d.mean(1, keepdim=True) - d.mean((1, 2), keepdim=True)  # b(c), centred
        return u + (s * d + (sc - s) * colour).flatten(1)

    rates, seconds = evaluate(model_dir, guided_sampler(rows, mix, t))
    correct = {k: round(v["rates"]["correct"], 3) for k, v in rates.items()}
    colour = {k: round(v["rates"]["color"], 3) for k, v in rates.items() if k.startswith("2/")}
    print(json.dumps({"model": model_dir, "T": t, "S": s, "SC": sc, "s": round(seconds),
                      "correct": correct, "colour_wrong_2obj": colour}))  # fmt: skip


if __name__ == "__main__":
    main()
