"""``dalle data shapes``: write the built-in captioned-shapes dataset to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from dalle.cli.common import positive_int, seed_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write datasets to disk", description="Write datasets to disk.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True, parser_class=type(p))
    s = kinds.add_parser(
        "shapes",
        help="the built-in captioned-shapes dataset (SHAPES.md)",
        description="Write samples 0..N-1 of the captioned-shapes dataset as "
        "{i:06d}.png / .txt / .json triples.",
    )
    s.add_argument("--out", type=Path, required=True, help="output folder (must be empty)")
    s.add_argument("--split", choices=("train", "holdout"), default="train")
    s.add_argument("--num", type=positive_int, default=1000, help="number of samples")
    s.add_argument("--seed", type=seed_int, default=0)
    s.add_argument("--force", action="store_true", help="write into a non-empty folder")
    s.set_defaults(func=run_shapes)


def run_shapes(args: argparse.Namespace) -> int:
    from dalle.data.shapes import write_folder

    write_folder(args.out, args.split, args.num, args.seed, force=args.force)
    print(f"wrote {args.num} {args.split} samples to {args.out}")
    return 0
