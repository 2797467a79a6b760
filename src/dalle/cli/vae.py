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
    prepare_run_dir,
    record_settings,
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
        "--preset", default="tiny", help="architecture preset: tiny (64 px) or paper (256 px)"
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
    import torch

    from dalle.config import VAE_PRESETS, VAETrainConfig, preset, to_dict
    from dalle.data.batches import endless_batches
    from dalle.data.folder import ImageFolderDataset
    from dalle.data.shapes import ShapesStream, collate
    from dalle.data.shards import ShardDataset, is_shards
    from dalle.eval.vae import evaluate_vae
    from dalle.io import write_json_atomic
    from dalle.models.vae import DiscreteVAE
    from dalle.train import distributed
    from dalle.train.checkpoint import CheckpointConfig
    from dalle.train.vae import shapes_eval_set, train_vae

    vae_cfg = preset(VAE_PRESETS, args.preset, "VAE")
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
    if args.data == "shapes":
        if vae_cfg.image_size != 64:
            raise ValueError(
                f"--data shapes has 64 px images; preset {args.preset!r} expects {vae_cfg.image_size} px"
            )
        batches = endless_batches(
            ShapesStream("train", seed=args.seed), train_cfg.batch_size, collate
        )
    else:
        dataset = (
            ShardDataset(args.data, vae_cfg.image_size, args.seed)
            if is_shards(args.data)
            else ImageFolderDataset(Path(args.data), vae_cfg.image_size, seed=args.seed)
        )
        batches = endless_batches(
            dataset, train_cfg.batch_size, lambda b: torch.stack([x["image"] for x in b]), args.seed
        )
    if args.resume and not args.out.is_dir():
        raise ValueError(f"nothing to resume: run folder {args.out} does not exist")
    one_phase = train_cfg.warm_start_steps in (0, train_cfg.steps)
    if args.resume and not one_phase:
        raise ValueError("--resume needs a one-phase recipe: --warm-start 0 or 1")
    out = prepare_run_dir(args.out, force=args.force or args.resume)  # joins torchrun's group
    record_settings(out, {"vae": to_dict(vae_cfg), "train": to_dict(train_cfg)}, args.resume)
    checkpoint = CheckpointConfig(args.checkpoint_every, args.keep) if one_phase else None
    torch.manual_seed(args.seed)
    vae = DiscreteVAE(vae_cfg)
    if args.data == "shapes":
        images, captions = shapes_eval_set()
    else:
        images, captions = next(batches)[:16], None
    train_vae(
        vae,
        train_cfg,
        batches,
        out,
        images[:16],
        args.save_every,
        checkpoint=checkpoint,
        resume=args.resume,
    )
    report = evaluate_vae(vae, images, captions)
    if args.data != "shapes":
        report["skipped_files"] = dataset.num_skipped
        if dataset.report():
            print(f"train-vae: {dataset.report()}", file=sys.stderr)
    if distributed.is_main():
        write_json_atomic(out / "eval.json", report)
        print(json.dumps(report))
    return 0
