"""dVAE quality benchmark: train the ``shapes`` preset (the default for ``--data shapes``) with the default recipe, time it, and
evaluate on 256 held-out shapes images (128 unseen train-split scenes, 128 holdout scenes).

    python benchmarks/vae_quality.py [--steps N] [--out runs/bench-vae] [--json FILE]

Prints a table and writes JSON (machine, torch, threads, config, timings, figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import REPO, RESULTS, header, run_timed, write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="override the recipe's steps")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-vae")
    parser.add_argument("--json", type=Path, default=RESULTS / "vae_quality.json")
    args = parser.parse_args()

    cmd = [
        sys.executable,
        "-m",
        "dalle",
        "train-vae",
        "--data",
        "shapes",
        "--preset",
        "shapes",
        "--out",
        str(args.out),
        "--force",
    ]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    done, wall = run_timed(cmd)
    if done.returncode != 0:
        return done.returncode
    report = json.loads(done.stdout.strip().splitlines()[-1])
    train_cfg = json.loads((args.out / "train_config.json").read_text())
    result = {
        **header("vae_quality"),
        "train_command": " ".join(cmd[1:]),
        "config": train_cfg,
        "wall_s": round(wall, 1),
        "psnr_db": round(report["psnr"], 2),
        "codebook_usage": round(report["codebook_usage"], 3),
        "perplexity": round(report["perplexity"], 1),
        "fidelity": report["fidelity"],
    }
    write_json(args.json, result)
    fid = report["fidelity"]
    rows = [
        ("wall time (train + eval)", f"{wall:.0f} s"),
        ("PSNR, 256 held-out images", f"{report['psnr']:.2f} dB"),
        ("codebook usage", f"{100 * report['codebook_usage']:.1f} %"),
        ("codebook perplexity", f"{report['perplexity']:.1f}"),
        (
            "reconstructions satisfying caption",
            f"{100 * fid['overall']:.1f} % (seen {100 * fid['seen']:.1f}, held-out {100 * fid['held_out']:.1f})",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
