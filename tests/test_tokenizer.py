"""Tests for the byte-level BPE caption tokenizer and ``dalle tokenizer``."""

from __future__ import annotations

import itertools
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dalle.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, ShapeObject, make_sample
from dalle.data.shapes import object_phrase as phrase
from dalle.tokenizer import MIN_VOCAB_SIZE, Tokenizer, read_captions

UNSEEN = [
    "a 😀 red circle 🐱‍👤",  # emoji, including a zero-width-joiner sequence
    "一个红色的圆 在左上角",  # CJK
    "Ｆｕｌｌｗｉｄｔｈ ﬁ ² Ⅻ",  # NFKC folds these
    "café naïve RÉSUMÉ İstanbul ß",  # accents and case-mapping corner cases
    "tab\tnew\nline \x00 \x07 \x1b[31m \u200b",  # control and zero-width characters
    "a [PAD] token [pad] ［ＰＡＤ］",  # the pad token's text must not become the pad id
    "lone surrogate \ud800 here",  # not valid Unicode: replaced, never a crash
]


@pytest.fixture(scope="module")
def captions() -> list[str]:
    return [make_sample(0, "train", i).caption for i in range(400)]


@pytest.fixture(scope="module")
def tok(captions: list[str]) -> Tokenizer:
    return Tokenizer.train(captions, vocab_size=320)


def fresh(tok: Tokenizer) -> Tokenizer:
    """A new instance (its own truncation-warning state) of the same tokenizer."""
    return pickle.loads(pickle.dumps(tok))


def all_caption_forms() -> list[str]:
    """Every one-object phrase (size and position each stated or left out), and pairs."""
    ones = []
    for shape, color, size, (col, row) in itertools.product(SHAPES, COLORS, SIZES, POSITIONS):
        o = ShapeObject(shape, color, size, col, row, 11 + 21 * col, 11 + 21 * row)
        ones += [phrase(o, s, p) for s, p in itertools.product((True, False), repeat=2)]
    return ones + [f"{a} and {b}" for a, b in zip(ones[::7], ones[3::5], strict=False)]


def test_round_trip_all_shapes_caption_forms(tok: Tokenizer) -> None:
    forms = all_caption_forms()
    ids, lengths = tok.encode_batch(forms, text_len=48)
    for text, row, n in zip(forms, ids, lengths.tolist(), strict=True):
        assert tok.decode(row) == tok.decode(row[:n].tolist()) == text
        assert 0 < n < 48 and (row[:n] != tok.pad_id).all() and (row[n:] == tok.pad_id).all()
    messy = "  A LARGE\tRed\u00a0\u00a0CIRCLE \n"  # case and whitespace are normalised away
    assert tok.normalize(messy) == "a large red circle"
    assert torch.equal(tok.encode(messy, 16)[0], tok.encode("a large red circle", 16)[0])


def test_fixed_length_padding_and_true_length(tok: Tokenizer) -> None:
    ids, n = tok.encode("a red circle", text_len=32)
    assert ids.shape == (32,) and ids.dtype == torch.long and tok.pad_id == 0
    assert n == len(tok.tokenize("a red circle")) and 0 < n < 32
    assert ids[:n].min() >= 1 and (ids[n:] == 0).all()
    assert ids.max() < tok.vocab_size <= 320 and tok.vocab_size >= MIN_VOCAB_SIZE
    batch, lengths = tok.encode_batch(["a red circle", "a blue square at the top"], 32)
    assert batch.shape == (2, 32) and lengths.dtype == torch.long
    assert torch.equal(batch[0], ids) and lengths[0] == n


def test_truncation_warns_once_per_tokenizer(tok: Tokenizer) -> None:
    t = fresh(tok)
    long = "a large red circle in the top left and a small blue square at the bottom"
    total = len(t.tokenize(long))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, n = t.encode(long, text_len=4)
        t.encode(long, text_len=5)
        t.encode_batch([long, long], text_len=4)
    assert n == 4 and torch.equal(ids, torch.tensor(t.tokenize(long)[:4]))
    assert len(caught) == 1
    assert f"caption of {total} tokens truncated to text_len=4" in str(caught[0].message)


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "\u3000"])  # U+3000 is NFKC " "
def test_empty_caption_is_an_error(tok: Tokenizer, text: str) -> None:
    with pytest.raises(ValueError, match="caption is empty"):
        tok.encode(text, 8)
    with pytest.raises(ValueError, match="caption is empty"):
        tok.encode_batch(["a red circle", text], 8)


@pytest.mark.parametrize("text", UNSEEN)
def test_unseen_characters_round_trip(tok: Tokenizer, text: str) -> None:
    ids, n = tok.encode(text, text_len=256)
    assert 0 < n < 256 and (ids[:n] != tok.pad_id).all()
    assert tok.decode(ids) == tok.normalize(text)


def test_bad_arguments(tok: Tokenizer, captions: list[str]) -> None:
    with pytest.raises(ValueError, match="vocab_size must be >= 257"):
        Tokenizer.train(captions, vocab_size=256)
    with pytest.raises(ValueError, match="no captions"):
        Tokenizer.train(["", "  "], vocab_size=300)
    with pytest.raises(ValueError, match="text_len"):
        tok.encode("a red circle", 0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.ones(2, 3, dtype=torch.long))


def test_save_load_pickle_give_identical_encodings(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    texts = all_caption_forms()[:50] + UNSEEN
    expected = tok.encode_batch(texts, 64)
    for other in (Tokenizer.load(path), fresh(tok)):
        assert other.vocab_size == tok.vocab_size
        got = other.encode_batch(texts, 64)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp files


def test_load_bad_files(tok: Tokenizer, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    tok.save(good)
    files = {
        "garbage.json": b"not json at all",
        "other.json": b'{"hello": 1}',
        "binary.json": b"\xff\xfe\x00",
        "nopad.json": good.read_bytes().replace(b'"[PAD]"', b'"[XX]"'),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for path in [tmp_path / "missing.json", tmp_path, *(tmp_path / n for n in files)]:
        with pytest.raises(ValueError, match=str(path)):
            Tokenizer.load(path)


def test_read_captions(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "1.txt").write_text("a red circle\n\n  a blue square  \n")
    (tmp_path / "a" / "b" / "2.txt").write_text("a 😀 diamond")
    (tmp_path / "a" / "ignored.json").write_text("{}")
    assert read_captions(tmp_path) == ["a red circle", "a blue square", "a 😀 diamond"]
    (tmp_path / "a" / "bad.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="bad.txt"):
        read_captions(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("\n  \n")
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValueError, match=str(folder)):
            read_captions(folder)


def test_cli_train_and_encode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dalle.cli import main

    out = tmp_path / "tok.json"
    argv = ["tokenizer", "train", "--data", "shapes", "--num", "100", "--vocab-size", "300"]
    assert main([*argv, "--out", str(out)]) == 0
    assert Tokenizer.load(out).decode(Tokenizer.load(out).encode("A Red Circle", 8)[0]) == (
        "a red circle"
    )
    (tmp_path / "caps").mkdir()
    (tmp_path / "caps" / "x.txt").write_text("a cat on a mat\na dog on a log\n")
    folder_out = tmp_path / "folder.json"
    argv_dir = ["tokenizer", "train", "--data", str(tmp_path / "caps"), "--out", str(folder_out)]
    assert main(argv_dir) == 0 and Tokenizer.load(folder_out).vocab_size >= MIN_VOCAB_SIZE
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "a red circle"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{len(Tokenizer.load(out).tokenize('a red circle'))} tokens:")

    failing = [
        [*argv, "--out", str(out)],  # exists, no --force
        ["tokenizer", "train", "--data", "shapes", "--vocab-size", "100", "--out", "x.json"],
        ["tokenizer", "train", "--data", str(tmp_path / "nope"), "--out", "x.json"],
        ["tokenizer", "encode", "--tokenizer", str(tmp_path / "caps" / "x.txt"), "hi"],
        ["tokenizer", "encode", "--tokenizer", str(out), " "],
    ]
    for bad in failing:
        assert main(bad) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("dalle tokenizer: error: ") and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exc:
        main(["tokenizer", "train", "--data", "shapes", "--vocab-size", "x", "--out", "x.json"])
    assert exc.value.code == 2 and capsys.readouterr().err.count("\n") == 1


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(st.characters(exclude_categories=()), max_size=40),  # surrogates included
    text_len=st.integers(1, 48),
)
def test_encode_never_crashes(tok: Tokenizer, text: str, text_len: int) -> None:
    t = fresh(tok)  # so a truncation warning is not shared between examples
    norm = t.normalize(text)
    if not norm.strip():
        with pytest.raises(ValueError, match="caption is empty"):
            t.encode(text, text_len)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, n = t.encode(text, text_len)
    assert ids.shape == (text_len,) and ids.dtype == torch.long
    assert 0 < n <= text_len and (ids[n:] == t.pad_id).all() and (ids[:n] != t.pad_id).all()
    if n < text_len:  # not truncated: decoding gives back the normalised text
        assert t.decode(ids) == norm
