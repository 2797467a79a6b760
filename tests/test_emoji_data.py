"""The emoji dataset builder against a small fake package with the real one's layout: names,
alpha compositing, skin-tone captions, the holdout rule and clear errors for bad sources."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from dalle.cli import main
from dalle.data import emoji

TONE_KEYS = list(emoji.TONES)


def _png(colour: tuple[int, int, int, int]) -> bytes:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent, then a square of colour
    image.paste(Image.new("RGBA", (32, 32), colour), (16, 16))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _entries() -> list[dict]:
    entries = [{"name": "GRINNING FACE", "image": "1f600.png", "sort_order": 0, "has_img_google": True}]
    for i in range(6):  # six emoji with all five tones: the held-out tone cycles through them
        code = f"1f44{i}"
        variations = {t: {"image": f"{code}-{t.lower()}.png", "has_img_google": True} for t in TONE_KEYS}
        entries.append({"name": f"HAND {i}", "image": f"{code}.png", "sort_order": i + 1,
                        "has_img_google": True, "skin_variations": variations})  # fmt: skip
    couple = {"1F3FB-1F3FF": {"image": "1f46b-1f3fb-1f3ff.png", "has_img_google": True},
              "1F3FC": {"image": "1f46b-1f3fc.png", "has_img_google": False}}  # fmt: skip
    entries.append({"name": "Couple  Holding Hands", "image": "1f46b.png", "sort_order": 9,
                    "has_img_google": True, "skin_variations": couple})  # fmt: skip
    entries.append({"name": "NO GOOGLE ART", "image": "1f999.png", "sort_order": 10,
                    "has_img_google": False})  # fmt: skip
    return entries


def _files(entries: list[dict]) -> dict[str, bytes]:
    files = {"package/emoji.json": json.dumps(entries).encode(), "package/LICENSE": b"MIT"}
    for entry in entries:
        for image in [entry["image"], *(v["image"] for v in entry.get("skin_variations", {}).values())]:
            files[f"package/{emoji.IMAGE_DIR}/{image}"] = _png((255, 0, 0, 128))
    return files


@pytest.fixture
def tarball(tmp_path) -> Path:
    path = tmp_path / emoji.TARBALL
    with tarfile.open(path, "w:gz") as tar:
        for name, data in _files(_entries()).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _read(folder: Path) -> dict[str, str]:
    return {p.stem: p.read_text().strip() for p in sorted(folder.glob("*.txt"))}


def test_train_and_holdout_follow_the_rule(tarball, tmp_path):
    assert main(["data", "emoji", "--source", str(tarball), "--out", str(tmp_path / "train")]) == 0
    argv = ["data", "emoji", "--source", str(tarball), "--split", "holdout"]
    assert main([*argv, "--out", str(tmp_path / "holdout")]) == 0
    train, holdout = _read(tmp_path / "train"), _read(tmp_path / "holdout")
    assert not set(train) & set(holdout)  # no picture in both splits
    assert train["1f600"] == "grinning face"
    assert train["1f46b"] == "couple holding hands"
    assert train["1f46b-1f3fb-1f3ff"] == "couple holding hands, light skin tone, dark skin tone"
    assert "1f46b-1f3fc" not in train and "1f999" not in train  # no Google image
    # one held-out (emoji, tone) pair per five-tone emoji, tone number i % 5 for the i-th
    expected = {f"1f44{i}-{TONE_KEYS[i % 5].lower()}" for i in range(6)}
    assert set(holdout) == expected
    assert holdout["1f442-1f3fd"] == "hand 2, medium skin tone"
    for i in range(6):  # every emoji is still seen, with its four other tones
        assert f"1f44{i}" in train and sum(k.startswith(f"1f44{i}-") for k in train) == 4
    seen_tones = {caption.split(", ")[1] for caption in train.values() if ", " in caption}
    assert {f"{t} skin tone" for t in emoji.TONES.values()} <= seen_tones  # every tone seen
    assert "Apache" in (tmp_path / "train" / "LICENSE").read_text()


def test_alpha_is_composited_onto_white(tarball, tmp_path):
    emoji.write_folder(tmp_path / "out", tarball, "train")
    image = Image.open(tmp_path / "out" / "1f600.png")
    assert image.mode == "RGB" and image.size == (64, 64)
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    r, g, b = image.getpixel((32, 32))  # red at half alpha over white
    assert r == 255 and 126 <= g <= 128 and g == b


def test_an_unpacked_folder_reads_like_the_tarball(tarball, tmp_path):
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    emoji.write_folder(tmp_path / "a", tarball, "all")
    emoji.write_folder(tmp_path / "b", tmp_path / "unpacked", "all")
    assert _read(tmp_path / "a") == _read(tmp_path / "b") and len(_read(tmp_path / "a")) == 39


def test_bad_sources_are_one_clear_line(tmp_path, capsys, monkeypatch):
    corrupt = tmp_path / "corrupt.tgz"
    corrupt.write_bytes(b"\x1f\x8b this is not gzip")
    cases = [
        (tmp_path / "missing.tgz", "missing.tgz does not exist"),
        (corrupt, "not a readable .tgz"),
        (tmp_path, "no emoji.json in it"),
    ]
    for source, message in cases:
        out = tmp_path / "out"
        assert main(["data", "emoji", "--source", str(source), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not out.exists()  # nothing written
    monkeypatch.setattr(emoji.shutil, "which", lambda name: None)
    argv = ["data", "emoji", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "npm is not installed" in err and f"npm pack {emoji.PACKAGE}@{emoji.VERSION}" in err


def test_a_missing_image_names_the_file(tmp_path):
    files = _files(_entries())
    del files[f"package/{emoji.IMAGE_DIR}/1f600.png"]
    path = tmp_path / "broken.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="1f600.png is missing"):
        emoji.write_folder(tmp_path / "out", path)
    assert not (tmp_path / "out").exists()
