"""Argument types shared by the sub-commands: each rejects bad values with one clear line."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


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
