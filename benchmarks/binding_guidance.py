"""Binding trial (issue 20): word-order contrastive guidance, measured a loser.

Beside classifier-free guidance against the empty caption, guide against the same caption with
its tokens in a random order (the same bag of words; what order alone adds is which attribute
goes with which object): ``logits = u + S (c - u) + A (c - n)``, or with ``neg`` the shuffled
caption replaces the empty one, ``n + S (c - n)``. A trial harness: :func:`evaluate` draws through a
guided Sampler subclass given its rows and its mix, draws the 48 fresh prompts of
``benchmarks/dalle_fidelity.py`` x 4 and returns the breakdown (``binding_factor_guidance.py``
uses it too).

    python benchmarks/binding_guidance.py MODEL TEMPERATURE S A [neg]
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import torch

# captions, and a generator for the rows that draw (shuffled captions) -> row groups
Rows = Callable[[torch.Tensor, torch.Generator], list[torch.Tensor]]
Mix = Callable[[list[torch.Tensor]], torch.Tensor]  # each group's logits -> the logits to draw


def guided_sampler(rows: Rows, mix: Mix, temperature: float):
    """A guidance rule as a :class:`dalle.sampler.Sampler` subclass: each caption's row groups
    run in one batch and ``mix`` combines their logits at every step."""
    from dalle.sampler import Sampler

    class Guided(Sampler):
        def conditions(self, text: torch.Tensor) -> torch.Tensor:
            return torch.cat(rows(text, torch.Generator().manual_seed(0)))

        def combine(self, logits: torch.Tensor, batch: int) -> torch.Tensor:
            return mix(list(logits.float().split(batch)))

    return Guided(temperature=temperature)


def evaluate(model_dir: str, sampler) -> tuple[dict, float]:
    """The breakdown of 48 fresh prompts x 4 drawn by ``sampler``, and the seconds."""
    from dalle.eval.shapes_breakdown import PromptResult, breakdown, diagnose_image
    from dalle.pipeline import DallePipeline
    from dalle_fidelity import fresh_prompts

    pipe = DallePipeline.from_pretrained(model_dir)
    prompts = fresh_prompts(48)
    t0 = time.perf_counter()
    images = pipe(prompts, num_images=4, seed=0, sampler=sampler).images
    results = []
    for p, prompt in enumerate(prompts):
        found = tuple(diagnose_image(prompt, im) for im in images[p * 4 : (p + 1) * 4])
        results.append(PromptResult(prompt, found, tuple(range(4))))
    return breakdown(results), time.perf_counter() - t0


def shuffled(text: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each caption's tokens (before its pads) in a random order."""
    out = text.clone()
    for r in range(len(text)):
        n = int((text[r] != 0).sum())
        out[r, :n] = text[r, :n][torch.randperm(n, generator=g)]
    return out


def main() -> None:
    model_dir, t, s, a = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    neg_only = len(sys.argv) > 5 and sys.argv[5] == "neg"

    def rows(text, g):
        neg = shuffled(text, g)
        return [text, neg] if neg_only else [text, torch.zeros_like(text), neg]

    def mix(groups):
        if neg_only:
            c, n = groups
            return n + s * (c - n)
        c, u, n = groups
        return u + s * (c - u) + a * (c - n)

    rates, seconds = evaluate(model_dir, guided_sampler(rows, mix, t))
    correct = {k: round(v["rates"]["correct"], 3) for k, v in rates.items()}
    print(json.dumps({"model": model_dir, "T": t, "S": s, "A": a, "neg_only": neg_only,
                      "s": round(seconds), "correct": correct}))  # fmt: skip


if __name__ == "__main__":
    main()
