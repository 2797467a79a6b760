"""A training run's folder: created (or refused) once, its settings recorded for ``resume``,
and what a stage hands back (:class:`Trained`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from dalle.train import distributed

M = TypeVar("M")


@dataclass
class Trained(Generic[M]):
    """A trained component, the run folder it was saved in and the last logged metrics."""

    model: M
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)


def prepare_run_dir(out: Path, force: bool) -> Path:
    """Join the process group when launched by ``torchrun``, then let rank 0 check and create
    the run folder (refusing a non-empty one unless ``force``) while the others wait."""
    from dalle.io import prepare_output_dir

    out = Path(out)
    distributed.setup()
    if distributed.is_main():
        prepare_output_dir(out, force=force)
    distributed.barrier()
    return out


def start_run(out: Path, settings: dict[str, Any], resume: bool, force: bool) -> Path:
    """Prepare ``out`` (:func:`prepare_run_dir`) and record the run's settings in
    ``out/train_config.json``; a resumed run must have the settings it was started with."""
    out = Path(out)
    if resume and not out.is_dir():
        raise ValueError(f"nothing to resume: run folder {out} does not exist")
    out = prepare_run_dir(out, force=force or resume)
    record_settings(out, settings, resume)
    return out


def record_settings(out: Path, settings: dict[str, Any], resume: bool) -> None:
    """Write a run's settings to ``out/train_config.json`` (rank 0 only); when resuming,
    refuse settings other than those recorded."""
    from dalle.io import write_json_atomic

    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back from disk
    recorded = out / "train_config.json"
    if resume and recorded.is_file() and json.loads(recorded.read_text()) != settings:
        raise ValueError(f"--resume needs the settings {out} was started with (see {recorded})")
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(recorded, settings)
