"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one file ``RUN/checkpoints/step_00001234.pt`` holding the model and optimizer
state, the step, the global torch RNG state and the objective's own random state (e.g. the
caption-dropout generator). The learning rate is a pure function of the step and the data
position is the number of batches drawn (the batch iterators are deterministic given their
seed), so nothing else is needed. Files are written atomically (temporary file, fsync, rename;
the next save removes the temporary file of a process killed mid-write) and read back with
``torch.load(weights_only=True)``, which cannot run code. The newest ``keep`` are kept;
resuming takes the newest one that reads back whole.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from dalle.io import write_bytes_atomic

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d{8})\.pt")


def checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoint files of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.fullmatch(p.name))


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` goes."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and delete all but the newest ``keep``."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({**state, "step": step}, buffer)
    write_bytes_atomic(path, buffer.getvalue())
    for old in checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in path.parent.glob(".step_*.pt.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    return path


def load_latest(run_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint that reads back whole, or ``None`` when the run has none."""
    for path in reversed(checkpoints(run_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file: fall back to the one before it
            warnings.warn(f"skipping unreadable checkpoint {path}: {e}", stacklevel=2)
            continue
        if isinstance(state, dict) and "step" in state and "model" in state:
            return state
        warnings.warn(f"skipping {path}: not a dalle training checkpoint", stacklevel=2)
    return None
