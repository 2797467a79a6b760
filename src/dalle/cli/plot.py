"""``dalle plot RUN``: a run's loss and learning-rate curves as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="draw a run's loss and learning-rate curves",
        description="Read RUN/metrics.jsonl and write one panel per series (loss, every "
        "other *_loss, lr) against the step to RUN/curves.png (or --out).",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="a training run folder")
    p.add_argument("--out", type=Path, help="PNG to write (default: RUN/curves.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dalle.curves import plot_metrics, read_metrics
    from dalle.images import png_bytes
    from dalle.io import check_output_file, write_bytes_atomic

    sheet = plot_metrics(read_metrics(args.run / "metrics.jsonl"))
    out = check_output_file(args.out or args.run / "curves.png", force=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, png_bytes(sheet))
    print(f"wrote {out}")
    return 0
