"""``dalle demo``: the README's first command. For now it writes a sample of the built-in
captioned-shapes dataset and a contact sheet of it; later stages add training and generation."""

from __future__ import annotations

import argparse
from pathlib import Path

from dalle.cli.common import non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo on the built-in shapes dataset",
        description="Write a sample of the captioned-shapes dataset (train and holdout splits) "
        "to OUT/data/{train,holdout}/ and a captioned contact sheet to OUT/shapes.png.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    p.add_argument("--num", type=positive_int, default=64, help="samples per split")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dalle.data.shapes import make_sample, write_folder
    from dalle.images import contact_sheet, png_bytes
    from dalle.io import write_bytes_atomic

    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "holdout"):
        write_folder(args.out / "data" / split, split, args.num, args.seed, force=True)
    images = [
        make_sample(args.seed, split, i).image for split in ("train", "holdout") for i in range(32)
    ]
    write_bytes_atomic(args.out / "shapes.png", png_bytes(contact_sheet(images, columns=8)))
    print(
        f"wrote {args.out}/data/train, {args.out}/data/holdout and {args.out}/shapes.png "
        "(top 4 rows: train split; bottom 4: held-out colour-shape pairs)"
    )
    for i in range(4):
        print(f"  {make_sample(args.seed, 'train', i).caption}")
    return 0
