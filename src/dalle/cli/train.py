"""``dalle encode`` (images -> a token file, once) and ``dalle train`` (the transformer)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from dalle.cli.common import (
    MAX_TEXT_LEN,
    add_checkpoint_args,
    add_precision_arg,
    int_up_to,
    positive_float,
    positive_int,
    run_config,
    seed_int,
    vae_dir,
    with_overrides,
)
from dalle.train.train_config import OPTIMIZERS


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "encode",
        help="encode images into dVAE tokens once (a token file for `dalle train`)",
        description="Run the dVAE encoder over a dataset once and write a token file: codes "
        "(N, h*w) and one caption per image, in one safetensors file.",
    )
    e.add_argument("--vae", type=Path, required=True, help="train-vae run folder or its model/")
    _data_args(e)
    e.add_argument("--out", type=Path, required=True, help="token file to write")
    e.add_argument("--force", action="store_true", help="overwrite an existing token file")
    e.set_defaults(func=run_encode)

    t = sub.add_parser(
        "train",
        help="train the DALL-E transformer (stage 2) on dVAE tokens",
        description="Train the transformer on [caption ; image codes]. Writes RUN/model/ (a "
        "pipeline folder for `dalle generate`), RUN/metrics.jsonl and sample grids "
        "RUN/samples_*.png.",
    )
    t.add_argument("--vae", type=Path, required=True, help="train-vae run folder or its model/")
    t.add_argument("--tokens", type=Path, help="token file from `dalle encode` (else --data)")
    _data_args(t, required=False)
    t.add_argument("--tokenizer", type=Path, help="tokenizer.json to use (default: train one)")
    t.add_argument("--out", type=Path, required=True, help="run folder (empty unless --force)")
    t.add_argument("--preset", default="tiny", help="transformer preset: tiny or small")
    t.add_argument(
        "--text-len",
        type=int_up_to(MAX_TEXT_LEN),
        help="caption tokens (default: the preset's; longer captions are cut with a warning)",
    )
    t.add_argument("--steps", type=positive_int)
    t.add_argument(
        "--minutes",
        type=positive_float,
        help="train for this long: --steps is only the first plan, re-planned from the "
        "run's measured step time so the schedule ends on time (no --resume)",
    )
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--lr", type=positive_float)
    t.add_argument("--caption-dropout", type=float, help="probability of training unconditioned")
    t.add_argument(
        "--colour-dropout",
        type=float,
        help="probability of leaving each input code's colour factor out (product codebooks; "
        "default 0)",
    )
    t.add_argument(
        "--accumulate", type=positive_int, help="batches per optimisation step (default 1)"
    )
    t.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="keep a moving average of the weights (e.g. 0.999) and save it as the model",
    )
    t.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="muon (default; adamw with --shard): Muon for the blocks' weight matrices, AdamW "
        "for the rest; or adamw for every parameter",
    )
    add_precision_arg(t)
    t.add_argument(
        "--compile",
        action="store_true",
        help="compile the training step with torch.compile (a one-off compile at the first "
        "step; without a working compiler: a warning and the usual path)",
    )
    t.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="keep only each block's input for the backward pass and recompute the rest "
        "there: less memory, about a third more compute, the same weights",
    )
    t.add_argument(
        "--shard",
        action="store_true",
        help="under torchrun: FSDP2 instead of DDP, each process holding 1/N of the weights, "
        "gradients and optimizer state (sharded checkpoints; the model folder is whole)",
    )
    t.add_argument("--seed", type=seed_int, default=0)
    t.add_argument("--save-every", type=positive_int, default=500)
    add_checkpoint_args(t, minutes=True)
    t.add_argument(
        "--device",
        help="cpu, cuda or cuda:N (default: cuda when available; under torchrun "
        "each process its own GPU)",
    )
    t.add_argument("--force", action="store_true", help="write into a non-empty run folder")
    t.set_defaults(func=run_train)


def _data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data", required=required, help="'shapes' (built-in, train split) or an image+.txt folder"
    )
    p.add_argument(
        "--num", type=positive_int, default=20000, help="images to take from --data shapes"
    )
    p.add_argument("--batch-size-encode", type=positive_int, default=64, help=argparse.SUPPRESS)


def run_encode(args: argparse.Namespace) -> int:
    from dalle.data import open_data
    from dalle.io import check_output_file
    from dalle.models.vae import DiscreteVAE
    from dalle.train import encode

    check_output_file(args.out, force=args.force)  # before minutes of encoding
    vae = DiscreteVAE.load(vae_dir(args.vae))
    data = open_data(args.data, args.num)
    tokens = encode(vae, data, args.batch_size_encode)
    if data.report():
        print(f"encode: {data.report()}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokens.save(args.out)
    print(f"wrote {len(tokens)} token rows ({tokens.grid}x{tokens.grid} codes) to {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    import torch

    from dalle.config import TRANSFORMER_PRESETS, preset
    from dalle.data import open_data
    from dalle.data.tokens import TokenSet
    from dalle.models.vae import DiscreteVAE
    from dalle.tokenizer import Tokenizer
    from dalle.train import TransformerTrainConfig, distributed, encode, train_transformer
    from dalle.train.transformer_trainer import check_recipe

    if (args.tokens is None) == (args.data is None):
        raise ValueError("give exactly one of --tokens FILE or --data shapes|DIR")
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "caption_dropout": args.caption_dropout,
        "colour_dropout": args.colour_dropout,
        "seed": args.seed,
        "accumulate": args.accumulate,
        "precision": args.precision,
        "ema": args.ema,
        # Sharded training updates its slices with AdamW (Muon needs whole matrices).
        "optimizer": args.optimizer or ("adamw" if args.shard else None),
    }
    train_cfg = with_overrides(TransformerTrainConfig(), overrides)  # checked before encoding
    if args.minutes is not None and args.resume:
        raise ValueError("--minutes re-plans the step count, so its run cannot --resume")
    model_cfg = preset(TRANSFORMER_PRESETS, args.preset, "transformer")
    if args.text_len is not None:
        model_cfg = dataclasses.replace(model_cfg, text_len=args.text_len)
    vae = DiscreteVAE.load(vae_dir(args.vae))
    check_recipe(train_cfg, vae)  # before encoding
    if args.tokens:
        tokens = TokenSet.load(args.tokens)
    else:
        tokens = encode(vae, open_data(args.data, args.num), args.batch_size_encode)
    tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = run_config(args, device)
    if args.minutes is not None:
        run = dataclasses.replace(run, seconds=60 * args.minutes)
    trained = train_transformer(tokens, vae, args.out, train_cfg, model_cfg, tokenizer, run)
    if distributed.is_main():
        print(json.dumps(trained.metrics))
    return 0
