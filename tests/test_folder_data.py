"""Image-caption folders as users bring them: nested, mixed formats, several captions per
image, and the bad files real folders hold (skipped, counted, never fatal)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dalle.cli import main
from dalle.config import VAEConfig
from dalle.data.image_folder import ImageFolderDataset
from dalle.data.tokens import TokenSet
from dalle.models.vae import DiscreteVAE


def _folder(root):
    """3 good pairs (png, nested jpg, webp), a corrupt jpg, an empty caption, an uncaptioned png."""
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (80, 64), (255, 0, 0)).save(root / "a.png")
    (root / "a.txt").write_text("a red thing\n")
    Image.new("RGB", (64, 96), (0, 255, 0)).save(root / "sub" / "b.jpg")
    (root / "sub" / "b.txt").write_text("a green thing\nsomething green\n")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(root / "c.webp")
    (root / "c.txt").write_text("a blue thing")
    good = (root / "sub" / "b.jpg").read_bytes()
    (root / "d.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    (root / "d.txt").write_text("broken")
    Image.new("RGB", (64, 64)).save(root / "e.png")
    (root / "e.txt").write_text("  \n")  # empty caption
    Image.new("RGB", (64, 64)).save(root / "f.png")  # no caption file
    return root


def test_folder_loads_good_pairs_and_skips_bad_ones(tmp_path):
    ds = ImageFolderDataset(_folder(tmp_path / "data"), 64)
    assert len(ds) == 5 and ds.unpaired == 1
    items = [ds[i] for i in range(len(ds))]  # never raises: a bad pair yields the next good one
    assert all(x["image"].shape == (3, 64, 64) for x in items)
    assert {x["caption"] for x in items} <= {
        "a red thing",
        "a green thing",
        "something green",
        "a blue thing",
    }
    assert sorted(p.rsplit("/", 1)[-1] for p in ds.skipped) == ["d.jpg", "e.png"]
    assert "skipped 2 unreadable pairs" in ds.report() and "1 images without a .txt" in ds.report()
    red = ds.get(0)["image"]  # resized 80x64 -> 80x64 then centre-cropped to 64x64
    assert torch.allclose(red[:, 32, 32], torch.tensor([1.0, 0.0, 0.0]))


def test_encode_leaves_bad_pairs_out_and_reports_them(tmp_path, capsys):
    torch.manual_seed(0)
    DiscreteVAE(VAEConfig(downsample=16, vocab_size=16, n_hid=8, n_init=8)).save(tmp_path / "vae")
    argv = ["encode", "--vae", str(tmp_path / "vae"), "--data", str(_folder(tmp_path / "data"))]
    assert main([*argv, "--out", str(tmp_path / "t.safetensors")]) == 0
    tokens = TokenSet.load(tmp_path / "t.safetensors")
    assert len(tokens) == 3  # each good pair once, no stand-ins for the bad ones
    assert "skipped 2 unreadable pairs" in capsys.readouterr().err


def test_a_folder_where_nothing_reads_is_a_clear_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    (tmp_path / "x.txt").write_text("a caption")
    ds = ImageFolderDataset(tmp_path, 64)
    with pytest.raises(ValueError, match="none of the 1 image \\+ caption pairs"):
        ds[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image \\+ .txt caption pairs"):
        ImageFolderDataset(tmp_path / "empty", 64)
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", 64)
