"""Binding trial (issue 20): per-factor classifier-free guidance for a product codebook,
measured a loser.

The colour factor is guided with its own scale. Code logits are ``pattern[p] + colour[c]``,
so the guided difference ``d = cond - uncond`` splits exactly into a pattern part and a
colour part (the mean of ``d`` over patterns for each colour, centred); the colour part gets
scale SC, the rest S (SC = S is plain guidance, and reproduces the benchmark's figures). A
trial harness: it swaps the pipeline's sampler, draws the 48 fresh prompts of
``benchmarks/dalle_fidelity.py`` x 4 and prints the correct rate per breakdown row and the
colour error rate of two-object prompts.

    python benchmarks/binding_factor_guidance.py MODEL TEMPERATURE S SC
"""
import json
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
import dalle.pipeline as P
from dalle.eval.shapes_breakdown import PromptResult, breakdown, diagnose_image
from dalle.pipeline import DallePipeline
from dalle.sampling import sample_next
from dalle_fidelity import fresh_prompts

model_dir, T, S, SC = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])

@torch.no_grad()
def sample_codes(model, text, *, generator=None, temperature=1.0, top_k=None, top_p=None,
                 cond_scale=1.0, prime=None, callback=None, compile=False):
    b, n, C = text.shape[0], model.cfg.image_len, model.cfg.image_palette
    full = torch.cat([text, torch.zeros_like(text)])
    model.eval()
    cache = model.new_cache(full.shape[0])
    logits = model.prefill(full, cache, None)
    codes = torch.empty(b, n, dtype=torch.long)
    for i in range(n):
        l = logits.float()
        c, u = l[:b], l[b:]
        d = (c - u).view(b, -1, C)  # (B, P, C): a(p) + b(c)
        colour = d.mean(1, keepdim=True) - d.mean((1, 2), keepdim=True)  # b(c), centred
        mixed = u + (S * d + (SC - S) * colour).flatten(1)
        drawn = sample_next(mixed, generator=generator, temperature=T)
        codes[:, i] = drawn
        if i < n - 1:
            logits = model.unchecked_step(drawn.repeat(2), cache)
    return codes

P.sample_codes = sample_codes
pipe = DallePipeline.from_pretrained(model_dir)
prompts = fresh_prompts(48)
t0 = time.perf_counter()
gen = pipe(prompts, num_images=4, seed=0)
results = []
for p, prompt in enumerate(prompts):
    ims = gen.images[p*4:(p+1)*4]
    results.append(PromptResult(prompt, tuple(diagnose_image(prompt, im) for im in ims), tuple(range(4))))
bd = breakdown(results)
row = {k: round(v["rates"]["correct"], 3) for k, v in bd.items()}
two = {k: round(v["rates"]["color"], 3) for k, v in bd.items() if k.startswith("2/")}
print(json.dumps({"model": model_dir, "T": T, "S": S, "SC": SC, "s": round(time.perf_counter()-t0), "correct": row, "colour_wrong_2obj": two}))
