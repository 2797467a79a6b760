"""``dalle generate``: prompts -> PNG files, ``manifest.jsonl`` and a captioned ``grid.png``.

The output contract (benchmarks and users script against it): one PNG per image at the
model's native resolution, ``OUT/manifest.jsonl`` with one ``{"prompt", "file", "seed",
"index"}`` line per image (``file`` relative to OUT, ``index`` the image's number within its
prompt; with ``--rerank`` also ``"score"``, the CLIP similarity, and images best first), and
``OUT/grid.png`` with one captioned row per prompt.

With ``--image IMG`` each image completes the picture: its top ``--keep-rows`` rows of codes
are kept exactly and the rest is drawn under each prompt (no prompt, or an empty one: variations
of the picture). The manifest adds ``"image"`` and ``"keep_rows"`` to each line, and each row of
the grid starts with the source (the rows not kept shaded) and its dVAE reconstruction.

Sampling uses the model's defaults (``MODEL/generation.json``; plain sampling without it);
each flag given overrides one field, and ``off`` turns top-k, top-p or reranking off.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dalle.cli.common import positive_float, positive_int, seed_int

OFF = "off"  # a flag value that turns an optional setting off (None in SamplingConfig)
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "cond_scale", "rerank")


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
    return value


def rows_or_fraction(text: str) -> int | float:
    """``--keep-rows``: code rows (an integer), or a fraction of the height (with a point)."""
    expected = "an integer number of code rows >= 0 or a fraction in [0, 1] such as 0.5"
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def or_off(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argument type: ``off``, or a value ``parse`` accepts."""

    def parse_or_off(text: str) -> Any:
        return OFF if text.strip().lower() == OFF else parse(text)

    return parse_or_off


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate images from text prompts (or complete a picture) with a trained model",
        description="Sample images for each prompt. Writes OUT/NNNN_MM.png per image, "
        'OUT/manifest.jsonl ({"prompt", "file", "seed", "index"} per image) and OUT/grid.png. '
        "The sampling flags default to the model's settings in MODEL/generation.json (without "
        "that file: temperature 1, guidance 1, no top-k, top-p or reranking); each flag given "
        "overrides one of them, and 'off' turns top-k, top-p or reranking off. With --image, "
        "each image keeps the top rows of that picture and completes the rest under its prompt "
        "(no prompt: variations of the picture).",
    )
    p.add_argument("--model", type=Path, required=True, help="model folder (a run's model/)")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompts")
    p.add_argument("--prompts", dest="prompt_file", type=Path, metavar="FILE",
                   help="a file of prompts, one per line")  # fmt: skip
    p.add_argument(
        "--image",
        type=Path,
        metavar="IMG",
        help="a picture to complete (PNG, JPEG, WebP, ...), read as training images are: RGB "
        "(alpha dropped, 16-bit grey to 8 bits), the shorter side scaled to the model's size "
        "(bicubic), the centre square cropped; PROMPTs may then be empty or left out (variations)",
    )
    p.add_argument(
        "--keep-rows",
        type=rows_or_fraction,
        metavar="R",
        help="with --image: the code rows to keep from its top, an integer 0..grid side, or a "
        "fraction of the height with a decimal point (rounded to the nearest row, halves up; "
        "1.0 keeps all: the picture's dVAE reconstruction). Default 0.5, the top half",
    )
    p.add_argument("--num-images", type=positive_int, default=4, help="images per prompt")
    p.add_argument("--seed", type=seed_int, default=0)
    default = " (default: MODEL/generation.json)"
    p.add_argument("--temperature", type=positive_float, help="softmax temperature" + default)
    p.add_argument("--top-k", type=or_off(positive_int), metavar="K|off",
                   help="sample from the k likeliest codes" + default)  # fmt: skip
    p.add_argument("--top-p", type=or_off(probability), metavar="P|off",
                   help="nucleus sampling mass in (0, 1]" + default)  # fmt: skip
    p.add_argument("--cond-scale", type=float,
                   help="classifier-free guidance scale, 1 = off" + default)  # fmt: skip
    p.add_argument(
        "--rerank",
        type=or_off(positive_int),
        metavar="N|off",
        help="draw N candidates per image and keep the best by CLIP (needs MODEL/clip/)" + default,
    )
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument(
        "--compile",
        action="store_true",
        help="sample through torch.compile: a one-off compile (seconds to a minute, reported) "
        "for faster steps after it; pays off on many images, not on one. Without a working "
        "compiler: a warning and the usual path",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (empty unless --force)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The PROMPTs and the lines of ``--prompts``; with ``--image`` an empty prompt is allowed
    (a variation), and no prompt at all means one empty prompt."""
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
    if args.image is not None:
        return prompts or [""]
    if not prompts:
        raise ValueError("no prompts: give PROMPT arguments or --prompts FILE")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i + 1} is empty (only a completion of --image may be)")
    return prompts


def read_source(args: argparse.Namespace, pipe: Any) -> tuple[Any, int | None]:
    """The ``--image`` picture, read and checked, and the code rows it keeps (before anything
    is written)."""
    from dalle.images import load_image

    if args.image is None:
        if args.keep_rows is not None:
            raise ValueError("--keep-rows needs --image (a picture to keep the rows of)")
        return None, None
    if not args.image.is_file():
        what = "is a folder" if args.image.is_dir() else "does not exist"
        raise ValueError(f"--image {args.image} {what} (expected an image file)")
    try:
        keep = pipe.rows_kept(args.keep_rows)
    except ValueError as e:
        raise ValueError(f"--keep-rows: {e}") from None
    return load_image(args.image), keep


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling fields the command line gives (``off`` as ``None``); the rest stay the
    model's."""
    given = {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k) is not None}
    return {k: None if v == OFF else v for k, v in given.items()}


def run(args: argparse.Namespace) -> int:
    from dalle.io import prepare_output_dir
    from dalle.outputs import Source, write_generation
    from dalle.pipeline import DallePipeline

    prompts = read_prompts(args)
    if args.cond_scale is not None and not math.isfinite(args.cond_scale):
        raise ValueError(f"--cond-scale must be finite, got {args.cond_scale}")
    pipe = DallePipeline.from_pretrained(args.model, compile=args.compile)
    sampling = pipe.settings(**sampling_overrides(args))
    if sampling.rerank is not None and pipe.clip is None:
        raise ValueError(
            f"--rerank needs a CLIP model, but {args.model} has no clip/ "
            f"(add one with: dalle train-clip --model {args.model} ...)"
        )
    image, keep = read_source(args, pipe)
    out = prepare_output_dir(args.out, force=args.force)
    result = pipe(
        prompts,
        args.num_images,
        args.seed,
        sampling,
        image=image,
        keep_rows=keep,
        batch_size=args.batch_size,
    )
    source = None
    if image is not None:
        grid = pipe.vae.cfg.grid_size
        source = Source(str(args.image), keep, grid, result.source, result.reconstruction)
    write_generation(out, prompts, result.images, args.num_images, args.seed, result.scores, source)
    print(f"wrote {len(result.images)} images, manifest.jsonl and grid.png to {out}")
    if source is not None:
        print(f"kept the top {keep} of {source.grid} code rows of {args.image}")
    print(f"sampling: {sampling.describe()}")
    if args.compile:
        print(f"compile: {pipe.compile_s:.1f} s compiling the decode step (once per process)")
    return 0
