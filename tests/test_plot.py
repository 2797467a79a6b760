"""`dalle plot`: one panel per series of metrics.jsonl, clear errors on bad runs."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from dalle.cli import main
from dalle.curves import LINE, PANEL_H, series_names


def test_plot_draws_one_panel_per_series(tmp_path, capsys):
    rows = [
        {"step": s, "loss": 5 / s, "text_loss": 1 / s, "lr": 1e-3, "grad_norm": 1.0}
        for s in range(10, 110, 10)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert series_names(rows) == ["loss", "text_loss", "lr"]
    assert main(["plot", str(tmp_path)]) == 0
    image = np.asarray(Image.open(tmp_path / "curves.png").convert("RGB"))
    assert image.shape[0] == 3 * PANEL_H
    for panel in range(3):  # every panel has its curve drawn
        part = image[panel * PANEL_H : (panel + 1) * PANEL_H]
        assert (part == np.array(LINE)).all(-1).sum() > 50


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\nnot json\n')
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl:2: not a JSON line" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "curves.png").exists()
