"""Atomic file writes and output-folder preparation: a crash never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a full disk: name the file that could not be written
        raise


def write_json_atomic(path: Path, obj: object) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def check_output_file(path: Path, force: bool = False) -> Path:
    """ValueError unless a file can be written at ``path``: not a folder, not an existing file
    unless ``force``, and the nearest existing folder above it writable (checked before the
    work that produces the file, not after)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a file path")
    if path.exists() and not force:
        raise ValueError(f"{path} already exists; pass --force to overwrite it")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {path}: folder {parent} is not writable")
    return path


def prepare_output_dir(out: Path, force: bool = False) -> Path:
    """Create ``out`` (and parents); refuse a non-empty folder unless ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"output folder {out} is not empty; pass --force to write into it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"output folder {out} is not writable")
    return out
