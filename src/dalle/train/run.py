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
    configs: dict[str, type] | None = None,
) -> Path:
    """Prepare ``out`` (:func:`prepare_run_dir`) and record the run's settings in
    ``out/train_config.json``; a resumed run must have the settings it was started with
    (``configs``: see :func:`record_settings`)."""
    out = Path(out)
    if resume and not out.is_dir():
        raise ValueError(f"nothing to resume: run folder {out} does not exist")
    out = prepare_run_dir(out, force=force or resume)
    record_settings(out, settings, resume, configs)
    return out


def record_settings(
    out: Path, settings: dict[str, Any], resume: bool, configs: dict[str, type] | None = None
) -> None:
    """Write a run's settings to ``out/train_config.json`` (rank 0 only); when resuming,
    refuse settings other than those recorded. ``configs`` names the config class whose
    ``to_dict`` a group of ``settings`` is (``{"train": TransformerTrainConfig}``), so that a
    run started by older code resumes as it was: a field added to the class since, which the
    recorded file lacks, counts as unchanged at its default (a field whose default changed
    since: at the old value the class's ``CHANGED_DEFAULTS`` names), and a field removed
    since (the class's ``REMOVED_FIELDS``) is dropped from the recorded file at its off value
    (on, it is an error: :func:`dalle.config_io.drop_removed`)."""
    from dalle.config_io import drop_removed
    from dalle.io import write_json_atomic

    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back from disk
    configs = configs or {}
    defaults = json.loads(json.dumps({k: _old_defaults(cls) for k, cls in configs.items()}))
    recorded = out / "train_config.json"
    if resume and recorded.is_file():
        old = json.loads(recorded.read_text())
        for group, cls in configs.items():
            removed = getattr(cls, "REMOVED_FIELDS", {})
            if isinstance(old, dict) and isinstance(old.get(group), dict):
                old[group] = drop_removed(old[group], removed, str(recorded), cls.__name__)
        if not _same(old, settings, defaults):
            raise ValueError(f"--resume needs the settings {out} was started with (see {recorded})")
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(recorded, settings)


def _old_defaults(cls: type) -> dict[str, Any]:
    """The settings a run recorded by older code without a field of ``cls`` had for it."""
    from dalle.config_io import to_dict

    return to_dict(cls()) | getattr(cls, "CHANGED_DEFAULTS", {})


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
