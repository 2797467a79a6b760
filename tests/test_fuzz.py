"""Property tests (Hypothesis) for what reads untrusted input: the tokenizer on any Unicode, the
shapes prompt parser and the prompt-file reader on any text or bytes, and the image loaders (and
``dalle serve``'s upload decoder) on random and mutated files. Each either works or raises the documented one-line ``ValueError``.

``tests/test_tokenizer.py`` already checks that fixed-length ``encode`` never crashes; these add
untruncated round trips of long text, batches, and decoding arbitrary ids.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dalle.cli.generate import read_prompts
from dalle.data.image_folder import ImageFolderDataset
from dalle.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, make_sample
from dalle.eval.shapes_fidelity import ObjectSpec, find_objects, format_prompt, parse_prompt
from dalle.images import load_image
from dalle.tokenizer import Tokenizer

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=300)  # surrogates included
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([make_sample(0, "train", i).caption for i in range(300)], 400)


@pytest.fixture(scope="module")
def scratch() -> Path:
    """One folder for the files the examples write (a fixture per example would be slow)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@FUZZ
@given(text=ANY_TEXT)
def test_tokenize_decode_round_trips_normalised_text_of_any_length(tok, text):
    norm = tok.normalize(text)
    assert tok.normalize(norm) == norm  # normalising twice changes nothing
    if not norm.strip():
        with pytest.raises(ValueError, match="caption is empty"):
            tok.tokenize(text)
        return
    ids = tok.tokenize(text)
    assert all(0 < i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == norm == tok.decode(tok.tokenize(norm))


@FUZZ
@given(texts=st.lists(ANY_TEXT.filter(lambda t: t.strip()), min_size=1, max_size=6),
       text_len=st.integers(1, 64))  # fmt: skip
def test_encode_batch_is_fixed_length_and_agrees_with_encode(tok, texts, text_len):
    texts = [t for t in texts if tok.normalize(t).strip()]
    if not texts:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation
        ids, lengths = tok.encode_batch(texts, text_len)
        rows = [tok.encode(t, text_len) for t in texts]
    assert ids.shape == (len(texts), text_len) and ids.dtype == torch.long
    for i, (row, n) in enumerate(rows):
        assert torch.equal(ids[i], row) and lengths[i] == n and 1 <= n <= text_len
        assert (ids[i, n:] == tok.pad_id).all() and (ids[i, :n] != tok.pad_id).all()


@FUZZ
@given(ids=st.lists(st.integers(-5, 500), max_size=40))
def test_decode_takes_any_ids_in_the_vocabulary_and_refuses_the_rest(tok, ids):
    if all(0 <= i < tok.vocab_size for i in ids):
        assert isinstance(tok.decode(ids), str)
    else:
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode(ids)


@FUZZ
@given(text=ANY_TEXT)
def test_the_prompt_parser_parses_or_names_the_prompt(text):
    try:
        specs = parse_prompt(text)
    except ValueError as e:
        assert str(e).startswith(f"cannot parse prompt {text.strip()!r}")
        return
    assert specs and all(isinstance(s, ObjectSpec) for s in specs)


SPECS = st.builds(
    lambda shape, color, size, cell: ObjectSpec(shape, color, size, *(cell or (None, None))),
    st.sampled_from(SHAPES),
    st.sampled_from(list(COLORS)),
    st.sampled_from([None, *SIZES]),
    st.sampled_from([None, *POSITIONS]),
)


@FUZZ
@given(specs=st.lists(SPECS, min_size=1, max_size=3), data=st.data())
def test_formatted_prompts_parse_back_through_case_spacing_and_a_period(specs, data):
    words = format_prompt(specs).split(" ")
    cased = [data.draw(st.sampled_from([w, w.upper(), w.title()])) for w in words]
    gaps = [data.draw(st.sampled_from([" ", "  ", "\t", " \u3000 "])) for _ in words[1:]]
    noisy = cased[0] + "".join(g + w for g, w in zip(gaps, cased[1:], strict=True))
    noisy = (
        data.draw(st.sampled_from(["", " ", "\n"])) + noisy + data.draw(st.sampled_from(["", "."]))
    )
    assert parse_prompt(noisy) == specs


@FUZZ
@given(content=st.binary(max_size=300))
def test_a_prompt_file_of_any_bytes_reads_or_is_refused_naming_it(scratch, content):
    path = scratch / "prompts.txt"
    path.write_bytes(content)
    args = argparse.Namespace(prompts=[], prompt_file=path, image=None)
    try:
        prompts = read_prompts(args)
    except ValueError as e:
        assert str(path) in str(e) or str(e).startswith("no prompts"), e
        return
    assert prompts and all(p == p.strip() and p for p in prompts)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


_BASE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8))
SEEDS = {  # valid files to mutate: every suffix the folders read, and more Pillow decoders
    "png": _encoded(_BASE, "PNG"),
    "png-grey16": _encoded(Image.fromarray(np.arange(192, dtype=np.uint16).reshape(12, 16) * 300), "PNG"),
    "png-palette": _encoded(_BASE.convert("P"), "PNG"),
    "jpeg": _encoded(_BASE, "JPEG"),
    "jpeg-cmyk": _encoded(_BASE.convert("CMYK"), "JPEG"),
    "webp": _encoded(_BASE, "WEBP"),
    "gif": _encoded(_BASE.convert("P"), "GIF"),
    "bmp": _encoded(_BASE, "BMP"),
    "tiff": _encoded(_BASE, "TIFF"),
    "ppm": _encoded(_BASE, "PPM"),
}  # fmt: skip
MUTATED = st.tuples(
    st.sampled_from(sorted(SEEDS)),
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6),  # byte overwrites
    st.floats(0.05, 1.0),  # the fraction of the file kept
).map(lambda m: _mutate(SEEDS[m[0]], m[1], m[2]))


def _mutate(data: bytes, overwrites: list[tuple[float, int]], keep: float) -> bytes:
    out = bytearray(data)
    for where, value in overwrites:
        out[min(int(where * len(out)), len(out) - 1)] = value
    return bytes(out[: max(1, int(keep * len(out)))])


def _check_load(path: Path) -> None:
    """``load_image`` gives an RGB image or a ValueError that names the file."""
    try:
        image = load_image(path)
    except ValueError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e), e
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


@FUZZ
@given(content=st.binary(max_size=2000) | MUTATED)
def test_the_image_loader_reads_or_refuses_any_bytes(scratch, content):
    path = scratch / "image.png"
    path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about some damaged files
        _check_load(path)


@FUZZ
@given(content=MUTATED)
def test_a_folder_dataset_skips_a_damaged_image_and_serves_the_good_one(scratch, content):
    folder = scratch / "folder"
    folder.mkdir(exist_ok=True)
    (folder / "a.png").write_bytes(content)
    (folder / "a.txt").write_text("a red circle\n")
    (folder / "b.png").write_bytes(SEEDS["png"])
    (folder / "b.txt").write_text("a blue square\n")
    dataset = ImageFolderDataset(folder, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = [dataset[i] for i in range(2)]
    for item in items:
        assert item["image"].shape == (3, 16, 16)
        assert 0.0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1.0
    assert dataset.num_skipped in (0, 1)
    if dataset.num_skipped:
        assert items[0]["caption"] == "a blue square"  # the next good pair stood in


@FUZZ
@given(
    shape=st.tuples(st.integers(1, 80), st.integers(1, 80), st.sampled_from([1, 3, 4])),
    dtype=st.sampled_from([np.uint8, np.float32, np.int64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_shapes_checker_reads_any_array_or_refuses_it(shape, dtype, seed):
    array = (np.random.default_rng(seed).random(shape) * 255).astype(dtype)
    try:
        found = find_objects(array)
    except ValueError as e:
        assert str(e).startswith("expected a uint8 array (H, W, 3)"), e
        return
    assert isinstance(found, list)


@FUZZ
@given(content=st.binary(max_size=2000) | MUTATED)
def test_an_uploaded_picture_decodes_or_is_refused_in_one_line(content):
    """What ``dalle serve`` does with a base64 ``image``: an RGB picture, or a ValueError that
    names the field (the app's 422), never another exception."""
    import base64

    from dalle.serve.uploads import decode_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = decode_image(base64.b64encode(content).decode("ascii"))
    except ValueError as e:
        assert str(e).startswith("image: ") and "\n" not in str(e), e
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
