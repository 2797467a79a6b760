"""``dalle eval``: measure generated images; ``dalle eval shapes`` scores prompt fidelity.

Each kind of evaluation is a sub-command of ``eval`` that prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate images or models", description="Evaluate.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True, parser_class=type(p))
    s = kinds.add_parser(
        "shapes",
        help="prompt fidelity of images of the captioned-shapes dataset (SHAPES.md)",
        description="Check each image against its prompt by reading its pixels and print "
        "one JSON object: the fraction of images that satisfy their prompt for seen prompts, "
        "prompts with a held-out colour-shape pair and overall, with counts.",
    )
    s.add_argument(
        "folder",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="folder of images, each with a same-stem .txt whose first line is its prompt",
    )
    s.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help='JSONL file of {"prompt": ..., "file": ...} lines, files relative to its folder',
    )
    s.set_defaults(func=run_shapes)


def run_shapes(args: argparse.Namespace) -> int:
    from dalle.eval.shapes import fidelity, open_pairs, read_folder, read_manifest

    if (args.folder is None) == (args.manifest is None):
        raise ValueError("give exactly one of DIR or --manifest FILE")
    items = read_folder(args.folder) if args.folder else read_manifest(args.manifest)
    print(json.dumps(fidelity(open_pairs(items))))
    return 0
