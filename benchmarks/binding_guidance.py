"""Binding trial (issue 20): word-order contrastive guidance, measured a loser.

Beside classifier-free guidance against the empty caption, guide against the same caption with
its tokens in a random order (the same bag of words; what order alone adds is which attribute
goes with which object): ``logits = u + S (c - u) + A (c - n)``, or with ``neg`` the shuffled
caption replaces the empty one, ``n + S (c - n)``. A trial harness: it swaps the pipeline's
sampler for one with the three row groups, draws the 48 fresh prompts of
``benchmarks/dalle_fidelity.py`` x 4 and prints the correct rate per breakdown row.

    python benchmarks/binding_guidance.py MODEL TEMPERATURE S A [neg]
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

model_dir, T, S, A = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
neg_only = len(sys.argv) > 5 and sys.argv[5] == "neg"

def shuffled(text, g):
    out = text.clone()
    for r in range(len(text)):
        n = int((text[r] != 0).sum())
        out[r, :n] = text[r, :n][torch.randperm(n, generator=g)]
    return out

@torch.no_grad()
def sample_codes(model, text, *, generator=None, temperature=1.0, top_k=None, top_p=None,
                 cond_scale=1.0, prime=None, callback=None, compile=False):
    b, n = text.shape[0], model.cfg.image_len
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    neg = shuffled(text, g)
    groups = [text, neg] if neg_only else [text, torch.zeros_like(text), neg]
    full = torch.cat(groups)
    k = len(groups)
    model.eval()
    cache = model.new_cache(full.shape[0])
    logits = model.prefill(full, cache, None)
    codes = torch.empty(b, n, dtype=torch.long)
    for i in range(n):
        l = logits.float()
        c = l[:b]
        if neg_only:
            mixed = l[b:] + S * (c - l[b:])
        else:
            u, ng = l[b:2*b], l[2*b:]
            mixed = u + S * (c - u) + A * (c - ng)
        d = sample_next(mixed, generator=generator, temperature=T)
        codes[:, i] = d
        if i < n - 1:
            logits = model.unchecked_step(d.repeat(k), cache)
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
print(json.dumps({"model": model_dir, "T": T, "S": S, "A": A, "neg_only": neg_only, "s": round(time.perf_counter()-t0), "correct": row}))
