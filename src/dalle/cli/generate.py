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
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from dalle.cli.common import positive_int, seed_int

OFF = "off"  # a flag value that turns an optional setting off (None in the Sampler)


def rows_or_fraction(text: str) -> int | float:
    """``--keep-rows``: code rows (an integer), or a fraction of the height (with a point); the
    pipeline checks the range."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        expected = "an integer number of code rows or a fraction such as 0.5"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def setting_value(kind: str, optional: bool) -> Callable[[str], Any]:
    """An argument type for a sampler setting of ``kind``: a number (an integer for counts), or
    ``off`` for an optional one. Its range is the Sampler's to check (once, when built)."""
    wanted = ("an integer" if kind == "count" else "a number") + (" or off" if optional else "")

    def parse(text: str) -> Any:
        if optional and text.strip().lower() == OFF:
            return OFF
        try:
            return int(text) if kind == "count" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None

    parse.__name__ = kind  # argparse names the type in its errors
    return parse


def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`~dalle.sampler_settings.SamplerSettings` field (``top_k`` -> ``--top-k``), each
    overriding the model's default when given."""
    from dalle.sampler_settings import SamplerSettings

    for f in fields(SamplerSettings):
        optional = f.default is None
        metavar = ("N" if f.metadata["kind"] == "count" else "X") + ("|off" if optional else "")
        off = "; off turns it off" if optional else ""
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=setting_value(f.metadata["kind"], optional),
            metavar=metavar,
            help=f"{f.metadata['help']}{off} (default: MODEL/generation.json)",
        )


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
    add_sampler_flags(p)
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


def flag_error(e: Any) -> ValueError:
    """A :class:`~dalle.sampler_settings.SettingError` in the command line's words: the flag, not the
    field (``--top-k must be an integer >= 1, got 0``)."""
    return ValueError(f"--{e.name.replace('_', '-')} {e.reason}")


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
    from dalle.sampler_settings import SettingError

    try:
        keep = pipe.rows_kept(args.keep_rows, args.image is not None)
    except SettingError as e:
        raise flag_error(e) from None
    if args.image is None:
        return None, None
    if not args.image.is_file():
        what = "is a folder" if args.image.is_dir() else "does not exist"
        raise ValueError(f"--image {args.image} {what} (expected an image file)")
    return load_image(args.image), keep


def sampler_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler settings the command line gives (``off`` as ``None``); the rest stay the
    model's."""
    from dalle.sampler_settings import SamplerSettings

    given = {f.name: getattr(args, f.name) for f in fields(SamplerSettings)}
    return {k: None if v == OFF else v for k, v in given.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    from dalle.io import prepare_output_dir
    from dalle.outputs import Source, write_generation
    from dalle.pipeline import DallePipeline
    from dalle.sampler_settings import SettingError

    prompts = read_prompts(args)
    pipe = DallePipeline.from_pretrained(args.model, compile=args.compile)
    try:
        sampler = pipe.sampler_for(**sampler_overrides(args))
    except SettingError as e:
        raise flag_error(e) from None
    image, keep = read_source(args, pipe)
    out = prepare_output_dir(args.out, force=args.force)
    result = pipe(
        prompts,
        args.num_images,
        args.seed,
        sampler,
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
    print(f"sampling: {sampler.describe()}")
    if args.compile:
        print(f"compile: {pipe.compile_s:.1f} s compiling the decode step (once per process)")
    return 0
