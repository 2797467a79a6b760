"""Prototype: grouped image codes with a depth head, against the demo's transformer, at equal seconds.

The demo's transformer runs over 18 text tokens + 16 x 16 = 256 image codes. The grouped model
(after RQ-Transformer, Lee et al. 2022, Sec. 3.2; MEGABYTE, Yu et al. 2023, Sec. 2) runs the same
blocks over 18 + 8 x 8 = 64 positions, each a 2 x 2 group of codes (its input the sum of its four
codes' embeddings, one table per place in the group), and a small causal "depth" block predicts
the group's four codes one after another from the position's hidden state plus the embedding of
the code before. Both factor a product codebook's code into pattern and colour logits, use the
demo's caption dropout (0.15), colour dropout (0.5), loss weights (1/8 text, 7/8 image) and
AdamW recipe, and are compiled. Each trains for ``--seconds`` with the cosine schedule laid over
seconds (warm-up 100 steps), and is scored at four points on the held-out image NLL per code
(nats; the same quantity for both, since both model the same codes).

    python benchmarks/grouped_codes.py [--seconds 300] [--vae runs/lc_muon/vae] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import REPO, RESULTS, header, write_json

GROUP = 2  # codes per group side


class GroupedDALLE(nn.Module):
    """Text tokens then ``(grid / GROUP)**2`` groups; a depth block per group emits its codes."""

    def __init__(self, cfg, depth_layers: int = 1):
        from dalle.models.transformer import Block, Transformer

        super().__init__()
        g = cfg.image_grid // GROUP
        self.cfg = cfg
        self.spatial = dataclasses.replace(cfg, image_grid=g)
        self.n = GROUP * GROUP
        d, f = cfg.dim, cfg.image_factors
        self.text_emb = nn.Embedding(cfg.text_vocab_total, d)
        self.text_pos_emb = nn.Embedding(cfg.text_len, d)
        self.group_emb = nn.Embedding(self.n * f, d)  # one table per place in the group
        self.row_emb = nn.Embedding(g, d)
        self.col_emb = nn.Embedding(g, d)
        self.transformer = Transformer(self.spatial)
        self.depth_in = nn.Embedding(self.n * f, d)
        self.depth_pos = nn.Embedding(self.n, d)
        self.depth = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(depth_layers))
        self.depth_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.text_vocab_total)
        self.image_head = nn.Linear(d, f)
        self.register_buffer("causal", torch.ones(self.n, self.n).tril().bool(), persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def groups(self, image: torch.Tensor) -> torch.Tensor:
        """Raster codes ``(B, grid**2)`` -> ``(B, groups, GROUP**2)`` in group-major order."""
        b, g = image.shape[0], self.cfg.image_grid // GROUP
        x = image.reshape(b, g, GROUP, g, GROUP).permute(0, 1, 3, 2, 4)
        return x.reshape(b, g * g, self.n)

    def factor_embed(self, table: nn.Embedding, codes: torch.Tensor, drop: torch.Tensor | None):
        """``codes`` (..., n) -> (..., n, C): pattern + colour rows of each place's table."""
        from dalle.models.codebook import split_codes

        cfg, f = self.cfg, self.cfg.image_factors
        place = torch.arange(codes.shape[-1], device=codes.device) * f
        pattern, colour = split_codes(codes.long(), cfg.image_palette)
        colours = table(place + cfg.image_vocab // cfg.image_palette + colour)
        if drop is not None:
            colours = colours.masked_fill(drop[..., None], 0.0)
        return table(place + pattern) + colours

    def loss_terms(self, text, image, text_weight, image_weight, drop):
        """The demo objective's terms ``(loss, text_loss, image_loss)``; ``drop`` (B, groups, n)
        masks input colours (for the spatial and the depth inputs alike)."""
        from dalle.models.codebook import split_codes

        cfg = self.cfg
        t, g = cfg.text_len, cfg.image_grid // GROUP
        codes = self.groups(image)  # (B, G, n)
        pos = torch.arange(g * g, device=image.device)
        x_img = self.factor_embed(self.group_emb, codes, drop).sum(2)
        x_img = x_img + self.row_emb(pos // g) + self.col_emb(pos % g)
        tpos = torch.arange(t, device=text.device)
        tokens = torch.where(text == 0, cfg.text_vocab + tpos, text.long())
        x_txt = self.text_emb(tokens) + self.text_pos_emb(tpos)
        h = self.transformer(torch.cat([x_txt, x_img[:, :-1]], 1))  # (B, t + G - 1, C)
        text_logits = self.head(h[:, : t - 1]).float()
        text_loss = F.cross_entropy(text_logits.flatten(0, 1), tokens[:, 1:].flatten())
        ctx = h[:, t - 1 :]  # (B, G, C): position t - 1 + k predicts group k
        prev = self.factor_embed(self.depth_in, codes[..., :-1], None if drop is None else drop[..., :-1])
        prev = torch.cat([torch.zeros_like(prev[..., :1, :]), prev], dim=-2)  # (B, G, n, C)
        z = (ctx[:, :, None] + prev + self.depth_pos.weight).flatten(0, 1)  # (B*G, n, C)
        for block in self.depth:
            z = block(z, self.causal)
        factors = self.image_head(self.depth_norm(z)).float().flatten(0, 1)
        p = cfg.image_vocab // cfg.image_palette
        pattern, colour = split_codes(codes.long().flatten(), cfg.image_palette)
        image_loss = F.cross_entropy(factors[:, :p], pattern) + F.cross_entropy(factors[:, p:], colour)
        return text_weight * text_loss + image_weight * image_loss, text_loss, image_loss


def baseline_terms(model, text, image, tw, iw, drop):
    from dalle.train.transformer_trainer import loss_terms

    return loss_terms(model, text, image, tw, iw, drop)


def train_for(name, model, terms, drop_shape, data, held, seconds, seed=0):
    """Train ``model`` for ``seconds`` (the schedule over seconds); NLL at four points."""
    from dalle.train.transformer_trainer import caption_dropout

    text, codes = data
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), fused=True)
    step_fn = torch.compile(terms)
    gen = torch.Generator().manual_seed(seed)
    points, rows, clock, step = [0.25, 0.5, 0.75, 1.0], [], 0.0, 0
    while points:
        t0 = time.perf_counter()
        frac = clock / seconds
        lr = 3e-3 * ((step + 1) / 100 if step < 100 else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(text), (8,), generator=gen)
        t = caption_dropout(text[idx], 0.15, gen)
        drop = torch.rand(drop_shape(8), generator=gen) < 0.5
        loss, _, _ = step_fn(model, t, codes[idx], 1 / 8, 7 / 8, drop)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        clock += time.perf_counter() - t0
        if clock >= points[0] * seconds:
            nll = evaluate(model, terms, held)
            rows.append({"train_s": round(clock, 1), "step": step, "image_nll": round(nll, 4)})
            print(f"{name}: {clock:6.0f} s  step {step:>5}  held-out image NLL {nll:.4f}", flush=True)
            points.pop(0)
    return rows


@torch.no_grad()
def evaluate(model, terms, held) -> float:
    model.eval()
    text, codes = held
    total = 0.0
    for i in range(0, len(text), 64):
        _, _, image_loss = terms(model, text[i : i + 64], codes[i : i + 64], 1 / 8, 7 / 8, None)
        total += float(image_loss) * len(text[i : i + 64])
    model.train()
    return total / len(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--images", type=int, default=8550)
    parser.add_argument("--vae", type=Path, default=REPO / "runs" / "lc_muon" / "vae" / "model")
    parser.add_argument("--depth-layers", type=int, default=1)
    parser.add_argument("--only", choices=("baseline", "grouped"), default=None)
    parser.add_argument("--json", type=Path, default=RESULTS / "grouped_codes.json")
    args = parser.parse_args()


    from dalle.config import TRANSFORMER_PRESETS
    from dalle.data import ShapesData
    from dalle.demo_recipe import TOKENIZER_CAPTIONS
    from dalle.models.dalle_transformer import DALLE
    from dalle.models.vae import DiscreteVAE
    from dalle.train import encode, train_tokenizer
    from dalle.train.transformer_trainer import sized_config

    torch.set_num_threads(2)
    tokenizer = train_tokenizer(ShapesData(TOKENIZER_CAPTIONS, 0))
    vae = DiscreteVAE.load(args.vae)
    cfg = sized_config(TRANSFORMER_PRESETS["tiny"], tokenizer, vae)

    def tokens(n, seed):
        ts = encode(vae, ShapesData(n, seed), batch_size=128)
        text, _ = tokenizer.encode_batch(ts.captions, cfg.text_len)
        return text, ts.codes.long()

    data, held = tokens(args.images, 0), tokens(512, 12345)
    report = {**header("grouped_codes"), "seconds": args.seconds, "curves": {}}
    n_img = cfg.image_len
    runs = {
        "baseline": lambda: (DALLE(cfg), baseline_terms, lambda b: (b, n_img - 1)),
        "grouped": lambda: (
            GroupedDALLE(cfg, args.depth_layers),
            lambda m, *a: m.loss_terms(*a),
            lambda b: (b, n_img // GROUP**2, GROUP**2),
        ),
    }
    for name, make in runs.items():
        if args.only and name != args.only:
            continue
        torch.manual_seed(0)
        model, terms, drop_shape = make()
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params / 1e6:.2f} M parameters", flush=True)
        report["curves"][name] = train_for(name, model, terms, drop_shape, data, held, args.seconds)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
