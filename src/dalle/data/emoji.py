"""Real artwork from a package registry: Google's emoji, captioned by their Unicode names.

Source: the npm package ``emoji-datasource-google`` (version :data:`VERSION`; the package is
MIT-licensed by Cal Henderson and contributors, the images are Noto Emoji by Google, Apache
License 2.0). It is fetched with ``npm pack``, or read from a tarball or an unpacked
``package/`` folder that the user passes. Its ``emoji.json`` lists every emoji with its name,
image file and skin-tone variations; the images are the 64x64 PNGs under ``img/google/64/``.

- Image: the 64x64 PNG, alpha composited onto white, RGB.
- Caption: the lower-cased name; a skin-tone variant adds its tones, e.g. "waving hand,
  medium-dark skin tone".
- Split: of the emoji with all five single skin tones, emoji number ``i`` (in the package's
  sort order) has its tone ``TONES[i % 5]`` held out of ``train``; those combinations form
  ``holdout``. Every emoji and every tone is still in ``train``: only the pairs are new.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dalle.images import png_bytes
from dalle.io import prepare_output_dir, write_bytes_atomic

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
TARBALL = f"{PACKAGE}-{VERSION}.tgz"
IMAGE_DIR = "img/google/64"
TONES = {  # Fitzpatrick modifiers, in order
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}
SPLITS = ("train", "holdout", "all")
MAX_MEMBER_BYTES = 32 << 20  # emoji.json is ~1.6 MB and a PNG a few KB: anything larger is bad
ATTRIBUTION = f"""Emoji images from the npm package {PACKAGE} {VERSION}
(https://www.npmjs.com/package/{PACKAGE}).

The package: MIT License, Copyright (c) 2013 Cal Henderson and contributors.
The images: Noto Emoji, Copyright Google Inc., Apache License 2.0
(https://www.apache.org/licenses/LICENSE-2.0).

Written by `dalle data emoji`: each image is the 64x64 PNG alpha-composited onto white, with
a .txt caption of the same stem (the lower-cased emoji name, plus its skin tones).
"""


@dataclass(frozen=True)
class EmojiImage:
    """One picture of the set: its image file in the package, caption and split."""

    image: str  # file name under img/google/64/
    caption: str
    emoji: str  # the base emoji's lower-cased name
    tone: str | None  # the single skin tone of a variant, else None
    split: str  # "train" or "holdout"


def catalogue(entries: list[dict]) -> list[EmojiImage]:
    """Every image of ``emoji.json``'s ``entries`` with its caption and split (see the module
    docstring for the rule)."""
    pictures: list[EmojiImage] = []
    toned = 0  # emoji with all five single tones seen so far
    for entry in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        if not entry.get("has_img_google") or not entry.get("image") or not entry.get("name"):
            continue
        name = " ".join(str(entry["name"]).lower().split())
        pictures.append(EmojiImage(entry["image"], name, name, None, "train"))
        variations = entry.get("skin_variations") or {}
        held = None
        if all(tone in variations for tone in TONES):
            held = list(TONES)[toned % len(TONES)]
            toned += 1
        for key, variant in sorted(variations.items()):
            if not variant.get("has_img_google", True) or not variant.get("image"):
                continue
            tones = key.split("-")
            if not all(t in TONES for t in tones):
                continue
            words = ", ".join(f"{TONES[t]} skin tone" for t in dict.fromkeys(tones))
            single = TONES.get(key)
            split = "holdout" if key == held else "train"
            pictures.append(EmojiImage(variant["image"], f"{name}, {words}", name, single, split))
    return pictures


def composite_on_white(data: bytes, where: str) -> Image.Image:
    """PNG bytes -> an RGB image, its alpha composited onto white."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as e:  # Pillow raises many types for a broken file
        raise ValueError(f"{where}: not a readable PNG ({e.__class__.__name__})") from None
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def read_package(source: Path) -> tuple[list[dict], dict[str, bytes]]:
    """``(emoji.json's entries, {image file name: PNG bytes})`` of the package at ``source``
    (its ``.tgz``, read in one pass, or its unpacked folder)."""
    files: dict[str, bytes] = {}
    if source.is_dir():
        root = source / "package" if (source / "package" / "emoji.json").is_file() else source
        if not (root / "emoji.json").is_file():
            raise ValueError(f"{source}: no emoji.json in it (expected the unpacked {PACKAGE})")
        files["emoji.json"] = (root / "emoji.json").read_bytes()
        for png in (root / IMAGE_DIR).glob("*.png"):
            files[f"{IMAGE_DIR}/{png.name}"] = png.read_bytes()
    elif source.is_file():
        try:
            with tarfile.open(source, "r:gz") as tar:
                for member in tar:
                    name = member.name.removeprefix("package/")
                    wanted = name == "emoji.json" or (
                        name.startswith(f"{IMAGE_DIR}/") and name.endswith(".png")
                    )
                    if not (member.isfile() and wanted):
                        continue
                    if member.size > MAX_MEMBER_BYTES:
                        raise ValueError(
                            f"{source}: {member.name} is {member.size} bytes, too large"
                        )
                    f = tar.extractfile(member)
                    files[name] = f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{source}: not a readable .tgz of {PACKAGE} ({e})") from None
    else:
        raise ValueError(f"{source} does not exist (expected {TARBALL} or its unpacked folder)")
    if "emoji.json" not in files:
        raise ValueError(f"{source}: no package/emoji.json in it (expected {TARBALL})")
    try:
        entries = json.loads(files.pop("emoji.json"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{source}: emoji.json is not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{source}: emoji.json is not a list of emoji")
    images = {name.removeprefix(f"{IMAGE_DIR}/"): data for name, data in files.items()}
    return [e for e in entries if isinstance(e, dict)], images


def fetch(cache: Path) -> Path:
    """``cache/TARBALL``, downloaded with ``npm pack`` when it is not there yet."""
    target = cache / TARBALL
    if target.is_file():
        return target
    npm = shutil.which("npm")
    how = (
        f"get it with `npm pack {PACKAGE}@{VERSION}` on a machine with npm and pass the file "
        "with --source"
    )
    if npm is None:
        raise ValueError(f"npm is not installed: {how}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            subprocess.run(
                [npm, "pack", f"{PACKAGE}@{VERSION}", "--silent"],
                cwd=tmp,
                check=True,
                capture_output=True,
                timeout=600,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            raise ValueError(f"npm pack {PACKAGE}@{VERSION} failed (offline?): {how}") from e
        Path(tmp, TARBALL).replace(target)
    return target


def pictures(source: Path) -> Iterator[tuple[EmojiImage, Image.Image]]:
    """Every picture of the package at ``source`` with its composited image."""
    entries, images = read_package(source)
    for picture in catalogue(entries):
        where = f"{source}: {IMAGE_DIR}/{picture.image}"
        if picture.image not in images:
            raise ValueError(f"{where} is missing")
        yield picture, composite_on_white(images[picture.image], where)


def write_folder(out: Path, source: Path, split: str = "train", force: bool = False) -> int:
    """Write ``split`` (``train``, ``holdout`` or ``all``) of the package at ``source`` as
    ``STEM.png`` + ``STEM.txt`` pairs with the attribution in ``LICENSE``; returns the
    number of pictures written. The package is read whole before ``out`` is touched."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    chosen = [(p, image) for p, image in pictures(source) if split in ("all", p.split)]
    if not chosen:
        raise ValueError(f"{source}: no {split} pictures in this package")
    out = prepare_output_dir(out, force=force)
    for picture, image in chosen:
        stem = out / Path(picture.image).stem
        write_bytes_atomic(stem.with_suffix(".png"), png_bytes(image))
        write_bytes_atomic(stem.with_suffix(".txt"), (picture.caption + "\n").encode())
    write_bytes_atomic(out / "LICENSE", ATTRIBUTION.encode())  # not .txt: no caption file
    return len(chosen)
