"""What every benchmark shares: where results go, the header that says which machine, torch,
threads, commit and command made a figure, and an atomic JSON writer.

Scripts import it as ``from common import ...``: Python puts a script's own folder first on
``sys.path``, so ``python benchmarks/speed.py`` works from any directory, and every default
path here is relative to this file, never to the working directory.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent  # where `make demo` writes demo_out/ and the benchmarks their runs/
RESULTS = BENCHMARKS / "results"


def git_commit(where: Path = BENCHMARKS) -> str | None:
    """The commit of the checkout that holds ``where`` (by default this one), with ``+dirty``
    when tracked files differ from it; ``None`` outside a git checkout (a copied folder, an
    sdist)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}+dirty" if dirty else commit


def header(benchmark: str, *, threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """The first keys of every report. ``threads`` defaults to this process's torch threads
    (a benchmark that times another process, e.g. a server, passes that process's count)."""
    import torch

    return {
        "benchmark": benchmark,
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "device": device,
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if threads is None else threads,
    }


def write_json(path: Path, report: dict[str, Any], *, indent: int = 2) -> None:
    """Write ``report`` to ``path`` all at once: a run killed while writing leaves the old
    file whole, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(report, indent=indent) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {path}")


def run_timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``cmd`` with its output captured; returns it and its wall seconds. When it fails,
    the tail of its stderr goes to ours, so the caller only has to return its exit code."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    return done, wall
