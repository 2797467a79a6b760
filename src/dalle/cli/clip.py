"""``dalle train-clip``: a contrastive text-image model that reranks a pipeline's samples."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from dalle.cli.common import (
    MAX_TEXT_LEN,
    add_checkpoint_args,
    data_captions,
    int_up_to,
    positive_float,
    positive_int,
    prepare_run_dir,
    record_settings,
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
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--save-every", type=positive_int, default=500, help="steps between saves")
    add_checkpoint_args(p)
    p.add_argument("--force", action="store_true", help="write into a non-empty run folder")
    p.set_defaults(func=run)


def clip_batches(data: str, image_size: int, batch_size: int, seed: int = 0) -> Iterator[dict]:
    """Endless training batches: shapes scenes (with their object lists), a folder's pairs or
    tar shards' samples."""
    import torch

    from dalle.data.batches import endless_batches
    from dalle.data.folder import ImageFolderDataset
    from dalle.data.shapes import CANVAS, ShapesStream, collate
    from dalle.data.shards import ShardDataset, is_shards

    if data == "shapes":
        if image_size != CANVAS:
            raise ValueError(f"--data shapes has {CANVAS} px images; CLIP expects {image_size}")
        return endless_batches(ShapesStream("train", seed=seed), batch_size, collate)
    if is_shards(data):
        dataset = ShardDataset(data, image_size, seed)
    else:
        dataset = ImageFolderDataset(Path(data), image_size, seed=seed)

    def pairs(items: list[dict]) -> dict:
        return {
            "image": torch.stack([x["image"] for x in items]),
            "caption": [x["caption"] for x in items],
        }

    return endless_batches(dataset, batch_size, pairs, seed)


def load_tokenizer(args: argparse.Namespace):
    """The tokenizer of ``--tokenizer``, else of ``--model``, else one trained on the captions."""
    from dalle.pipeline import TOKENIZER_FILE
    from dalle.tokenizer import Tokenizer

    if args.tokenizer is not None:
        return Tokenizer.load(args.tokenizer)
    if args.model is not None:
        return Tokenizer.load(args.model / TOKENIZER_FILE)
    return Tokenizer.train(data_captions(args.data, 4000, args.seed), vocab_size=1024)


def fit_clip(
    tokenizer,
    model_cfg,
    train_cfg,
    data: str,
    out: Path,
    save_every: int,
    progress: bool = True,
    checkpoint=None,
    resume: bool = False,
):
    """Train CLIP sized to ``tokenizer`` on ``data``; saves ``out/model/`` (tokenizer.json +
    clip/) every ``save_every`` steps and at the end. Returns ``(clip, last metrics)``.
    ``checkpoint`` / ``resume``: see :func:`dalle.train.loop.train` (exact for shapes; a
    folder's choice among several captions per image is not replayed)."""
    import dataclasses

    import torch

    from dalle.config import to_dict
    from dalle.models.clip import CLIP
    from dalle.pipeline import CLIP_DIR, TOKENIZER_FILE
    from dalle.train.clip import train_clip
    from dalle.train.loop import Callback

    model_cfg = dataclasses.replace(model_cfg, text_vocab=tokenizer.vocab_size)
    settings = {"model": to_dict(model_cfg), "train": to_dict(train_cfg), "data": data}
    record_settings(out, settings, resume)
    torch.manual_seed(train_cfg.seed)
    clip = CLIP(model_cfg)

    def save(step: int) -> None:
        tokenizer.save(out / "model" / TOKENIZER_FILE)
        clip.save(out / "model" / CLIP_DIR)

    batches = clip_batches(data, model_cfg.image_size, train_cfg.batch_size, train_cfg.seed)
    callbacks = [Callback(save_every, save)]
    last = train_clip(
        clip, tokenizer, train_cfg, batches, out, callbacks, progress, checkpoint, resume
    )
    return clip, last


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from dalle.config import CLIP_PRESETS, preset
    from dalle.eval.clip import shapes_retrieval
    from dalle.io import write_json_atomic
    from dalle.pipeline import CLIP_DIR, DallePipeline, check_compatible
    from dalle.train import distributed
    from dalle.train.checkpoint import CheckpointConfig
    from dalle.train.clip import CLIPTrainConfig

    if args.model is not None and args.tokenizer is not None:
        raise ValueError("give --model (its tokenizer is used) or --tokenizer, not both")
    pipe = DallePipeline.from_pretrained(args.model) if args.model is not None else None
    model_cfg = preset(CLIP_PRESETS, args.preset, "CLIP")
    text_len = args.text_len or (pipe.transformer.cfg.text_len if pipe else model_cfg.text_len)
    model_cfg = dataclasses.replace(model_cfg, text_len=text_len)
    if pipe is not None and model_cfg.image_size != pipe.vae.cfg.image_size:
        raise ValueError(
            f"--preset {args.preset} reads {model_cfg.image_size} px images but {args.model} "
            f"draws {pipe.vae.cfg.image_size} px"
        )
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
    train_cfg = with_overrides(CLIPTrainConfig(seed=args.seed), overrides)
    tokenizer = load_tokenizer(args)
    if args.resume and not args.out.is_dir():
        raise ValueError(f"nothing to resume: run folder {args.out} does not exist")
    out = prepare_run_dir(args.out, force=args.force or args.resume)  # joins torchrun's group
    checkpoint = CheckpointConfig(args.checkpoint_every, args.keep)
    clip, last = fit_clip(
        tokenizer,
        model_cfg,
        train_cfg,
        args.data,
        out,
        args.save_every,
        True,
        checkpoint,
        args.resume,
    )
    if not distributed.is_main():
        return 0
    report: dict = {"train": last}
    if args.data == "shapes":
        report["retrieval"] = shapes_retrieval(clip, tokenizer)
        write_json_atomic(out / "eval.json", report["retrieval"])
    if pipe is not None:
        check_compatible(pipe.tokenizer, pipe.vae, pipe.transformer, clip)
        clip.save(args.model / CLIP_DIR)
        report["added_to"] = str(args.model / CLIP_DIR)
    print(json.dumps(report))
    return 0
