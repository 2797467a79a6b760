"""WebDataset tar shards in img2dataset's layout: good samples load, bad ones are skipped and
counted, a damaged shard never stops a pass."""

from __future__ import annotations

import io
import itertools
import tarfile

import pytest
import torch
from PIL import Image

from dalle.cli import main
from dalle.config import VAEConfig
from dalle.data.shards import ShardDataset, expand_shards, is_shards, shard_captions
from dalle.data.tokens import TokenSet
from dalle.models.vae import DiscreteVAE


def _image(fmt: str, color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (72, 64), color).save(buf, format=fmt)
    return buf.getvalue()


def _shard(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture()
def shards(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    _shard(root / "00000.tar", {
        "000000000.png": _image("PNG", (255, 0, 0)), "000000000.txt": b"a red thing\n",
        "000000000.json": b"{}",
        "000000001.jpg": _image("JPEG", (0, 0, 255))[:200], "000000001.txt": b"broken",
        "000000002.png": _image("PNG", (0, 0, 0)),  # no caption
    })  # fmt: skip
    _shard(root / "00001.tar", {
        "000000003.webp": _image("WEBP", (0, 255, 0)), "000000003.txt": b"green\nsomething green",
        "000000004.png": _image("PNG", (9, 9, 9)), "000000004.txt": b"  \n",  # empty caption
    })  # fmt: skip
    return root


def test_good_samples_load_and_bad_ones_are_counted(shards):
    ds = ShardDataset(str(shards / "{00000..00001}.tar"), 64, epochs=1)
    items = list(ds)
    assert [x["caption"] for x in items][0] == "a red thing"
    assert items[1]["caption"] in ("green", "something green")
    assert len(items) == 2 and all(x["image"].shape == (3, 64, 64) for x in items)
    assert torch.allclose(items[0]["image"][:, 32, 32], torch.tensor([1.0, 0.0, 0.0]))
    assert ds.num_skipped == 3 and "skipped 3 unreadable" in ds.report()


def test_a_truncated_shard_does_not_stop_the_pass(shards):
    whole = (shards / "00000.tar").read_bytes()
    (shards / "00002.tar").write_bytes(whole[: len(whole) // 2])
    ds = ShardDataset(str(shards), 64, epochs=1)  # a folder of shards
    items = list(ds)
    assert 2 <= len(items) <= 3 and ds.num_skipped >= 4


def test_endless_stream_cycles_through_epochs(shards):
    ds = ShardDataset(str(shards / "{00000..00001}.tar"), 64, seed=3)
    captions = [x["caption"] for x in itertools.islice(ds, 6)]
    assert captions.count("a red thing") == 3


def test_shard_specs_and_captions(shards, tmp_path):
    assert is_shards(str(shards)) and is_shards("x/{0..3}.tar") and not is_shards("shapes")
    assert expand_shards(str(shards / "{00000..00001}.tar"))[1].endswith("00001.tar")
    with pytest.raises(ValueError, match="1 of 3 shards do not exist"):
        expand_shards(str(shards / "{00000..00002}.tar"))
    assert shard_captions(str(shards)) == ["a red thing", "broken", "green", "something green"]


def test_encode_reads_shards(shards, tmp_path, capsys):
    torch.manual_seed(0)
    DiscreteVAE(VAEConfig(downsample=16, vocab_size=16, n_hid=8, n_init=8)).save(tmp_path / "vae")
    argv = ["encode", "--vae", str(tmp_path / "vae"), "--data", str(shards)]
    assert main([*argv, "--out", str(tmp_path / "t.safetensors")]) == 0
    assert len(TokenSet.load(tmp_path / "t.safetensors")) == 2
    assert "skipped 3 unreadable" in capsys.readouterr().err
