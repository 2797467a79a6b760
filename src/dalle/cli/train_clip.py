"""``dalle train-clip``: a contrastive text-image model that reranks a pipeline's samples."""

from __future__ import annotations

import argparse
import json
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
    with_overrides,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-clip",
        help="train CLIP, the reranker of generated images",
        description="Train CLIP with the symmetric InfoNCE loss (every caption that describes an "
        "image counts as its positive). Writes RUN/model/ (tokenizer.json + clip/), "
        "RUN/metrics.jsonl and, for --data shapes, RUN/eval.json (retrieval accuracy). With "
        "--model DIR it uses that pipeline's tokenizer and adds clip/ to DIR when done.",
    )
    p.add_argument("--data", required=True, help="'shapes' (built-in, train split) or a folder")
    p.add_argument("--out", type=Path, required=True, help="run folder (empty unless --force)")
    p.add_argument(
        "--model", type=Path, help="pipeline folder: use its tokenizer and save clip/ into it"
    )
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: --model's or new)")
    p.add_argument("--preset", default="tiny", help="architecture preset: tiny or tiny-vit")
    p.add_argument(
        "--text-len",
        type=int_up_to(MAX_TEXT_LEN),
        help="caption tokens (default: --model's transformer's, else the preset's)",
    )
    p.add_argument("--steps", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    add_precision_arg(p)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--save-every", type=positive_int, default=500, help="steps between saves")
    add_checkpoint_args(p)
    p.add_argument("--force", action="store_true", help="write into a non-empty run folder")
    p.set_defaults(func=run)


def load_tokenizer(args: argparse.Namespace, data):
    """The tokenizer of ``--tokenizer``, else of ``--model``, else one trained on the captions."""
    from dalle.model_folder import TOKENIZER_FILE
    from dalle.tokenizer import Tokenizer
    from dalle.train import train_tokenizer

    if args.tokenizer is not None:
        return Tokenizer.load(args.tokenizer)
    if args.model is not None:
        return Tokenizer.load(args.model / TOKENIZER_FILE)
    return train_tokenizer(data)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from dalle.config import CLIP_PRESETS, preset
    from dalle.data import ShapesData, open_data
    from dalle.eval.retrieval import shapes_retrieval
    from dalle.io import write_json_atomic
    from dalle.model_folder import CLIP_DIR, check_compatible
    from dalle.pipeline import DallePipeline
    from dalle.train import CLIPTrainConfig, distributed, train_clip

    if args.model is not None and args.tokenizer is not None:
        raise ValueError("give --model (its tokenizer is used) or --tokenizer, not both")
    pipe = None  # its defaults may rerank by the CLIP this adds: they are not read
    if args.model is not None:
        pipe = DallePipeline.from_pretrained(args.model, read_defaults=False)
    model_cfg = preset(CLIP_PRESETS, args.preset, "CLIP")
    text_len = args.text_len or (pipe.transformer.cfg.text_len if pipe else model_cfg.text_len)
    model_cfg = dataclasses.replace(model_cfg, text_len=text_len)
    if pipe is not None and model_cfg.image_size != pipe.vae.cfg.image_size:
        raise ValueError(
            f"--preset {args.preset} reads {model_cfg.image_size} px images but {args.model} "
            f"draws {pipe.vae.cfg.image_size} px"
        )
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                 "precision": args.precision}  # fmt: skip
    train_cfg = with_overrides(CLIPTrainConfig(seed=args.seed), overrides)
    data = open_data(args.data, num=4000, seed=args.seed)  # shapes: 4 000 captions to learn
    tokenizer = load_tokenizer(args, data)
    trained = train_clip(data, tokenizer, args.out, train_cfg, model_cfg, run_config(args))
    if not distributed.is_main():
        return 0
    clip = trained.model
    report: dict = {"train": trained.metrics}
    if isinstance(data, ShapesData):
        report["retrieval"] = shapes_retrieval(clip, tokenizer)
        write_json_atomic(trained.run_dir / "eval.json", report["retrieval"])
    if pipe is not None:
        check_compatible(pipe.tokenizer, pipe.vae, pipe.transformer, clip)
        clip.save(args.model / CLIP_DIR)
        report["added_to"] = str(args.model / CLIP_DIR)
    print(json.dumps(report))
    return 0
