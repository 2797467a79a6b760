"""Binding trial (issue 20): word-order contrastive guidance, measured a loser.

Beside classifier-free guidance against the empty caption, guide against the same caption with
its tokens in a random order (the same bag of words; what order alone adds is which attribute
goes with which object): ``logits = u + S (c - u) + A (c - n)``, or with ``neg`` the shuffled
caption replaces the empty one, ``n + S (c - n)``. A trial harness: :func:`evaluate` swaps the
pipeline's sampler for a guided one given its rows and its mix, draws the 48 fresh prompts of
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

sys.path.insert(0, "benchmarks")

# captions, and a function that seeds a generator from the sampler's (called only by row
# groups that draw: plain guidance then draws exactly what dalle.sampling does) -> row groups
Rows = Callable[[torch.Tensor, Callable[[], torch.Generator]], list[torch.Tensor]]
Mix = Callable[[list[torch.Tensor]], torch.Tensor]  # each group's logits -> the logits to draw


def guided_sampler(rows: Rows, mix: Mix, temperature: float) -> Callable:
    """A stand-in for ``dalle.sampling.sample_codes`` (cached, no priming): each caption's row
    groups run in one batch and ``mix`` combines their logits at every step."""
    from dalle.sampling import sample_next

    @torch.no_grad()
    def sample_codes(model, text, *, generator=None, **_ignored):
        b, n = text.shape[0], model.cfg.image_len

        def seeded() -> torch.Generator:
            seed = int(torch.randint(0, 2**31, (1,), generator=generator))
            return torch.Generator().manual_seed(seed)

        groups = rows(text, seeded)
        model.eval()
        cache = model.new_cache(b * len(groups))
        logits = model.prefill(torch.cat(groups), cache, None)
        codes = torch.empty(b, n, dtype=torch.long)
        for i in range(n):
            drawn = sample_next(mix(list(logits.float().split(b))), generator=generator,
                                temperature=temperature)  # fmt: skip
            codes[:, i] = drawn
            if i < n - 1:
                logits = model.unchecked_step(drawn.repeat(len(groups)), cache)
        return codes

    return sample_codes


def evaluate(model_dir: str, sampler: Callable) -> tuple[dict, float]:
    """The breakdown of 48 fresh prompts x 4 drawn through ``sampler``, and the seconds."""
    import dalle.pipeline as pipeline
    from dalle.eval.shapes_breakdown import PromptResult, breakdown, diagnose_image
    from dalle_fidelity import fresh_prompts

    pipeline.sample_codes = sampler
    pipe = pipeline.DallePipeline.from_pretrained(model_dir)
    prompts = fresh_prompts(48)
    t0 = time.perf_counter()
    images = pipe(prompts, num_images=4, seed=0).images
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

    def rows(text, seeded):
        neg = shuffled(text, seeded())
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
