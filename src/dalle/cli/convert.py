"""``dalle import-openai-dvae``: convert OpenAI's released dVAE pickles into a ``vae/`` folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from dalle.cli.common import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-openai-dvae",
        help="convert OpenAI's encoder.pkl / decoder.pkl into a dVAE folder",
        description="Read OpenAI's released dVAE (encoder.pkl, decoder.pkl of the dall-e package) "
        "without running code from the files, and write config.json + model.safetensors.",
    )
    p.add_argument("--encoder", type=Path, required=True, help="OpenAI's encoder.pkl")
    p.add_argument("--decoder", type=Path, required=True, help="OpenAI's decoder.pkl")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be empty)")
    p.add_argument("--image-size", type=positive_int, default=256, help="pixels (release: 256)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from dalle.models.openai_dvae import import_openai_dvae

    vae = import_openai_dvae(args.encoder, args.decoder, args.out, args.image_size, args.force)
    out = args.out
    cfg, n_params = vae.cfg, sum(p.numel() for p in vae.parameters())
    print(
        f"wrote {out}: {cfg.image_size} px -> {cfg.grid_size}x{cfg.grid_size} codes, "
        f"{cfg.vocab_size} codebook entries, {n_params:,} parameters"
    )
    return 0
