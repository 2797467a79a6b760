"""Where the time of config M goes: ``torch.profiler`` over cached decoding at batch 8 (plain
and guided) and over one training step at batch 32, printing the top ops by self CPU time.

    python benchmarks/profile_decode.py [--steps N] [--top K] [--compile]
                                        [--only decode|guided|train] [--json FILE]

The model is ``benchmarks/speed.py``'s config M (16x16 codes, dim 256, depth 4, full
attention). Decoding samples the last ``--steps`` codes of the image (the rows before them are
primed), so a profile takes a few seconds; each profiled call follows one untimed warm-up.
``--compile`` profiles the compiled decode step and training loss instead, compiled during the
warm-up, whose seconds are printed. ``--json`` writes the tables (op, self CPU ms, calls).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import header, write_json


def top_ops(prof, k: int) -> list[dict]:
    """The ``k`` ops with the most self CPU time: name, self CPU ms, calls."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count}
        for e in events[:k]
    ]


def print_table(title: str, seconds: float, rows: list[dict]) -> None:
    print(f"\n{title}: {seconds * 1e3:.0f} ms profiled")
    print(f"{'op':<48} {'self CPU ms':>12} {'calls':>8}")
    for r in rows:
        print(f"{r['op'][:48]:<48} {r['self_cpu_ms']:>12.2f} {r['calls']:>8}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64, help="image codes decoded per profile")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--compile", action="store_true",
                        help="the compiled decode step and training step")  # fmt: skip
    parser.add_argument("--only", choices=("decode", "guided", "train"), action="append")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from dalle.config import TransformerConfig
    from dalle.models.dalle_transformer import DALLE
    from dalle.sampler import Sampler
    from dalle.train.optimizer import fusable
    from dalle.train.train_config import TransformerTrainConfig
    from dalle.train.transformer_trainer import DalleObjective

    cfg = TransformerConfig(
        text_vocab=512, text_len=16, image_vocab=512, image_grid=16, dim=256, depth=4, heads=8,
        attention=("full",) * 4,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DALLE(cfg).eval()
    text = torch.randint(1, cfg.text_vocab, (8, cfg.text_len))
    # Prime all rows but the last steps' worth: the profile covers ``--steps`` sampled codes.
    rows = max(0, (cfg.image_len - args.steps) // cfg.image_grid)
    prime = torch.randint(0, cfg.image_vocab, (8, rows * cfg.image_grid)) if rows else None
    report: dict = {**header("profile_decode"), "compile": args.compile, "profiles": {}}
    only = args.only or ["decode", "guided", "train"]

    def run(name: str, fn) -> None:
        t0 = time.perf_counter()
        fn()  # warm-up (and the compile)
        report.setdefault("warmup_s", {})[name] = round(time.perf_counter() - t0, 2)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        rows_ = top_ops(prof, args.top)
        report["profiles"][name] = {"seconds": round(seconds, 3), "top_ops": rows_}
        print_table(f"{name} (warm-up {report['warmup_s'][name]} s)", seconds, rows_)

    g = torch.Generator()
    for name, scale in (("decode", 1.0), ("guided", 3.0)):
        if name in only:
            codes = cfg.image_len - rows * cfg.image_grid
            run(f"{name} batch 8, {codes} codes",
                lambda scale=scale: Sampler(cond_scale=scale).sample(
                    model, text, generator=g.manual_seed(0), prime=prime, compile=args.compile
                ))  # fmt: skip
    if "train" in only:
        objective = DalleObjective(TransformerTrainConfig(caption_dropout=0.0),
                                   compile=args.compile)  # fmt: skip
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fusable(model))
        batch = (torch.randint(1, cfg.text_vocab, (32, cfg.text_len)),
                 torch.randint(0, cfg.image_vocab, (32, cfg.image_len)))  # fmt: skip

        def step() -> None:
            model.train()
            loss, _ = objective(model, batch, 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.eval()

        run("training step batch 32", step)
    if args.json is not None:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
