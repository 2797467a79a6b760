"""``dalle encode`` (images -> a token file, once) and ``dalle train`` (the transformer)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

from dalle.cli.common import (
    MAX_TEXT_LEN,
    add_checkpoint_args,
    int_up_to,
    positive_float,
    positive_int,
    prepare_run_dir,
    record_settings,
    seed_int,
    vae_dir,
    with_overrides,
)


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
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--lr", type=positive_float)
    t.add_argument("--caption-dropout", type=float, help="probability of training unconditioned")
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
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="fp32 (default), bf16 autocast, or fp16 autocast with a gradient scaler (CUDA)",
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


def open_images(data: str, image_size: int, num: int, seed: int = 0):
    """The dataset of ``--data``: ``num`` shapes samples, a whole folder, or one pass over
    tar shards."""
    from dalle.data.folder import ImageFolderDataset
    from dalle.data.shapes import CANVAS, ShapesDataset
    from dalle.data.shards import ShardDataset, is_shards

    if data == "shapes":
        if image_size != CANVAS:
            raise ValueError(f"--data shapes has {CANVAS} px images; the dVAE expects {image_size}")
        return ShapesDataset("train", num, seed)
    if is_shards(data):
        return ShardDataset(data, image_size, seed, epochs=1)
    return ImageFolderDataset(Path(data), image_size, seed=seed)


def image_batches(dataset, batch_size: int) -> Iterator:
    """``(images (B, C, H, W), captions)`` in order, each item of the dataset once; a folder's
    or shard's unreadable samples are left out."""
    import torch

    if isinstance(dataset, torch.utils.data.IterableDataset):
        stream = iter(dataset)
    else:
        get = getattr(dataset, "get", dataset.__getitem__)
        stream = (get(i) for i in range(len(dataset)))
    items: list[dict] = []
    for item in stream:
        if item is not None:
            items.append(item)
        if len(items) == batch_size:
            yield torch.stack([x["image"] for x in items]), [x["caption"] for x in items]
            items = []
    if items:
        yield torch.stack([x["image"] for x in items]), [x["caption"] for x in items]


def encode_data(vae, data: str, num: int, batch_size: int, seed: int = 0):
    """Encode a dataset with a progress bar; returns a :class:`dalle.data.tokens.TokenSet`.
    Unreadable files of a folder are skipped and reported on stderr."""
    import itertools
    import sys

    from tqdm import tqdm

    from dalle.data.tokens import encode_pairs

    dataset = open_images(data, vae.cfg.image_size, num, seed)
    batches = image_batches(dataset, batch_size)
    first = next(batches, None)
    if first is None:
        why = dataset.report() if getattr(dataset, "report", None) else ""
        raise ValueError(f"--data {data}: no image + caption pair could be read ({why or 'none'})")
    batches = itertools.chain([first], batches)
    tokens = encode_pairs(vae, tqdm(batches, desc="encode", unit="batch", dynamic_ncols=True))
    if getattr(dataset, "report", None) and dataset.report():
        print(f"encode: {dataset.report()}", file=sys.stderr)
    return tokens


def run_encode(args: argparse.Namespace) -> int:
    from dalle.io import check_output_file
    from dalle.models.vae import DiscreteVAE

    check_output_file(args.out, force=args.force)  # before minutes of encoding
    vae = DiscreteVAE.load(vae_dir(args.vae))
    tokens = encode_data(vae, args.data, args.num, args.batch_size_encode)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokens.save(args.out)
    print(f"wrote {len(tokens)} token rows ({tokens.grid}x{tokens.grid} codes) to {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    import torch

    from dalle.config import TRANSFORMER_PRESETS, preset
    from dalle.data.tokens import TokenSet
    from dalle.models.vae import DiscreteVAE
    from dalle.tokenizer import Tokenizer
    from dalle.train import distributed
    from dalle.train.checkpoint import CheckpointConfig
    from dalle.train.dalle import DalleTrainConfig
    from dalle.train.loop import OptimConfig

    if (args.tokens is None) == (args.data is None):
        raise ValueError("give exactly one of --tokens FILE or --data shapes|DIR")
    vae = DiscreteVAE.load(vae_dir(args.vae))
    tokens = (
        TokenSet.load(args.tokens)
        if args.tokens
        else encode_data(vae, args.data, args.num, args.batch_size_encode)
    )
    check_tokens(tokens, vae)  # before anything is written
    tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else None
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "caption_dropout": args.caption_dropout,
        "seed": args.seed,
        "accumulate": args.accumulate,
        "precision": args.precision,
        "ema": args.ema,
    }
    train_cfg = with_overrides(DalleTrainConfig(), overrides)
    OptimConfig.of(train_cfg)  # checks --ema and --precision before the run folder is made
    if train_cfg.batch_size > len(tokens):
        raise ValueError(
            f"--batch-size {train_cfg.batch_size} is more than the {len(tokens)} token rows"
        )
    if args.resume and not args.out.is_dir():
        raise ValueError(f"nothing to resume: run folder {args.out} does not exist")
    out = prepare_run_dir(args.out, force=args.force or args.resume)  # joins torchrun's group
    model_cfg = preset(TRANSFORMER_PRESETS, args.preset, "transformer")
    if args.text_len is not None:
        model_cfg = dataclasses.replace(model_cfg, text_len=args.text_len)
    checkpoint = CheckpointConfig(args.checkpoint_every, args.keep, args.checkpoint_minutes)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    report = fit_transformer(
        vae,
        tokens,
        tokenizer,
        model_cfg,
        train_cfg,
        out,
        args.save_every,
        checkpoint,
        args.resume,
        device,
    )
    if distributed.is_main():
        print(json.dumps(report))
    return 0


def fit_transformer(
    vae,
    tokens,
    tokenizer,
    model_cfg,
    train_cfg,
    out: Path,
    save_every: int,
    checkpoint=None,
    resume: bool = False,
    device: str = "cpu",
):
    """Tokenizer (trained if ``None``), transformer sized to it and the dVAE, trained on
    ``tokens``; saves ``out/model/`` and sample grids. Returns the last training metrics.
    ``checkpoint`` / ``resume``: see :func:`dalle.train.loop.train`; a resumed run must have
    the settings it was started with (``out/train_config.json``)."""
    import torch

    from dalle.config import to_dict
    from dalle.data.tokens import token_batches
    from dalle.images import contact_sheet, png_bytes
    from dalle.io import write_bytes_atomic
    from dalle.models.dalle import DALLE
    from dalle.pipeline import DallePipeline
    from dalle.tokenizer import Tokenizer
    from dalle.train.dalle import train_dalle
    from dalle.train.loop import Callback

    check_tokens(tokens, vae)
    if tokenizer is None:
        tokenizer = Tokenizer.train(tokens.captions, vocab_size=1024)
    model_cfg = sized_config(model_cfg, tokenizer, vae)
    settings = {"model": to_dict(model_cfg), "train": to_dict(train_cfg), "rows": len(tokens)}
    record_settings(out, settings, resume)
    text, _ = tokenizer.encode_batch(tokens.captions, model_cfg.text_len)
    torch.manual_seed(train_cfg.seed)
    model = DALLE(model_cfg).to(device)
    pipe = DallePipeline(tokenizer, vae.to(device), model)
    prompts = list(dict.fromkeys(tokens.captions[:64]))[:8]

    def save(step: int) -> None:
        pipe.save_pretrained(out / "model")
        images = pipe(prompts, num_images=2, seed=0).images
        sheet = contact_sheet(images, columns=4)
        write_bytes_atomic(out / f"samples_{step:06d}.png", png_bytes(sheet))

    batches = token_batches(text, tokens.codes, train_cfg.batch_size, train_cfg.seed)
    callbacks = [Callback(save_every, save)]
    return train_dalle(
        model, train_cfg, batches, out, callbacks, checkpoint=checkpoint, resume=resume
    )


def check_tokens(tokens, vae) -> None:
    """ValueError unless the token file's codes come from ``vae`` (fingerprint, grid, codebook)."""
    from dalle.models.folder import fingerprint

    if tokens.vae_id and tokens.vae_id != fingerprint(vae):
        raise ValueError(
            f"the token file was encoded by another dVAE (id {tokens.vae_id}, this one is "
            f"{fingerprint(vae)}): encode again with `dalle encode --vae` of this dVAE"
        )
    if tokens.grid != vae.cfg.grid_size or tokens.vocab_size != vae.cfg.vocab_size:
        raise ValueError(
            f"the token file holds {tokens.grid}x{tokens.grid} codes of {tokens.vocab_size} but "
            f"the dVAE makes {vae.cfg.grid_size}x{vae.cfg.grid_size} of {vae.cfg.vocab_size}"
        )


def sized_config(model_cfg, tokenizer, vae):
    """``model_cfg`` with the vocabularies and the code grid of ``tokenizer`` and ``vae``."""
    return dataclasses.replace(
        model_cfg,
        text_vocab=tokenizer.vocab_size,
        image_vocab=vae.cfg.vocab_size,
        image_grid=vae.cfg.grid_size,
        image_palette=vae.cfg.palette,
    )
