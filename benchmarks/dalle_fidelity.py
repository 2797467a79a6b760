"""Prompt fidelity of a trained model: prompts drawn fresh from the caption grammar (about 40 %
with a held-out colour-shape pair, from a seed no training run uses), several samples each,
generated through the `dalle generate` contract and scored by the shapes checker.

    python benchmarks/dalle_fidelity.py [--model demo_out/model] [--prompts 48] [--samples 4]
        [--cond-scale C] [--temperature T] [--top-k K] [--rerank N] [--json FILE]

Prints a table and writes JSON (machine, torch, threads, settings, timings, figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PROMPT_SEED = 31_337  # never used for training or tuning


def fresh_prompts(n: int, seed: int = PROMPT_SEED) -> list[str]:
    """``n`` captions: 60 % from the train split's grammar, 40 % with a held-out pair."""
    from dalle.data.shapes import make_sample

    held = round(0.4 * n)
    return [make_sample(seed, "train", i).caption for i in range(n - held)] + [
        make_sample(seed, "holdout", i).caption for i in range(held)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("demo_out/model"))
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--prompt-seed",
        type=int,
        default=PROMPT_SEED,
        help=f"seed of the prompts (default {PROMPT_SEED}, the benchmark's; tune on another)",
    )
    parser.add_argument("--cond-scale", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--rerank", type=int, default=None, help="CLIP candidates per image")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-fidelity"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/dalle_fidelity.json"))
    args = parser.parse_args()

    import torch

    from dalle.eval.shapes import fidelity, open_pairs, read_manifest

    prompts = fresh_prompts(args.prompts, args.prompt_seed)
    args.out.mkdir(parents=True, exist_ok=True)
    prompt_file = args.out / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    cmd = [sys.executable, "-m", "dalle", "generate", "--model", str(args.model)]
    cmd += ["--prompts", str(prompt_file), "--num-images", str(args.samples)]
    cmd += ["--seed", str(args.seed), "--out", str(args.out / "images"), "--force"]
    for flag, value in (
        ("--cond-scale", args.cond_scale),
        ("--temperature", args.temperature),
        ("--top-k", args.top_k),
        ("--rerank", args.rerank),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return done.returncode
    fid = fidelity(open_pairs(read_manifest(args.out / "images" / "manifest.jsonl")))
    model_report = args.model.parent / "report.json"
    result = {
        "benchmark": "dalle_fidelity",
        "command": " ".join(cmd[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "prompt_seed": args.prompt_seed,
        "prompts": len(prompts),
        "samples_per_prompt": args.samples,
        "generate_wall_s": round(wall, 1),
        "fidelity": fid,
        "model_report": json.loads(model_report.read_text()) if model_report.is_file() else None,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    c = fid["counts"]
    rows = [
        ("images", f"{fid['n']} ({len(prompts)} prompts x {args.samples})"),
        ("generate wall time", f"{wall:.1f} s"),
        ("seen pairs", f"{100 * fid['seen']:.1f} % ({c['seen'][0]}/{c['seen'][1]})"),
        (
            "held-out pairs",
            f"{100 * fid['held_out']:.1f} % ({c['held_out'][0]}/{c['held_out'][1]})",
        ),
        ("overall", f"{100 * fid['overall']:.1f} %"),
    ]
    for name, value in rows:
        print(f"{name:<22} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
