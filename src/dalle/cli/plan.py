"""``dalle plan``: memory per rank to train a transformer preset, before booking GPUs."""

from __future__ import annotations

import argparse
from pathlib import Path

from dalle.cli.common import positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="memory per rank for DDP / FSDP / activation checkpointing",
        description="Print the parameters, the optimizer state and the activation memory per "
        "rank of training a transformer preset with DDP, FSDP and each with activation "
        "checkpointing, and which fit; nothing is allocated (PyTorch's meta device).",
    )
    p.add_argument("--preset", default="paper", help="transformer preset (default: paper)")
    p.add_argument("--gpus", type=positive_int, default=8, help="ranks in all (default 8)")
    p.add_argument("--gpu-memory", type=positive_float, default=80.0, help="GiB per GPU")
    p.add_argument("--batch-per-rank", type=positive_int, default=1, help="sequences per rank")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="activations' dtype (default bf16 autocast)")  # fmt: skip
    p.add_argument("--json", type=Path, help="also write the plan as JSON")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    import torch

    from dalle.config import TRANSFORMER_PRESETS
    from dalle.io import write_json_atomic
    from dalle.train.memory_plan import as_dict, describe, plan

    if args.preset not in TRANSFORMER_PRESETS:
        names = ", ".join(sorted(TRANSFORMER_PRESETS))
        raise ValueError(f"--preset {args.preset!r} is not a transformer preset ({names})")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    cfg = TRANSFORMER_PRESETS[args.preset]
    result = plan(cfg, args.gpus, args.gpu_memory, args.batch_per_rank, dtype)
    print(describe(result))
    if args.json is not None:
        write_json_atomic(args.json, {"preset": args.preset, **as_dict(result)})
    return 0
