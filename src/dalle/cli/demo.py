"""``dalle demo``: the README's first command; the work is :func:`dalle.demo_recipe.run_demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from dalle.cli.common import positive_float, seed_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train everything on the built-in shapes dataset and draw prompts (minutes on a CPU)",
        description="Train a tokenizer, a dVAE, a transformer and CLIP on the built-in "
        "captioned-shapes dataset within --minutes, then generate a fixed set of prompts, "
        "keeping the best of 4 candidates per image by CLIP. Writes OUT/model/, "
        "OUT/samples.png, OUT/report.json and the training runs in OUT/runs/.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--minutes", type=positive_float, default=9.0, help="total time budget")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dalle.demo_recipe import run_demo

    run_demo(args.out, args.minutes, args.seed, args.force)
    return 0
