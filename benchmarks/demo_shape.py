"""The demo with another transformer shape: model shape at a fixed budget.

    python benchmarks/demo_shape.py --depth 3 --out runs/demo_depth3
    python benchmarks/dalle_fidelity.py --model runs/demo_depth3/model

runs `dalle demo` (the same 9-minute budget, the same stages and shares) with the transformer's
width, depth or heads changed; the transformer trains for the same seconds, so a cheaper shape
gets more steps. Then score the model with the no-flag fidelity benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import dalle.demo_recipe as demo
from dalle.config import TRANSFORMER_PRESETS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dim", type=int, help="transformer width (default: the tiny preset's)")
    p.add_argument("--depth", type=int, help="transformer blocks")
    p.add_argument("--heads", type=int, help="attention heads")
    p.add_argument("--minutes", type=float, default=9.0)
    args = p.parse_args()
    base = TRANSFORMER_PRESETS["tiny"]  # the demo's transformer
    depth = args.depth or base.depth
    shape = dataclasses.replace(
        base,
        dim=args.dim or base.dim,
        depth=depth,
        heads=args.heads or base.heads,
        attention=(base.attention[0],) * depth,
    )
    TRANSFORMER_PRESETS["tiny"] = shape
    print(f"transformer: {shape}", flush=True)
    report = demo.run_demo(args.out, minutes=args.minutes, force=True)
    print(json.dumps({"timings": report["timings"], "transformer": report["transformer"]}))


if __name__ == "__main__":
    main()
