"""``dalle data shapes | emoji``: write the built-in captioned shapes, or Google's emoji from the
npm registry, to a folder of image + caption pairs."""

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
    e = kinds.add_parser(
        "emoji",
        help="Google's emoji (npm emoji-datasource-google), captioned by their names",
        description="Write the emoji of the npm package emoji-datasource-google (pinned "
        "version; package MIT, images Apache-2.0) as STEM.png (64 px, alpha composited onto "
        "white) + STEM.txt (the lower-cased name, plus its skin tones) and LICENSE. The "
        "holdout split is one (emoji, skin tone) pair of each emoji with five tones, held out of "
        "train. The package comes from --source (the .tgz or its unpacked folder), else from "
        "`npm pack` into --cache.",
    )
    e.add_argument("--out", type=Path, required=True, help="output folder (must be empty)")
    e.add_argument("--split", choices=("train", "holdout", "all"), default="train")
    e.add_argument("--source", type=Path, help="the package's .tgz or unpacked folder")
    e.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "dalle",
        help="where `npm pack` puts the package (default: %(default)s)",
    )
    e.add_argument("--force", action="store_true", help="write into a non-empty folder")
    e.set_defaults(func=run_emoji)


def run_shapes(args: argparse.Namespace) -> int:
    from dalle.data.shapes import write_folder

    write_folder(args.out, args.split, args.num, args.seed, force=args.force)
    print(f"wrote {args.num} {args.split} samples to {args.out}")
    return 0


def run_emoji(args: argparse.Namespace) -> int:
    from dalle.data import emoji

    source = args.source if args.source is not None else emoji.fetch(args.cache)
    n = emoji.write_folder(args.out, source, args.split, force=args.force)
    print(f"wrote {n} {args.split} emoji to {args.out} (from {source})")
    return 0
