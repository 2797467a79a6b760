"""``dalle generate``: prompts -> PNG files, ``manifest.jsonl`` and a captioned ``grid.png``.

The output contract (benchmarks and users script against it): one PNG per image at the
model's native resolution, ``OUT/manifest.jsonl`` with one ``{"prompt", "file", "seed",
"index"}`` line per image (``file`` relative to OUT, ``index`` the image's number within its
prompt; with ``--rerank`` also ``"score"``, the CLIP similarity, and images best first), and
``OUT/grid.png`` with one captioned row per prompt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dalle.cli.common import positive_float, positive_int, seed_int


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate images from text prompts with a trained model",
        description="Sample images for each prompt. Writes OUT/NNNN_MM.png per image, "
        'OUT/manifest.jsonl ({"prompt", "file", "seed", "index"} per image) and OUT/grid.png.',
    )
    p.add_argument("--model", type=Path, required=True, help="model folder (a run's model/)")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompts")
    p.add_argument("--prompts", dest="prompt_file", type=Path, metavar="FILE",
                   help="a file of prompts, one per line")  # fmt: skip
    p.add_argument("--num-images", type=positive_int, default=4, help="images per prompt")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--temperature", type=positive_float, default=1.0)
    p.add_argument("--top-k", type=positive_int, help="sample from the k likeliest codes")
    p.add_argument("--top-p", type=probability, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--cond-scale", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument(
        "--rerank",
        type=positive_int,
        metavar="N",
        help="draw N candidates per image and keep the best by CLIP (needs MODEL/clip/)",
    )
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", type=Path, required=True, help="output folder (empty unless --force)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompts)
    if args.prompt_file is not None:
        if not args.prompt_file.is_file():
            what = "is a folder" if args.prompt_file.is_dir() else "does not exist"
            raise ValueError(f"prompt file {args.prompt_file} {what} (expected a text file)")
        try:
            lines = args.prompt_file.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(
                f"prompt file {args.prompt_file} is not UTF-8 text (byte {e.start})"
            ) from None
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError("no prompts: give PROMPT arguments or --prompts FILE")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i + 1} is empty")
    return prompts


def run(args: argparse.Namespace) -> int:
    import math

    from dalle.io import prepare_output_dir
    from dalle.outputs import write_generation
    from dalle.pipeline import DallePipeline

    prompts = read_prompts(args)
    if not math.isfinite(args.cond_scale):
        raise ValueError(f"--cond-scale must be finite, got {args.cond_scale}")
    pipe = DallePipeline.from_pretrained(args.model)
    if args.rerank is not None and pipe.clip is None:
        raise ValueError(
            f"--rerank needs a CLIP model, but {args.model} has no clip/ "
            f"(add one with: dalle train-clip --model {args.model} ...)"
        )
    out = prepare_output_dir(args.out, force=args.force)
    result = pipe(
        prompts,
        num_images=args.num_images,
        seed=args.seed,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        cond_scale=args.cond_scale,
        batch_size=args.batch_size,
        rerank=args.rerank,
    )
    write_generation(out, prompts, result.images, args.num_images, args.seed, result.scores)
    print(f"wrote {len(result.images)} images, manifest.jsonl and grid.png to {out}")
    return 0
