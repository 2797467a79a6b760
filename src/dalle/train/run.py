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


def start_run(
    out: Path,
    settings: dict[str, Any],
    resume: bool,
    force: bool,
    defaults: dict[str, Any] | None = None,
) -> Path:
    """Prepare ``out`` (:func:`prepare_run_dir`) and record the run's settings in
    ``out/train_config.json``; a resumed run must have the settings it was started with
    (``defaults``, nested like ``settings``: see :func:`record_settings`)."""
    out = Path(out)
    if resume and not out.is_dir():
        raise ValueError(f"nothing to resume: run folder {out} does not exist")
    out = prepare_run_dir(out, force=force or resume)
    record_settings(out, settings, resume, defaults)
    return out


def record_settings(
    out: Path, settings: dict[str, Any], resume: bool, defaults: dict[str, Any] | None = None
) -> None:
    """Write a run's settings to ``out/train_config.json`` (rank 0 only); when resuming,
    refuse settings other than those recorded. A setting the recorded file lacks (a field
    added to the library after the run started) counts as unchanged when it has its value in
    ``defaults``, the behaviour of the code that started the run."""
    from dalle.io import write_json_atomic

    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back from disk
    defaults = json.loads(json.dumps(defaults or {}))
    recorded = out / "train_config.json"
    if resume and recorded.is_file() and not _same(json.loads(recorded.read_text()), settings, defaults):
        raise ValueError(f"--resume needs the settings {out} was started with (see {recorded})")
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(recorded, settings)


def _same(recorded: Any, settings: Any, defaults: Any) -> bool:
    """``settings`` equal ``recorded``, but for keys only ``settings`` has at their default."""
    if not (isinstance(recorded, dict) and isinstance(settings, dict)):
        return recorded == settings
    defaults = defaults if isinstance(defaults, dict) else {}
    if set(recorded) - set(settings):
        return False
    return all(
        _same(recorded[k], v, defaults.get(k))
        if k in recorded
        else k in defaults and defaults[k] == v
        for k, v in settings.items()
    )
