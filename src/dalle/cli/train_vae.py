"""``dalle train-vae``: train the discrete VAE on the built-in shapes or an image-caption folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dalle.cli.common import (
    add_checkpoint_args,
    positive_float,
    positive_int,
    run_config,
    seed_int,
    with_overrides,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-vae",
        help="train the discrete VAE (stage 1)",
        description="Train the dVAE with the gumbel-softmax relaxation (Ramesh et al. 2021, Sec. 2.1). "
        "Writes RUN/model/ (config.json + model.safetensors), RUN/metrics.jsonl, reconstruction "
        "grids RUN/recon_*.png and, for --data shapes, RUN/eval.json.",
    )
    p.add_argument(
        "--data",
        required=True,
        help="'shapes' (built-in dataset, train split) or an image+.txt folder",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="run folder (must be empty unless --force)"
    )
    p.add_argument(
        "--preset",
        help="architecture: tiny (64 px, flat 1 024-code codebook: any pictures; the default "
        "for folders and shards), tiny-32 / tiny-128 (the same at 32 / 128 px), shapes (64 px "
        "gain-shape codebook: the built-in shapes' 8 colours; the default for --data shapes), "
        "paper (256 px, 8 192 codes)",
    )
    p.add_argument("--steps", type=positive_int, help="optimisation steps (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--kl-weight", type=float, help="target KL weight beta")
    p.add_argument(
        "--tau-anneal-steps",
        type=positive_int,
        help="steps over which tau anneals 1 -> 1/16 (default: all)",
    )
    p.add_argument("--usage-weight", type=float, help="weight of the batch code-usage term")
    p.add_argument(
        "--warm-start",
        type=float,
        help="fraction of the steps trained on k-means patch codes before the relaxed ELBO "
        "(default 1: all; 0: the paper's objective alone)",
    )
    p.add_argument(
        "--straight-through",
        action="store_true",
        default=None,
        help="hard one-hot codes forward, relaxed gradients",
    )
    p.add_argument("--recon", choices=("logit_laplace", "mse"), help="reconstruction loss")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument(
        "--save-every", type=positive_int, default=500, help="steps between checkpoints and grids"
    )
    add_checkpoint_args(p)  # resuming needs --warm-start 0 or 1
    p.add_argument("--force", action="store_true", help="write into a non-empty run folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dalle.config import VAE_PRESETS, preset
    from dalle.data import ShapesData, open_data
    from dalle.eval import fidelity_judge
    from dalle.eval.reconstruction import evaluate_vae
    from dalle.io import write_json_atomic
    from dalle.train import VAETrainConfig, distributed, train_vae

    data = open_data(args.data, seed=args.seed)
    vae_cfg = preset(VAE_PRESETS, args.preset or data.vae_preset, "VAE")
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "kl_weight": args.kl_weight,
        "recon": args.recon,
        "tau_anneal_steps": args.tau_anneal_steps,
        "usage_weight": args.usage_weight,
        "warm_start": args.warm_start,
        "straight_through": args.straight_through,
        "seed": args.seed,
    }
    train_cfg = with_overrides(VAETrainConfig(), overrides)
    trained = train_vae(data, args.out, train_cfg, vae_cfg, run_config(args))
    # shapes: the held-out evaluation set; a folder: its first images (no split is held out)
    images, captions = data.eval_images(256 if isinstance(data, ShapesData) else 16, vae_cfg.image_size)
    report = evaluate_vae(trained.model, images, captions, fidelity_judge(data))
    if not isinstance(data, ShapesData):
        report["skipped_files"] = data.num_skipped
        if data.report():
            print(f"train-vae: {data.report()}", file=sys.stderr)
    if distributed.is_main():
        write_json_atomic(trained.run_dir / "eval.json", report)
        print(json.dumps(report))
    return 0
