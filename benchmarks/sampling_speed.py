"""Sampling speed benchmark: image tokens per second with the KV cache against recomputing the
full forward pass for every token, same model, same seed, same run.

    python benchmarks/sampling_speed.py [--repeats N] [--batch B] [--device cpu] [--quick]

Model: dim 256, depth 4, heads 8 (the paper's row/column/conv layer pattern), 16 text tokens,
16x16 image tokens, 512 codes, randomly initialised; batch 8. ``--quick`` shrinks the image
to 4x4 tokens and the repeats to 2, for a seconds-long check that writes no JSON unless
``--json`` is given. Prints a table and writes JSON (machine, torch, threads, config, medians).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

DEFAULT_JSON = Path("benchmarks/results/sampling_speed.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="4x4 image, 2 repeats, no JSON")
    parser.add_argument("--json", type=Path, help=f"output file (default {DEFAULT_JSON})")
    args = parser.parse_args()

    import torch

    from dalle.config import TransformerConfig, to_dict
    from dalle.models.dalle import DALLE
    from dalle.sampling import sample_codes

    if args.threads:
        torch.set_num_threads(args.threads)
    # The reference model: dim 256, depth 4, 8 heads, 16 text tokens, 16x16 codes of 512.
    cfg = TransformerConfig(
        text_vocab=512, text_len=16, image_vocab=512, image_grid=16, dim=256, depth=4, heads=8
    )
    repeats = args.repeats
    if args.quick:
        cfg, repeats = dataclasses.replace(cfg, image_grid=4), 2
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = DALLE(cfg).to(device).eval()
    g = torch.Generator(device=device)
    text = torch.randint(
        1, cfg.text_vocab, (args.batch, cfg.text_len), generator=g.manual_seed(0), device=device
    )

    def run(use_cache: bool) -> tuple[float, torch.Tensor]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        codes = sample_codes(model, text, generator=g.manual_seed(1), use_cache=use_cache)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, codes

    tokens = args.batch * cfg.image_len
    seconds: dict[str, list[float]] = {"cached": [], "uncached": []}
    codes = {}
    for name in seconds:  # one warm-up each
        run(name == "cached")
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        for name in seconds:
            dt, codes[name] = run(name == "cached")
            seconds[name].append(dt)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    rate = {name: tokens / medians[name] for name in medians}
    ratio = rate["cached"] / rate["uncached"]
    same = bool(torch.equal(codes["cached"], codes["uncached"]))

    result = {
        "benchmark": "sampling_speed",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "device": str(device),
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": to_dict(cfg),
        "batch": args.batch,
        "image_tokens_per_sample": cfg.image_len,
        "repeats": repeats,
        "seconds": {k: [round(x, 4) for x in v] for k, v in seconds.items()},
        "median_s": {k: round(v, 4) for k, v in medians.items()},
        "tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
        "speedup": round(ratio, 2),
        "same_codes": same,
    }
    rows = [
        (
            "setting",
            f"batch {args.batch}, {cfg.image_grid}x{cfg.image_grid} tokens, {repeats} repeats",
        ),
        ("KV cache", f"{rate['cached']:.0f} image tokens/s (median {medians['cached']:.3f} s)"),
        (
            "full forward per token",
            f"{rate['uncached']:.0f} image tokens/s (median {medians['uncached']:.3f} s)",
        ),
        ("speedup", f"{ratio:.2f}x"),
        ("same codes, same seed", str(same)),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    out = args.json or (None if args.quick else DEFAULT_JSON)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
