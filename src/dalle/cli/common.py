"""Argument types shared by the sub-commands: each rejects bad values with one clear line."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")

MAX_SEED = 2**32 - 1  # as in the HTTP API; torch generators overflow past 2**64 - 1
MAX_TEXT_LEN = 4096  # caption tokens: longer embeddings would exhaust memory, not train


def _int_at_least(text: str, minimum: int, what: str, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def seed_int(text: str) -> int:
    return _int_at_least(text, 0, f"a seed in 0..{MAX_SEED}", MAX_SEED)


def int_up_to(maximum: int) -> Callable[[str], int]:
    """An argument type: a positive integer no larger than ``maximum`` (an absurd size would
    exhaust memory or run for ever rather than fail)."""

    def parse(text: str) -> int:
        return _int_at_least(text, 1, f"an integer in 1..{maximum}", maximum)

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def with_overrides(config: C, overrides: dict[str, Any]) -> C:
    """``config`` with the command-line values that were given (not ``None``) replaced."""
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def vae_dir(path: Path) -> Path:
    """A dVAE folder given a train-vae run, its ``model/`` or a pipeline folder."""
    for candidate in (path, path / "model", path / "vae"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(f"{path}: no dVAE here (expected config.json in it, in model/ or in vae/)")


def record_settings(out: Path, settings: dict[str, Any], resume: bool) -> None:
    """Write a run's settings to ``out/train_config.json`` (rank 0 only); when resuming,
    refuse settings other than those recorded."""
    import json

    from dalle.io import write_json_atomic
    from dalle.train import distributed

    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back from disk
    recorded = out / "train_config.json"
    if resume and recorded.is_file() and json.loads(recorded.read_text()) != settings:
        raise ValueError(f"--resume needs the settings {out} was started with (see {recorded})")
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(recorded, settings)


def prepare_run_dir(out: Path, force: bool) -> Path:
    """Join the process group when launched by ``torchrun``, then let rank 0 check and create
    the run folder (refusing a non-empty one unless ``force``) while the others wait."""
    from dalle.io import prepare_output_dir
    from dalle.train import distributed

    distributed.setup()
    if distributed.is_main():
        prepare_output_dir(out, force=force)
    distributed.barrier()
    return out


def add_checkpoint_args(p: argparse.ArgumentParser, minutes: bool = False) -> None:
    """``--checkpoint-every``, ``--keep`` and ``--resume`` (and ``--checkpoint-minutes``)."""
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=500,
        help="steps between training checkpoints (RUN/checkpoints/, for --resume)",
    )
    p.add_argument("--keep", type=positive_int, default=3, help="checkpoints kept on disk")
    if minutes:
        p.add_argument(
            "--checkpoint-minutes",
            type=positive_float,
            help="also checkpoint when this many minutes have passed since the last one",
        )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue RUN from its newest checkpoint, exactly (same arguments as the first run)",
    )


def data_captions(data: str, num: int, seed: int = 0) -> list[str]:
    """The captions of ``--data``: ``num`` shapes train captions, every caption line of a
    folder's ``.txt`` files, or of tar shards (read without decoding images)."""
    from dalle.data.shards import is_shards, shard_captions
    from dalle.tokenizer import read_captions

    if data == "shapes":
        from dalle.data.shapes import make_sample

        return [make_sample(seed, "train", i).caption for i in range(num)]
    return shard_captions(data) if is_shards(data) else read_captions(Path(data))
