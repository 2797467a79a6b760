"""Prototype, not a library option: particle search on the emoji model. Each image carries P
partial candidates; every few rows the best-scored quarter (by PMI, conditional likelihood or
the guided log-weight of the codes drawn so far) is kept and copied. Usage:

    python benchmarks/emoji_search.py "dict(P=8, every_rows=2, keep_frac=0.25, score_kind='cond')"

with runs/emoji_timed from `benchmarks/emoji.py --work runs/emoji_timed`.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from dalle.eval.nearest import own_rank, top_k
from dalle.pipeline import DallePipeline
from dalle.sampler import guide
from emoji_diagnosis import seen_emoji

torch.set_num_threads(2)


@torch.no_grad()
def particle_codes(s, model, text, P, every_rows, keep_frac, gen, score_kind="pmi"):
    cfg = model.cfg
    b, n, grid = text.shape[0], cfg.image_len, cfg.image_grid
    t = text.repeat_interleave(P, 0)
    B = t.shape[0]
    rows = torch.cat([t, torch.zeros_like(t)])
    cache = model.new_cache(2 * B)
    logits = model.prefill(rows, cache, None)
    codes = torch.empty(B, n, dtype=torch.long)
    score = torch.zeros(B, dtype=torch.float64)
    k = max(1, int(P * keep_frac))
    offs = (torch.arange(b) * P)[:, None]
    for i in range(n):
        lc, lu = logits[:B].float(), logits[B:].float()
        drawn = s.draw(guide(lc, lu, s.cond_scale), gen)
        codes[:, i] = drawn
        pc = lc.log_softmax(-1).gather(1, drawn[:, None])[:, 0]
        pu = lu.log_softmax(-1).gather(1, drawn[:, None])[:, 0]
        if score_kind == "pmi":
            score += (pc - pu).double()
        elif score_kind == "cond":
            score += pc.double()
        else:
            score += (s.cond_scale * pc + (1 - s.cond_scale) * pu).double()
        if every_rows and (i + 1) % (every_rows * grid) == 0 and i < n - 1:
            top = score.view(b, P).topk(k, dim=1).indices  # (b, k)
            reps = -(-P // k)
            idx = (top.repeat(1, reps)[:, :P] + offs).flatten()
            codes, score = codes[idx], score[idx]
            full = torch.cat([idx, idx + B])
            cache.k = cache.k[:, full]
            cache.v = cache.v[:, full]
        if i < n - 1:
            start = cache.pos
            logits = model.step(torch.cat([drawn, drawn]), cache, start)
            cache.pos = start + 1
    return codes.view(b, P, n), score.view(b, P)


def main():
    work = Path(__file__).resolve().parents[1] / "runs" / "emoji_timed"
    stems, captions, seen, pictures = seen_emoji(work, 48, 0)
    pipe = DallePipeline.from_pretrained(work / "model")
    index = {s_: i for i, s_ in enumerate(stems)}
    s = pipe.sampler
    text = pipe.encode_prompts([captions[x] for x in seen])
    configs = [eval(a) for a in sys.argv[1:]]
    samples = 2
    for cfgd in configs:
        st = time.perf_counter()
        gen = torch.Generator().manual_seed(0)
        imgs_targets = []
        allcodes = []
        for _rep in range(samples):
            for chunk in range(0, len(seen), 16):
                c, sc = particle_codes(s, pipe.transformer, text[chunk:chunk + 16], gen=gen, **{k: v for k, v in cfgd.items() if k != "clip"})
                if cfgd.get("clip"):
                    b, P, n = c.shape
                    ims = pipe.decode(c.view(b * P, n)).view(b, P, *pictures.shape[1:])
                    prompts = [captions[x] for x in seen[chunk:chunk + 16] for _ in range(P)]
                    cs = pipe.score(prompts, ims.flatten(0, 1)).view(b, P)
                    best = cs.argmax(1)
                    allcodes.append(ims[torch.arange(b), best])
                else:
                    best = sc.argmax(1)
                    allcodes.append(pipe.decode(c[torch.arange(c.shape[0]), best]))
                imgs_targets += [index[x] for x in seen[chunk:chunk + 16]]
        drawn = torch.cat(allcodes)
        ranks = own_rank(drawn, pictures, imgs_targets)
        print(cfgd, f"top1 {100*top_k(ranks,1):.1f} top5 {100*top_k(ranks,5):.1f} median {sorted(ranks)[len(ranks)//2]} {time.perf_counter()-st:.0f}s", flush=True)


if __name__ == "__main__":
    main()
