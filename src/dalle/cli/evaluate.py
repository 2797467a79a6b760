"""``dalle eval``: ``shapes`` scores the prompt fidelity of images; ``vae`` measures a dVAE;
``clip`` measures retrieval.

Each kind of evaluation is a sub-command of ``eval`` that prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dalle.cli.common import int_up_to, vae_dir

MAX_EVAL_IMAGES = 10_000  # all rendered and held at once (CLIP: a square similarity matrix)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate images or models", description="Evaluate.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True, parser_class=type(p))
    s = kinds.add_parser(
        "shapes",
        help="prompt fidelity of images of the captioned-shapes dataset (SHAPES.md)",
        description="Check each image against its prompt by reading its pixels and print "
        "one JSON object: the fraction of images that satisfy their prompt for seen prompts, "
        "prompts with a held-out colour-shape pair and overall, with counts.",
    )
    s.add_argument(
        "folder",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="folder of images, each with a same-stem .txt whose first line is its prompt",
    )
    s.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help='JSONL file of {"prompt": ..., "file": ...} lines, files relative to its folder',
    )
    s.set_defaults(func=run_shapes)
    v = kinds.add_parser(
        "vae",
        help="reconstruction PSNR, codebook usage and fidelity of a trained dVAE",
        description="Encode and decode held-out images and print one JSON object: psnr (dB), "
        "codebook_usage (fraction of codes used), perplexity, and for --data shapes the "
        "shapes checker's fidelity of the reconstructions against the original captions "
        "(half unseen train-split scenes, half holdout scenes).",
    )
    v.add_argument(
        "--model", type=Path, required=True, help="run folder of train-vae, or its model/"
    )
    v.add_argument("--data", default="shapes", help="'shapes' or an image+.txt folder")
    v.add_argument("--num", type=int_up_to(MAX_EVAL_IMAGES), default=256, help="number of images")
    v.set_defaults(func=run_vae)
    c = kinds.add_parser(
        "clip",
        help="text-to-image and image-to-text retrieval of a trained CLIP",
        description="Retrieve among 256 held-out shapes images and their captions (half unseen "
        "train-split scenes, half holdout scenes) and print one JSON object: top-1 accuracy "
        "of text -> image and image -> text, for seen and held-out pairs separately. A pick is "
        "right when the caption describes the image.",
    )
    c.add_argument(
        "--model", type=Path, required=True, help="train-clip run, its model/ or a pipeline folder"
    )
    c.add_argument("--num", type=int_up_to(MAX_EVAL_IMAGES), default=256, help="pool size (>= 2)")
    c.set_defaults(func=run_clip)


def run_shapes(args: argparse.Namespace) -> int:
    from dalle.eval.shapes_fidelity import fidelity, open_pairs, read_folder, read_manifest

    if (args.folder is None) == (args.manifest is None):
        raise ValueError("give exactly one of DIR or --manifest FILE")
    items = read_folder(args.folder) if args.folder else read_manifest(args.manifest)
    print(json.dumps(fidelity(open_pairs(items))))
    return 0


def run_vae(args: argparse.Namespace) -> int:
    from dalle.data import open_data
    from dalle.eval import fidelity_judge
    from dalle.eval.reconstruction import evaluate_vae
    from dalle.models.vae import DiscreteVAE

    vae = DiscreteVAE.load(vae_dir(args.model))
    data = open_data(args.data)
    images, captions = data.eval_images(args.num, vae.cfg.image_size)
    print(json.dumps(evaluate_vae(vae, images, captions, fidelity_judge(data))))
    return 0


def clip_dir(path: Path) -> Path:
    """The folder holding ``tokenizer.json`` and ``clip/``: ``path`` itself or its ``model/``."""
    from dalle.model_folder import CLIP_DIR, TOKENIZER_FILE

    for candidate in (path, path / "model"):
        has_clip = (candidate / CLIP_DIR / "config.json").is_file()
        if has_clip and (candidate / TOKENIZER_FILE).is_file():
            return candidate
    raise ValueError(
        f"{path}: no CLIP here (expected {TOKENIZER_FILE} and {CLIP_DIR}/ in it or in its model/)"
    )


def run_clip(args: argparse.Namespace) -> int:
    from dalle.eval.retrieval import shapes_retrieval
    from dalle.model_folder import CLIP_DIR, TOKENIZER_FILE
    from dalle.models.clip import CLIP
    from dalle.tokenizer import Tokenizer

    folder = clip_dir(args.model)
    clip = CLIP.load(folder / CLIP_DIR)
    tokenizer = Tokenizer.load(folder / TOKENIZER_FILE)
    if tokenizer.vocab_size != clip.cfg.text_vocab:
        raise ValueError(
            f"{folder}: tokenizer.json has {tokenizer.vocab_size} ids, clip/ expects {clip.cfg.text_vocab}"
        )
    if args.num < 2:
        raise ValueError(f"--num must be >= 2, got {args.num}")
    print(json.dumps(shapes_retrieval(clip, tokenizer, args.num)))
    return 0
