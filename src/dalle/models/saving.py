"""A saved component is a folder: ``config.json`` + ``model.safetensors``.

Weights go through safetensors only (no pickle, so loading never runs code) and load with
strict key and shape checks against the architecture the config describes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from dalle.config import load_config, to_dict
from dalle.io import write_bytes_atomic, write_json_atomic

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

M = TypeVar("M", bound=torch.nn.Module)


def save_component(directory: Path, model: torch.nn.Module, config: object) -> None:
    """Write ``config.json`` and ``model.safetensors`` atomically into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(directory / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    write_json_atomic(directory / CONFIG_FILE, to_dict(config))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a safetensors file into ``model``; any missing, extra or mis-shaped tensor is an error."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing weights file {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{path}: weights do not match the config: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(t.shape)}, config expects {tuple(expected[name].shape)}"
            )
        if t.dtype != expected[name].dtype:  # a cast would load other numbers silently
            raise ValueError(
                f"{path}: {name} is {t.dtype}, the model expects {expected[name].dtype}"
            )
    model.load_state_dict(tensors, strict=True)


def load_component(directory: Path, config_cls: type, build: type[M]) -> M:
    """Read ``directory/config.json`` as ``config_cls``, build the module, load its weights."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file" if directory.exists() else "does not exist"
        raise ValueError(f"model folder {directory} {what} (expected a folder)")
    config = load_config(config_cls, directory / CONFIG_FILE)
    try:
        model = build(config)
    except (TypeError, RuntimeError) as e:  # a wrong type or an absurd size in config.json
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{directory / CONFIG_FILE}: cannot build the model it describes ({reason}); "
            "expected the config saved with these weights"
        ) from e
    load_weights(model, directory / WEIGHTS_FILE)
    return model.eval()


def fingerprint(model: torch.nn.Module) -> str:
    """16 hex digits of SHA-256 over the model's tensors (names, shapes, dtypes and bytes): two
    models agree exactly when their fingerprints do (up to hash collisions)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


S = TypeVar("S", bound="Saved")


class Saved(torch.nn.Module):
    """A component that saves as a folder: ``cfg`` (of type ``config_class``) as
    ``config.json``, its weights as ``model.safetensors``. Each model class names its config."""

    config_class: ClassVar[type]
    cfg: Any

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory``."""
        save_component(Path(directory), self, self.cfg)

    @classmethod
    def load(cls: type[S], directory: str | Path) -> S:
        """Load a folder written by :meth:`save` (strict key and shape checks), in eval mode."""
        return load_component(Path(directory), cls.config_class, cls)
