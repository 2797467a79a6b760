"""Argument types shared by the sub-commands: each rejects bad values with one clear line."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dalle.train.train_config import PRECISIONS

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


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision`` of a training command (the recipe's ``precision``)."""
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 (default), bf16 autocast, or fp16 autocast with a gradient scaler (CUDA)",
    )


def run_config(args: argparse.Namespace, device: str | None = None) -> Any:
    """The :class:`dalle.train.RunConfig` of the checkpoint flags, ``--save-every``,
    ``--resume``, ``--force`` and (where the command has it) ``--compile``."""
    from dalle.train.train_config import CheckpointConfig, RunConfig

    checkpoint = CheckpointConfig(
        args.checkpoint_every, args.keep, getattr(args, "checkpoint_minutes", None)
    )
    return RunConfig(
        save_every=args.save_every,
        checkpoint=checkpoint,
        resume=args.resume,
        force=args.force,
        device=device or "cpu",
        compile=getattr(args, "compile", False),
        activation_checkpointing=getattr(args, "activation_checkpointing", False),
        shard=getattr(args, "shard", False),
    )
