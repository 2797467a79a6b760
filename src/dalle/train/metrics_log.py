"""A run's ``metrics.jsonl``: one JSON object per logged step, appended by the training loop
and cut back to a checkpoint's step when a run resumes from it."""

from __future__ import annotations

import json
from pathlib import Path

from dalle.io import write_bytes_atomic


def trim_metrics(path: Path, step: int) -> None:
    """Drop the metrics lines logged after ``step`` (the resumed run logs them again)."""
    if not path.is_file():
        return

    def before(line: str) -> bool:  # a line torn by a crash mid-write is dropped too
        try:
            return json.loads(line).get("step", 0) <= step
        except (json.JSONDecodeError, AttributeError):
            return False

    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = [x for x in lines if x.strip() and before(x)]
    write_bytes_atomic(path, "".join(x + "\n" for x in kept).encode())
