"""A battery of bad inputs to every command and to the Python API.

Each CLI case runs ``dalle`` in-process and must exit with status 2 and one error line that
names the input and says what was expected, print no traceback, and leave no output that looks
complete (nothing new but a run's ``train_config.json``; no file changed, shared inputs
included). Each API case must raise ``ValueError`` with such a line. A few odd inputs that are
valid (a 10 000-character prompt, undecodable bytes in a prompt, grey, CMYK, alpha and 16-bit
images) must work. ``--debug`` shows the traceback the battery's cases never print.

The read-only output cases need a folder that even root cannot write: ``chmod`` for other
users, ``chattr +i`` (an immutable folder) for root; they skip where neither is possible.
Paths that are a file, or lie under a file, are tested everywhere.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from bad_images import BAD_IMAGES, GREY16, ODD_IMAGES
from dalle.cli import main
from dalle.data.image_folder import ImageFolderDataset
from dalle.data.tokens import TokenSet, encode_pairs
from dalle.images import load_image
from dalle.models.saving import WEIGHTS_FILE
from dalle.models.vae import DiscreteVAE
from dalle.pipeline import DallePipeline
from dalle.tokenizer import Tokenizer

Setup = Callable[[Path, Path], None]  # (shared inputs, the case's scratch folder)


@dataclass(frozen=True)
class Case:
    """A command line (``{name}`` placeholders for paths, see ``world``), the regex its error
    line must match (same placeholders, escaped) and what to prepare first."""

    argv: str
    error: str
    setup: Setup | None = None


def _folder(root: Path, images: dict[str, bytes], caption: bytes = b"a red circle\n") -> None:
    root.mkdir(parents=True)
    for name, data in images.items():
        (root / name).write_bytes(data)
        (root / name).with_suffix(".txt").write_bytes(caption)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Shared, read-only inputs: a tiny pipeline folder (random weights), its dVAE's token file,
    a token file of another dVAE, a run with metrics, folders of bad and of odd images."""
    from dalle.config import VAEConfig
    from dalle.data.shapes import ShapesDataset
    from serve_fixtures import tiny_parts

    root = tmp_path_factory.mktemp("world")
    tok, vae, transformer = tiny_parts()
    DallePipeline(tok, vae, transformer).save_pretrained(root / "model")
    shapes = ShapesDataset("train", 16, 0)
    images = torch.stack([shapes[i]["image"] for i in range(16)])
    captions = [shapes[i]["caption"] for i in range(16)]
    encode_pairs(vae, [(images, captions)]).save(root / "tokens.safetensors")
    torch.manual_seed(1)
    other = DiscreteVAE(VAEConfig(downsample=8, vocab_size=32, n_hid=8, n_init=8))
    encode_pairs(other, [(images, captions)]).save(root / "other-tokens.safetensors")
    (root / "run").mkdir()
    (root / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "lr": 0.001}\n')
    (root / "afile").write_text("a file, not a folder\n")
    _folder(root / "bad-images", BAD_IMAGES)
    _folder(root / "odd-images", ODD_IMAGES)
    for name, data in BAD_IMAGES.items():
        _folder(root / f"eval-{name.replace('.', '-')}", {name: data})
    return {
        "root": root,
        "model": root / "model",
        "vae": root / "model" / "vae",
        "tokens": root / "tokens.safetensors",
        "other_tokens": root / "other-tokens.safetensors",
        "run": root / "run",
        "afile": root / "afile",
        "bad_images": root / "bad-images",
        "odd_images": root / "odd-images",
    }


def _copy_model(world: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(world / "model", tmp / "model"))


def model_edit(edit: Callable[[Path], object]) -> Setup:
    """A copy of the shared model folder in the scratch folder, changed by ``edit``."""

    def setup(world: Path, tmp: Path) -> None:
        edit(_copy_model(world, tmp))

    return setup


def config_edit(part: str, change: Callable[[dict], object]) -> Setup:
    """A model copy whose ``part/config.json`` is the saved dict after ``change``."""

    def edit(model: Path) -> None:
        path = model / part / "config.json"
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))

    return model_edit(edit)


def header_edit(change: Callable[[dict], object]) -> Setup:
    """A model copy whose ``transformer/model.safetensors`` header is changed, data kept."""

    def edit(model: Path) -> None:
        path = model / "transformer" / WEIGHTS_FILE
        data = path.read_bytes()
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
        change(header)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size :])

    return model_edit(edit)


def _first(header: dict, ndim: int | None = None) -> str:
    return next(
        k for k, v in header.items() if k != "__metadata__" and ndim in (None, len(v["shape"]))
    )


def _rename(header: dict) -> None:
    header["renamed"] = header.pop(_first(header))


def _transpose(header: dict) -> None:
    header[_first(header, 2)]["shape"].reverse()


def _retype(header: dict) -> None:
    header[_first(header)]["dtype"] = "I32"  # same bytes, read as integers


def _overrun(header: dict) -> None:
    header[_first(header)]["data_offsets"][1] += 10**9


def write(relative: str, data: bytes) -> Setup:
    """``tmp/relative`` holding ``data``."""

    def setup(world: Path, tmp: Path) -> None:
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp / relative).write_bytes(data)

    return setup


def caption_folder(caption: bytes) -> Setup:
    """``tmp/data``: one good image whose caption file holds ``caption``."""
    return lambda world, tmp: _folder(tmp / "data", {"a.png": ODD_IMAGES["grey.png"]}, caption)


def _symlink_loop(world: Path, tmp: Path) -> None:
    (tmp / "loop").symlink_to(tmp / "loop")


def _truncate_weights(keep: int) -> Setup:
    def edit(model: Path) -> None:
        path = model / "transformer" / WEIGHTS_FILE
        path.write_bytes(path.read_bytes()[:keep])

    return model_edit(edit)


def _vae_is_a_file(model: Path) -> None:
    shutil.rmtree(model / "vae")
    (model / "vae").write_text("not a folder\n")


def _swap_tokenizer(model: Path) -> None:
    Tokenizer.train(["a red circle", "a blue square"] * 20, 300).save(model / "tokenizer.json")


def _truncate_tokens(world: Path, tmp: Path) -> None:
    (tmp / "t.safetensors").write_bytes((world / "tokens.safetensors").read_bytes()[:200])


def _eval_shapes_case(name: str) -> Case:
    """``dalle eval shapes`` on a folder holding only the bad image ``name``."""
    folder = "{root}/eval-" + name.replace(".", "-")
    why = r"image of 9000x9000 pixels exceeds" if name == "huge.png" else NOT_IMAGE
    return Case(f"eval shapes {folder}", f"{folder}/{re.escape(name)}: {why}")


GEN = "generate --model {model} 'a red circle' --num-images 1 --out {tmp}/out"
TRAIN = "train --vae {vae} --tokens {tokens} --out {tmp}/run --steps 1 --batch-size 4"
ENCODE = "encode --vae {vae} --data {odd_images} --out {tmp}/t.safetensors"
TOK = "tokenizer train --data {tmp}/data --vocab-size 300 --out {tmp}/tok.json"
COPY = "generate --model {tmp}/model 'a red circle' --num-images 1 --out {tmp}/out"
WEIGHTS = r"{tmp}/model/transformer/model\.safetensors"
T_CONFIG = r"{tmp}/model/transformer/config\.json"
UNREADABLE = r"not a readable safetensors file \(Error while deserializing header"
NOT_IMAGE = r"not a readable image \("

CASES: dict[str, Case] = {
    # paths that are missing, unreadable or of the wrong type
    "generate: --model missing": Case(
        "generate --model {tmp}/nope 'a red circle' --out {tmp}/out",
        r"model folder {tmp}/nope does not exist \(expected a folder\)",
    ),
    "generate: --model is a file": Case(
        "generate --model {afile} 'a red circle' --out {tmp}/out",
        r"model folder {afile} is a file \(expected a folder\)",
    ),
    "generate: --model is a symlink loop": Case(
        "generate --model {tmp}/loop 'a red circle' --out {tmp}/out",
        r"model folder {tmp}/loop does not exist",
        _symlink_loop,
    ),
    "generate: --prompts is a folder": Case(
        "generate --model {model} --prompts {model} --out {tmp}/out",
        r"prompt file {model} is a folder \(expected a text file\)",
    ),
    "train: --vae missing": Case(
        "train --vae {tmp}/nope --tokens {tokens} --out {tmp}/run",
        r"{tmp}/nope: no dVAE here \(expected config\.json in it",
    ),
    "train: --tokens missing": Case(
        "train --vae {vae} --tokens {tmp}/nope --out {tmp}/run",
        r"token file {tmp}/nope does not exist \(expected a file from `dalle encode`\)",
    ),
    "train: --tokens is a folder": Case(
        "train --vae {vae} --tokens {model} --out {tmp}/run",
        r"token file {model} is a folder \(expected a file from `dalle encode`\)",
    ),
    "tokenizer encode: --tokenizer is a folder": Case(
        "tokenizer encode --tokenizer {model} 'a red circle'",
        r"tokenizer file {model} is a folder \(expected a tokenizer JSON file\)",
    ),
    "import-openai-dvae: --encoder is a folder": Case(
        "import-openai-dvae --encoder {model} --decoder {model} --out {tmp}/out",
        r"{model} is a folder, not a file",
    ),
    "eval shapes: DIR is a file": Case("eval shapes {afile}", r"{afile} is not a folder"),
    "plot: metrics.jsonl is not UTF-8": Case(
        "plot {tmp}/r",
        r"{tmp}/r/metrics\.jsonl is not UTF-8 text \(byte 0\); expected JSON lines",
        write("r/metrics.jsonl", b"\xff\xfe{}\n"),
    ),
    # negative, zero and absurd numbers
    "generate: --num-images 0": Case(
        GEN + " --num-images 0", r"argument --num-images: expected a positive integer, got 0"
    ),
    "generate: --num-images -3": Case(
        GEN + " --num-images -3", r"argument --num-images: expected a positive integer, got -3"
    ),
    "generate: --num-images 10^12": Case(
        GEN + " --num-images 1000000000000",
        r"1 prompts x 1000000000000 images .* expected at most 65536 per call",
    ),
    "generate: --seed -1": Case(
        GEN + " --seed -1", r"argument --seed: expected a seed in 0\.\.4294967295, got -1"
    ),
    "generate: --seed 10^30": Case(
        GEN + " --seed " + "1" + "0" * 30, r"argument --seed: expected a seed in 0\.\.4294967295"
    ),
    "generate: --temperature 0": Case(
        GEN + " --temperature 0", r"--temperature must be a finite number > 0, got 0\.0"
    ),
    "generate: --temperature nan": Case(
        GEN + " --temperature nan", r"--temperature must be a finite number > 0, got nan"
    ),
    "generate: --top-k 0": Case(
        GEN + " --top-k 0", r"--top-k must be an integer >= 1, got 0"
    ),
    "generate: --top-p 1.5": Case(
        GEN + " --top-p 1.5", r"--top-p must be in \(0, 1\], got 1\.5"
    ),
    "generate: --cond-scale inf": Case(
        GEN + " --cond-scale inf", r"--cond-scale must be finite, got inf"
    ),
    "generate: --cond-scale 1e308": Case(
        GEN + " --cond-scale 1e308", r"expected finite logits .*is cond_scale too large\?"
    ),
    "generate: --rerank 0": Case(
        GEN + " --rerank 0", r"--rerank must be an integer >= 1, got 0"
    ),
    "train: --steps 0": Case(
        TRAIN + " --steps 0", r"argument --steps: expected a positive integer, got 0"
    ),
    "train: --batch-size 10^9": Case(
        TRAIN + " --batch-size 1000000000",
        r"--batch-size 1000000000 is more than the 16 token rows",
    ),
    "train: --text-len 10^9": Case(
        TRAIN + " --text-len 1000000000",
        r"argument --text-len: expected an integer in 1\.\.4096, got 1000000000",
    ),
    "train: --ema 1.5": Case(TRAIN + " --ema 1.5", r"ema decay must be in \(0, 1\), got 1\.5"),
    "train: --caption-dropout 1": Case(
        TRAIN + " --caption-dropout 1", r"caption_dropout must be in \[0, 1\), got 1\.0"
    ),
    "train: --colour-dropout 1": Case(
        TRAIN + " --colour-dropout 1", r"colour_dropout must be in \[0, 1\), got 1\.0"
    ),
    "train: --colour-dropout, flat codebook": Case(
        TRAIN + " --colour-dropout 0.5", r"--colour-dropout needs a dVAE with a product codebook"
    ),
    "train: --lr -1": Case(TRAIN + " --lr -1", r"argument --lr: expected a positive finite number"),
    "train-vae: --warm-start 2": Case(
        "train-vae --data shapes --out {tmp}/run --warm-start 2",
        r"warm_start must be in \[0, 1\], got 2\.0",
    ),
    "train-vae: --kl-weight nan": Case(
        "train-vae --data shapes --out {tmp}/run --kl-weight nan",
        r"kl_weight must be >= 0, got nan",
    ),
    "train-clip: --text-len 10^9": Case(
        "train-clip --data shapes --out {tmp}/run --text-len 1000000000",
        r"argument --text-len: expected an integer in 1\.\.4096",
    ),
    "tokenizer train: --vocab-size 10^12": Case(
        "tokenizer train --data shapes --vocab-size 1000000000000 --out {tmp}/tok.json",
        r"--vocab-size must be in 257\.\.1048576, got 1000000000000",
    ),
    "tokenizer train: --vocab-size 10": Case(
        "tokenizer train --data shapes --vocab-size 10 --out {tmp}/tok.json",
        r"--vocab-size must be in 257\.\.1048576, got 10",
    ),
    "eval vae: --num 10^11": Case(
        "eval vae --model {vae} --num 100000000000",
        r"argument --num: expected an integer in 1\.\.10000",
    ),
    "serve: --port 70000": Case(
        "serve --model {model} --port 70000",
        r"argument --port: expected a port in 0\.\.65535, got 70000",
    ),
    "demo: --minutes 0": Case(
        "demo --out {tmp}/demo --minutes 0",
        r"argument --minutes: expected a positive finite number, got 0",
    ),
    "data shapes: --num -5": Case(
        "data shapes --out {tmp}/out --num -5", r"argument --num: expected a positive integer"
    ),
    # empty, whitespace-only and non-UTF-8 prompts and captions
    "generate: empty prompt": Case(
        "generate --model {model} '' --out {tmp}/out", r"prompt 1 is empty"
    ),
    "generate: whitespace prompt": Case(
        "generate --model {model} 'a red circle' ' \t ' --out {tmp}/out", r"prompt 2 is empty"
    ),
    "generate: --prompts of blank lines": Case(
        "generate --model {model} --prompts {tmp}/p.txt --out {tmp}/out",
        r"no prompts: give PROMPT arguments or --prompts FILE",
        write("p.txt", b"\n  \n\t\n"),
    ),
    "generate: --prompts not UTF-8": Case(
        "generate --model {model} --prompts {tmp}/p.txt --out {tmp}/out",
        r"prompt file {tmp}/p\.txt is not UTF-8 text \(byte 0\)",
        write("p.txt", b"\xff\xfe a red circle\n"),
    ),
    # image completion: the picture and the rows to keep (the model has 4 code rows)
    **{
        f"generate: --image {name}": Case(
            f"generate --model {{model}} --image {{bad_images}}/{name} --out {{tmp}}/out",
            "{bad_images}/" + re.escape(name) + ": ",
        )
        for name in BAD_IMAGES
    },
    "generate: --image missing": Case(
        "generate --model {model} --image {tmp}/nope.png --out {tmp}/out",
        r"--image {tmp}/nope\.png does not exist \(expected an image file\)",
    ),
    "generate: --image a folder": Case(
        "generate --model {model} --image {model} 'a red circle' --out {tmp}/out",
        r"--image {model} is a folder",
    ),
    "generate: --keep-rows 5 of 4": Case(
        "generate --model {model} --image {odd_images}/rgba.png --keep-rows 5 --out {tmp}/out",
        r"--keep-rows must be 0\.\.4 code rows \(an int\) or a fraction",
    ),
    "generate: --keep-rows -1": Case(
        "generate --model {model} --image {odd_images}/rgba.png --keep-rows -1 --out {tmp}/out",
        r"--keep-rows must be 0\.\.4 code rows .*, got -1$",
    ),
    "generate: --keep-rows 1.5": Case(
        "generate --model {model} --image {odd_images}/rgba.png --keep-rows 1.5 --out {tmp}/out",
        r"--keep-rows must be .* a fraction of the image height in \[0, 1\] \(a float\), got 1\.5",
    ),
    "generate: --keep-rows nan": Case(
        "generate --model {model} --image {odd_images}/rgba.png --keep-rows nan --out {tmp}/out",
        r"--keep-rows must be .*, got nan",
    ),
    "generate: --keep-rows half": Case(
        "generate --model {model} --image {odd_images}/rgba.png --keep-rows half --out {tmp}/out",
        r"argument --keep-rows: expected .*, got 'half'",
    ),
    "generate: --keep-rows without --image": Case(
        "generate --model {model} 'a red circle' --keep-rows 2 --out {tmp}/out",
        r"--keep-rows needs an image to keep the rows of, got 2",
    ),
    "tokenizer encode: whitespace TEXT": Case(
        "tokenizer encode --tokenizer {model}/tokenizer.json 'a red circle' '  '",
        r"TEXT 2 is empty \(expected a caption\)",
    ),
    "tokenizer train: caption not UTF-8": Case(
        TOK, r"{tmp}/data/a\.txt is not UTF-8 text \(byte 0\)", caption_folder(b"\xffred\n")
    ),
    "tokenizer train: whitespace captions": Case(
        TOK, r"no captions found in \.txt files under {tmp}/data", caption_folder(b" \n\t\n")
    ),
    "encode: every caption blank": Case(
        "encode --vae {vae} --data {tmp}/data --out {tmp}/t.safetensors",
        r"--data {tmp}/data: no image \+ caption pair could be read .*caption file is empty",
        caption_folder(b"  \n"),
    ),
    "eval shapes: caption not UTF-8": Case(
        "eval shapes {tmp}/data",
        r"{tmp}/data/a\.txt: cannot parse prompt",
        caption_folder(b"\xff\xfe\n"),
    ),
    # corrupt, truncated, zero-byte and decompression-bomb images
    **{f"eval shapes: {name}": _eval_shapes_case(name) for name in BAD_IMAGES},
    "encode: every image unreadable": Case(
        "encode --vae {vae} --data {bad_images} --out {tmp}/t.safetensors",
        r"--data {bad_images}: no image \+ caption pair could be read \(skipped 6 unreadable",
    ),
    "train-vae: every image unreadable": Case(
        "train-vae --data {bad_images} --out {tmp}/run --steps 1 --batch-size 2",
        r"none of the 6 image \+ caption pairs under {bad_images} can be read",
    ),
    # truncated or tampered weights, bad configs, a model folder missing a component
    "generate: zero-byte weights": Case(COPY, WEIGHTS + ": " + UNREADABLE, _truncate_weights(0)),
    "generate: truncated weights": Case(COPY, WEIGHTS + ": " + UNREADABLE, _truncate_weights(1000)),
    "generate: weights renamed": Case(
        COPY,
        WEIGHTS + r": weights do not match the config: missing \[.*\], unexpected \['renamed'\]",
        header_edit(_rename),
    ),
    "generate: weights reshaped": Case(
        COPY, WEIGHTS + r": \S+ has shape \(\d+, \d+\), config expects", header_edit(_transpose)
    ),
    "generate: weights retyped": Case(
        COPY,
        WEIGHTS + r": \S+ is torch\.int32, the model expects torch\.float32",
        header_edit(_retype),
    ),
    "generate: weights overrun the file": Case(
        COPY, WEIGHTS + ": " + UNREADABLE, header_edit(_overrun)
    ),
    "generate: config unknown field": Case(
        COPY,
        T_CONFIG + r": unknown field\(s\) \['colour'\] for TransformerConfig",
        config_edit("transformer", lambda c: c.update(colour="red")),
    ),
    "generate: config missing field": Case(
        COPY,
        T_CONFIG + r": missing field\(s\) \['dim'\] for TransformerConfig",
        config_edit("transformer", lambda c: c.pop("dim")),
    ),
    "generate: config float dim": Case(
        COPY,
        T_CONFIG + r": field 'dim' must be int, got 32\.0",
        config_edit("transformer", lambda c: c.update(dim=float(c["dim"]))),
    ),
    "generate: config absurd dim": Case(
        COPY,
        T_CONFIG + r": cannot build the model it describes \(.*allocate",
        config_edit("transformer", lambda c: c.update(dim=2**40, heads=1)),
    ),
    "generate: config string field": Case(
        COPY,
        r"{tmp}/model/vae/config\.json: field 'palette' must be int, got '8'",
        config_edit("vae", lambda c: c.update(palette="8")),
    ),
    "generate: config not JSON": Case(
        COPY,
        T_CONFIG + r": not valid JSON",
        model_edit(lambda m: (m / "transformer" / "config.json").write_bytes(b"\xff{")),
    ),
    "generate: config a JSON list": Case(
        COPY,
        T_CONFIG + r": expected a JSON object, got list",
        model_edit(lambda m: (m / "transformer" / "config.json").write_text("[1, 2]")),
    ),
    "generate: no transformer/": Case(
        COPY,
        r"{tmp}/model is not a dalle model folder: missing transformer",
        model_edit(lambda m: shutil.rmtree(m / "transformer")),
    ),
    "generate: no tokenizer.json": Case(
        COPY,
        r"{tmp}/model is not a dalle model folder: missing tokenizer\.json",
        model_edit(lambda m: (m / "tokenizer.json").unlink()),
    ),
    "generate: vae/ is a file": Case(
        COPY,
        r"model folder {tmp}/model/vae is a file \(expected a folder\)",
        model_edit(_vae_is_a_file),
    ),
    "generate: empty clip/": Case(
        COPY,
        r"missing config file {tmp}/model/clip/config\.json",
        model_edit(lambda m: (m / "clip").mkdir()),
    ),
    "generate: tokenizer of another vocabulary": Case(
        COPY,
        r"tokenizer has \d+ ids but the transformer expects text_vocab=\d+: the parts come from",
        model_edit(_swap_tokenizer),
    ),
    "generate: tokenizer.json garbage": Case(
        COPY,
        r"{tmp}/model/tokenizer\.json is not a tokenizer JSON file",
        model_edit(lambda m: (m / "tokenizer.json").write_bytes(b"\x00\xff")),
    ),
    # token caches that do not fit
    "train: tokens of another dVAE": Case(
        "train --vae {vae} --tokens {other_tokens} --out {tmp}/run",
        r"the token file was encoded by another dVAE \(id [0-9a-f]{{16}}, this one is",
    ),
    "train: truncated tokens": Case(
        "train --vae {vae} --tokens {tmp}/t.safetensors --out {tmp}/run",
        r"{tmp}/t\.safetensors: unreadable token file",
        _truncate_tokens,
    ),
    "train: zero-byte tokens": Case(
        "train --vae {vae} --tokens {tmp}/t.safetensors --out {tmp}/run",
        r"{tmp}/t\.safetensors: unreadable token file",
        write("t.safetensors", b""),
    ),
    "train: weights as tokens": Case(
        "train --vae {vae} --tokens {vae}/model.safetensors --out {tmp}/run",
        r"{vae}/model\.safetensors: not a dalle token file \(written by `dalle encode`\)",
    ),
    # output paths that are a file or lie under one
    "generate: --out is a file": Case(
        "generate --model {model} 'a red circle' --out {tmp}/f",
        r"output {tmp}/f exists and is not a folder",
        write("f", b"keep me"),
    ),
    "generate: --out under a file": Case(
        "generate --model {model} 'a red circle' --out {tmp}/f/out",
        r"cannot create output folder {tmp}/f/out: Not a directory",
        write("f", b"keep me"),
    ),
    "encode: --out is a folder": Case(
        ENCODE.replace("{tmp}/t.safetensors", "{tmp}/d") + " --force",
        r"{tmp}/d is a folder; expected a file path",
        write("d/x", b"keep me"),
    ),
    "encode: --out under a file": Case(
        ENCODE.replace("{tmp}/t.safetensors", "{tmp}/f/t.safetensors"),
        r"cannot write {tmp}/f/t\.safetensors: {tmp}/f is not a folder",
        write("f", b"keep me"),
    ),
    "encode: --out exists": Case(
        ENCODE,
        r"{tmp}/t\.safetensors already exists; pass --force to overwrite it",
        write("t.safetensors", b"keep me"),
    ),
    "tokenizer train: --out under a file": Case(
        "tokenizer train --data shapes --num 50 --vocab-size 300 --out {tmp}/f/x/tok.json",
        r"cannot write {tmp}/f/x/tok\.json: {tmp}/f is not a folder",
        write("f", b"keep me"),
    ),
    "plot: --out under a file": Case(
        "plot {run} --out {tmp}/f/curves.png",
        r"cannot write {tmp}/f/curves\.png: {tmp}/f is not a folder",
        write("f", b"keep me"),
    ),
    "train: --out is a file": Case(
        TRAIN.replace("{tmp}/run", "{tmp}/f"),
        r"output {tmp}/f exists and is not a folder",
        write("f", b"keep me"),
    ),
    "data shapes: --out under a file": Case(
        "data shapes --out {tmp}/f/out --num 2",
        r"cannot create output folder {tmp}/f/out: Not a directory",
        write("f", b"keep me"),
    ),
    "demo: --out is a file": Case(
        "demo --out {tmp}/f", r"output {tmp}/f exists and is not a folder", write("f", b"x")
    ),
}
ALLOWED_LEFTOVERS = {"train_config.json"}  # a run's settings, written before training starts


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _argv(template: str, values: dict[str, Path]) -> list[str]:
    return [token.format(**values) for token in shlex.split(template)]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's errors
        return int(e.code or 0)


def _check_refused(argv: list[str], error: str, err: str, rc: int) -> None:
    assert rc == 2, (argv, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
    assert re.match(r"dalle [a-z-]+( [a-z]+)?: error: ", lines[0]), lines[0]
    assert re.search(error, lines[0]), f"{lines[0]!r} does not match {error!r}"


def _refuse(world: dict[str, Path], tmp: Path, case: Case, capsys, extra: dict | None = None):
    if case.setup is not None:
        case.setup(world["root"], tmp)
    values = {**world, "tmp": tmp, **(extra or {})}
    shared, before = _snapshot(world["root"]), _snapshot(tmp)
    argv = _argv(case.argv, values)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = _run(argv)
    err = capsys.readouterr().err
    escaped = {k: re.escape(str(v)) for k, v in values.items()}
    _check_refused(argv, case.error.format(**escaped), err, rc)
    after = _snapshot(tmp)
    new = sorted(str(p.relative_to(tmp)) for p in set(after) - set(before))
    assert all(Path(p).name in ALLOWED_LEFTOVERS for p in new), f"left behind: {new}"
    assert all(after.get(p) == data for p, data in before.items()), "an existing file changed"
    assert _snapshot(world["root"]) == shared, "a shared input changed"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_bad_input_is_one_line_and_leaves_nothing(world, tmp_path, capsys, case):
    _refuse(world, tmp_path, case, capsys)


@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    """An empty folder no one may write to: mode 555 for a normal user; for root (who ignores
    modes) the immutable attribute, removed again afterwards."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if (
        chattr is None
        or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode
    ):
        pytest.skip("root ignores folder modes and chattr +i is unavailable here")
    try:
        yield folder
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


READ_ONLY = {
    "generate: --out read-only": Case(
        "generate --model {model} 'a red circle' --out {ro}", r"output folder {ro} is not writable"
    ),
    "data shapes: --out in a read-only folder": Case(
        "data shapes --out {ro}/out --num 2", r"cannot create output folder {ro}/out: \S"
    ),
    "tokenizer train: --out in a read-only folder": Case(
        "tokenizer train --data shapes --num 50 --vocab-size 300 --out {ro}/tok.json",
        r"cannot write {ro}/tok\.json: folder {ro} is not writable",
    ),
    "encode: --out in a read-only folder": Case(
        ENCODE.replace("{tmp}", "{ro}"),
        r"cannot write {ro}/t\.safetensors: folder {ro} is not writable",
    ),
    "train-vae: --out in a read-only folder": Case(
        "train-vae --data shapes --out {ro}/run", r"cannot create output folder {ro}/run: \S"
    ),
}


@pytest.mark.parametrize("case", READ_ONLY.values(), ids=READ_ONLY.keys())
def test_a_read_only_output_folder_is_refused(world, tmp_path, capsys, read_only, case):
    _refuse(world, tmp_path, case, capsys, {"ro": read_only})
    assert not any(read_only.iterdir())


LONG = "a red circle " * 769 + "!!!"  # 10 000 characters
UNDECODABLE = "\udcff\udcfe a red circle"  # how Python decodes argv bytes that are not UTF-8
ACCEPTED = {  # odd inputs that are valid: the command works and its output is complete
    "generate: a 10 000-character prompt": "generate --model {model} {long} --out {tmp}/out",
    "generate: undecodable bytes in a prompt": "generate --model {model} {bytes} --out {tmp}/out",
    "generate: --temperature 1e-300 (greedy)": GEN + " --temperature 1e-300",
    "generate: --image RGBA, no prompt (variations)": "generate --model {model} --image "
    "{odd_images}/rgba.png --num-images 2 --out {tmp}/out",
    "generate: --image CMYK, keep all": GEN + " --image {odd_images}/cmyk.jpg --keep-rows 1.0",
    "tokenizer encode: a 10 000-character TEXT": "tokenizer encode --tokenizer "
    "{model}/tokenizer.json {long}",
    "encode: CMYK, grey, 16-bit, alpha, palette images": ENCODE,
}


@pytest.mark.parametrize("template", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_an_odd_but_valid_input_works(world, tmp_path, capsys, template):
    assert len(LONG) == 10_000
    argv = _argv(template, {**world, "tmp": tmp_path, "long": LONG, "bytes": UNDECODABLE})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _run(argv) == 0, capsys.readouterr().err
    assert len([w for w in caught if "truncated" in str(w.message)]) <= 1
    if argv[0] == "generate":
        out = tmp_path / "out"
        rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
        assert rows and all((out / r["file"]).is_file() for r in rows)
        assert (out / "grid.png").is_file()
    if argv[0] == "encode":
        tokens = TokenSet.load(tmp_path / "t.safetensors")
        assert len(tokens) == len(ODD_IMAGES) and tokens.captions == ["a red circle"] * 6


def test_undecodable_argument_bytes_in_a_real_process(world):
    tokenizer = str(world["model"] / "tokenizer.json")
    argv = [sys.executable, "-m", "dalle", "tokenizer", "encode", "--tokenizer", tokenizer]
    result = subprocess.run([*argv, b"\xff\xfe a red circle"], capture_output=True)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert b"tokens:" in result.stdout


@pytest.mark.parametrize("name", ODD_IMAGES)
def test_odd_image_modes_load_as_rgb_with_their_brightness(world, name):
    image = load_image(world["odd_images"] / name)
    assert image.mode == "RGB" and image.size == (50, 40)
    mean = np.asarray(image).mean()
    if name == "grey16.png":  # 100 .. 64 068 of 65 535 -> about 0 .. 250, not all white
        expected = (np.asarray(GREY16, dtype=np.float64) / 257).mean()
        assert abs(mean - expected) < 1.0
    else:
        assert 60 < mean < 200  # random pixels, alpha dropped, not a black or white sheet


Api = Callable[[dict[str, Path], DallePipeline], object]
API: dict[str, tuple[Api, str]] = {  # a call on bad input -> its ValueError (a regex template)
    "from_pretrained: a file": (
        lambda w, pipe: DallePipeline.from_pretrained(w["afile"]),
        "model folder {afile} is a file",
    ),
    "DiscreteVAE.load: a file": (
        lambda w, pipe: DiscreteVAE.load(w["afile"]),
        "model folder {afile} is a file",
    ),
    "Tokenizer.load: a folder": (
        lambda w, pipe: Tokenizer.load(w["model"]),
        r"tokenizer file {model} is a folder \(expected a tokenizer JSON file\)",
    ),
    "TokenSet.load: a JSON file": (
        lambda w, pipe: TokenSet.load(w["model"] / "tokenizer.json"),
        r"{model}/tokenizer\.json: unreadable token file",
    ),
    "pipeline: no prompts": (lambda w, pipe: pipe([]), "expected a non-empty list of prompts"),
    "pipeline: a blank prompt": (
        lambda w, pipe: pipe(["a red circle", " \n"]),
        "prompt 2 is empty",
    ),
    "pipeline: num_images 0": (lambda w, pipe: pipe("a", num_images=0), "num_images must be >= 1"),
    "pipeline: num_images 10^9": (
        lambda w, pipe: pipe("a", num_images=10**9),
        "expected at most 65536 per call",
    ),
    "pipeline: rerank without CLIP": (
        lambda w, pipe: pipe("a", rerank=10**6),
        "rerank needs a CLIP model",
    ),
    "pipeline: seed -1": (lambda w, pipe: pipe("a", seed=-1), r"seed must be an integer in \[0"),
    "pipeline: seed 2^64": (lambda w, pipe: pipe("a", seed=2**64), "seed must be an integer"),
    "pipeline: seed 1.5": (lambda w, pipe: pipe("a", seed=1.5), "seed must be an integer"),
    "pipeline: temperature -1": (lambda w, pipe: pipe("a", temperature=-1.0), "temperature must"),
    "pipeline: top_p 0": (lambda w, pipe: pipe("a", top_p=0.0), r"top_p must be in \(0, 1\]"),
    "pipeline: cond_scale nan": (
        lambda w, pipe: pipe("a", cond_scale=float("nan")),
        "cond_scale must be finite",
    ),
    "pipeline: an empty prompt without an image": (lambda w, pipe: pipe(""), "prompt 1 is empty"),
    "pipeline: keep_rows without an image": (
        lambda w, pipe: pipe("a", keep_rows=2),
        "keep_rows needs an image to keep the rows of, got 2",
    ),
    **{
        f"pipeline: keep_rows {k!r}": (
            lambda w, pipe, k=k: pipe("a", image=w["odd_images"] / "rgba.png", keep_rows=k),
            r"keep_rows must be 0\.\.4 code rows \(an int\) or a fraction of the image height "
            r"in \[0, 1\] \(a float\), got " + re.escape(repr(k)),
        )
        for k in (5, -1, 1.5, -0.1, float("nan"), True, "2")
    },
    **{
        f"pipeline: image {name}": (
            lambda w, pipe, name=name: pipe("a", image=w["bad_images"] / name),
            "{bad_images}/" + re.escape(name) + ": ",
        )
        for name in BAD_IMAGES
    },
    "pipeline: image a number": (
        lambda w, pipe: pipe("a", image=42),
        "expected an image as a PIL image, a path, an array .* or a tensor .*, got int",
    ),
    "pipeline: image bytes": (
        lambda w, pipe: pipe("a", image=b"\x89PNG"),
        "expected an image as .*, got bytes",
    ),
    "pipeline: image a 1-D array": (
        lambda w, pipe: pipe("a", image=np.zeros(5, np.uint8)),
        r"expected an image array \(H, W\) or \(H, W, 3\|4\), got \(5,\)",
    ),
    "pipeline: image an empty array": (
        lambda w, pipe: pipe("a", image=np.zeros((0, 4, 3), np.uint8)),
        r"expected an image array .*, got \(0, 4, 3\)",
    ),
    "pipeline: image floats over 1": (
        lambda w, pipe: pipe("a", image=np.full((8, 8, 3), 2.0)),
        r"expected float image values in \[0, 1\], got \[2, 2\]",
    ),
    "pipeline: image nan": (
        lambda w, pipe: pipe("a", image=torch.full((3, 8, 8), float("nan"))),
        r"expected float image values in \[0, 1\], got \[nan, nan\]",
    ),
    "pipeline: image int64": (
        lambda w, pipe: pipe("a", image=np.zeros((8, 8, 3), np.int64)),
        "expected a uint8 or float image array, got dtype int64",
    ),
    "pipeline: image a batch of 2": (
        lambda w, pipe: pipe("a", image=torch.rand(2, 3, 8, 8)),
        r"expected an image tensor \(C, H, W\) with C 1, 3 or 4, got \(2, 3, 8, 8\)",
    ),
    "Tokenizer.train: vocab_size 10^12": (
        lambda w, pipe: Tokenizer.train(["a red circle"], 10**12),
        "vocab_size must be <= 1048576",
    ),
    "Tokenizer.encode: text_len 0": (
        lambda w, pipe: pipe.tokenizer.encode("a", 0),
        "text_len must be a positive integer",
    ),
    "Tokenizer.tokenize: bytes": (
        lambda w, pipe: pipe.tokenizer.tokenize(b"a"),
        "caption must be a str, got bytes",
    ),
    "load_image: a folder": (lambda w, pipe: load_image(w["model"]), "{model}: not a readable"),
    "ImageFolderDataset: a file": (
        lambda w, pipe: ImageFolderDataset(w["afile"], 64),
        "data folder {afile} does not exist or is not a folder",
    ),
    "DiscreteVAE.encode: wrong size": (
        lambda w, pipe: pipe.vae.encode(torch.rand(1, 3, 32, 32)),
        r"expected images of shape \(B, 3, 64, 64\), got \(1, 3, 32, 32\)",
    ),
    **{
        f"load_image: {name}": (
            lambda w, pipe, name=name: load_image(w["bad_images"] / name),
            "{bad_images}/" + re.escape(name) + ": ",
        )
        for name in BAD_IMAGES
    },
}


@pytest.fixture(scope="module")
def pipe(world) -> DallePipeline:
    return DallePipeline.from_pretrained(world["model"])


@pytest.mark.parametrize("call, error", API.values(), ids=API.keys())
def test_the_api_raises_a_value_error_naming_the_input(world, pipe, call, error):
    with pytest.raises(ValueError) as raised, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call(world, pipe)
    message = str(raised.value)
    pattern = error.format(**{k: re.escape(str(v)) for k, v in world.items()})
    assert re.search(pattern, message) and "\n" not in message, message


def test_debug_shows_the_traceback_the_battery_never_prints(world, tmp_path, capsys):
    argv = ["generate", "--model", str(tmp_path / "nope"), "a", "--out", str(tmp_path / "o")]
    with pytest.raises(ValueError, match="does not exist"):
        main(["--debug", *argv])
    result = subprocess.run(
        [sys.executable, "-m", "dalle", "--debug", *argv], capture_output=True, text=True
    )
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ValueError: model folder")
