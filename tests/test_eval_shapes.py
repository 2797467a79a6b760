"""The pixel-only prompt checker (dalle.eval.shapes_fidelity): accuracy on the shapes dataset and contract.

Measured accuracies print as lines starting ``eval-shapes`` (run ``pytest -s`` to see them).
Degradation: a separable Gaussian blur written in numpy (sigma 0.6 px, kernel radius 3 px,
black padding), then Gaussian noise of sigma 10/255 from a seeded numpy generator, clipped and
rounded to uint8.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from dalle.data.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    SPLITS,
    ShapeObject,
    draw_scene,
    make_sample,
    write_folder,
)
from dalle.eval.shapes_fidelity import (
    FoundObject,
    ObjectSpec,
    fidelity,
    find_objects,
    format_prompt,
    is_held_out_prompt,
    matches,
    parse_prompt,
    read_folder,
    read_manifest,
    satisfies,
)

SEED = 2024
N_CLEAN = 2000  # per split
N_NOISY = 1000  # per split
KINDS = ("color", "shape", "size", "cell", "add", "drop")


@pytest.fixture(scope="module")
def scored() -> dict:
    """Per split: ``(sample, objects found in its image)`` for the first ``N_CLEAN`` samples."""
    out = {}
    for split in SPLITS:
        samples = [make_sample(SEED, split, i) for i in range(N_CLEAN)]
        out[split] = [(s, find_objects(s.image)) for s in samples]
    return out


def truth(sample) -> list[FoundObject]:
    """The sample's objects as the checker would ideally find them (from metadata)."""
    return [
        FoundObject(o.shape, o.color, o.size, o.col, o.row, area=0, bbox=o.box)
        for o in sample.objects
    ]


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Blur an ``(H, W, C)`` array along H then W with a sampled, normalised Gaussian."""
    r = int(np.ceil(5 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = a.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(r, r) if ax == axis else (0, 0) for ax in range(out.ndim)]
        p = np.pad(out, pad)  # zeros: the canvas continues black
        out = sum(k[j] * np.take(p, range(j, j + n), axis=axis) for j in range(2 * r + 1))
    return out


def degrade(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    a = gaussian_blur(np.asarray(image), 0.6) + rng.normal(0.0, 10.0, (64, 64, 3))
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("split", SPLITS)
def test_clean_images_satisfy_their_captions(scored, split):
    ok = sum(matches(parse_prompt(s.caption), found) for s, found in scored[split])
    print(f"eval-shapes clean {split}: {ok}/{N_CLEAN} = {ok / N_CLEAN:.2%}")
    assert ok == N_CLEAN
    for s, found in scored[split][:500]:  # not only the verdict: every attribute
        assert sorted(attributes(found)) == sorted(attributes(truth(s)))


def attributes(objects: list[FoundObject]) -> list[tuple]:
    return [(o.shape, o.color, o.size, o.col, o.row) for o in objects]


@pytest.mark.parametrize("split", SPLITS)
def test_blurred_noisy_images_mostly_satisfy(scored, split):
    rng = np.random.default_rng([SEED, SPLITS.index(split)])
    ok = sum(satisfies(s.caption, degrade(s.image, rng)) for s, _ in scored[split][:N_NOISY])
    print(f"eval-shapes blur0.6+noise10 {split}: {ok}/{N_NOISY} = {ok / N_NOISY:.2%}")
    assert ok / N_NOISY >= 0.98


def mutate(sample, kind: str, rng: random.Random) -> list[ObjectSpec] | None:
    """The caption's objects with one change of ``kind``; ``None`` when it does not apply."""
    specs = parse_prompt(sample.caption)
    k = rng.randrange(len(specs))
    s, o = specs[k], sample.objects[k]  # caption phrases follow drawing order
    if kind == "color":
        specs[k] = replace(s, color=rng.choice([c for c in COLORS if c != s.color]))
    elif kind == "shape":
        specs[k] = replace(s, shape=rng.choice([h for h in SHAPES if h != s.shape]))
    elif kind == "size":  # flip a stated size, or state the wrong one
        specs[k] = replace(s, size="small" if o.size == "large" else "large")
    elif kind == "cell":  # move a stated position, or state a wrong one
        col, row = rng.choice([c for c in POSITIONS if c != (o.col, o.row)])
        specs[k] = replace(s, col=col, row=row)
    elif kind == "add":
        used = {(x.col, x.row) for x in sample.objects}
        col, row = rng.choice([c for c in POSITIONS if c not in used])
        where = rng.choice([(col, row), (None, None)])
        new = ObjectSpec(
            rng.choice(SHAPES),
            rng.choice(list(COLORS)),
            rng.choice(["small", "large", None]),
            *where,
        )
        specs.insert(rng.randrange(len(specs) + 1), new)
    elif kind == "drop":
        if len(specs) < 2:
            return None
        del specs[k]
    return specs


def test_mutated_captions_fail(scored):
    rng = random.Random(SEED)
    tally = {kind: [0, 0] for kind in KINDS}  # [failed, valid mutations]
    skipped = 0
    items = [item for split in SPLITS for item in scored[split]]
    for i, (sample, found) in enumerate(items):
        kind = KINDS[i % len(KINDS)]
        specs = mutate(sample, kind, rng)
        if specs is None:
            continue
        if matches(specs, truth(sample)):  # still true of the scene: not a real mutation
            skipped += 1
            continue
        failed = not matches(specs, found)
        tally[kind][0] += failed
        tally[kind][1] += 1
        if i < 60:  # the text route agrees with the object route
            assert satisfies(format_prompt(specs), sample.image) is not failed
    total = sum(v for _, v in tally.values())
    for kind, (bad, n) in tally.items():
        print(f"eval-shapes mutation {kind}: fails on {bad}/{n} = {bad / n:.2%}")
    print(f"eval-shapes mutations: {total} scored, {skipped} still true of the scene skipped")
    assert total >= 1000
    for kind, (bad, n) in tally.items():
        assert n >= 100, kind
        assert bad / n >= 0.99, kind


def every_phrase() -> list[tuple[str, ObjectSpec]]:
    out = []
    for shape in SHAPES:
        for color in COLORS:
            for size in (None, "small", "large"):
                for cell in (None, *POSITIONS):
                    col, row = cell if cell else (None, None)
                    words = ["a", size, color, shape, POSITIONS[cell] if cell else None]
                    phrase = " ".join(w for w in words if w)
                    out.append((phrase, ObjectSpec(shape, color, size, col, row)))
    return out


def test_parse_round_trips_every_phrase_form():
    phrases = every_phrase()
    assert len(phrases) == 4 * 8 * 3 * 10
    for phrase, spec in phrases:
        assert parse_prompt(phrase) == [spec]
        assert format_prompt([spec]) == phrase
    for (p1, s1), (p2, s2) in zip(phrases, reversed(phrases), strict=True):
        assert parse_prompt(f"{p1} and {p2}") == [s1, s2]
        assert format_prompt([s1, s2]) == f"{p1} and {p2}"


def test_parse_agrees_with_dataset_captions(scored):
    for split in SPLITS:
        for sample, _ in scored[split][:500]:
            specs = parse_prompt(sample.caption)
            assert format_prompt(specs) == sample.caption
            assert len(specs) == len(sample.objects)
            for s, o in zip(specs, sample.objects, strict=True):
                assert (s.shape, s.color) == (o.shape, o.color)
                assert s.size in (None, o.size)
                assert (s.col, s.row) in ((None, None), (o.col, o.row))


def test_parse_tolerates_case_whitespace_and_a_final_period():
    expected = [ObjectSpec("circle", "red", "large", 0, 0), ObjectSpec("square", "blue")]
    assert parse_prompt("  A Large RED circle in the Top  Left and a blue square.\n") == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "a purple blob",
        "",
        "red circle",
        "a red circle and",
        "a red circle at the top left",
        "a huge red circle",
        "a red circle and and a blue square",
        "two red circles",
    ],
)
def test_unparseable_prompt_raises_naming_it(prompt):
    with pytest.raises(ValueError) as e:
        parse_prompt(prompt)
    message = str(e.value)
    assert f"cannot parse prompt {prompt!r}" in message and "\n" not in message


def scene(*objects: tuple[str, str, str, int, int]) -> Image.Image:
    """Objects ``(shape, colour, size, col, row)`` drawn at their cells' centres."""
    centre = [ShapeObject(*o, 11 + 21 * o[3], 11 + 21 * o[4]) for o in objects]
    return draw_scene(centre)


def test_satisfies_is_one_to_one_with_free_attributes():
    image = scene(("circle", "red", "large", 0, 0), ("square", "blue", "small", 2, 2))
    assert satisfies("a red circle and a blue square", image)
    assert satisfies("a blue square and a red circle in the top left", image)
    assert satisfies("a large red circle in the top left and a small blue square", image)
    assert not satisfies("a red circle", image)  # an extra object
    assert not satisfies("a red circle and a blue square and a red circle", image)
    assert not satisfies("a small red circle and a blue square", image)
    assert not satisfies("a red circle and a blue square in the center", image)
    twins = scene(("circle", "red", "small", 1, 1), ("circle", "red", "large", 0, 0))
    assert satisfies("a red circle and a small red circle in the center", twins)
    assert satisfies("a red circle in the top left and a red circle", twins)
    assert not satisfies("a small red circle and a small red circle", twins)


def test_find_objects_accepts_pil_array_tensor_any_size():
    image = make_sample(SEED, "holdout", 3).image
    expected = find_objects(image)
    assert len(expected) >= 1
    assert find_objects(np.asarray(image)) == expected
    assert find_objects(torch.from_numpy(np.asarray(image) / 255.0).permute(2, 0, 1)) == expected
    assert find_objects(image.resize((256, 256), Image.Resampling.NEAREST)) == expected
    attrs = [(o.shape, o.color, o.size, o.col, o.row) for o in expected]
    big = image.resize((200, 200), Image.Resampling.BILINEAR)
    assert [(o.shape, o.color, o.size, o.col, o.row) for o in find_objects(big)] == attrs
    for bad in (
        np.zeros((64, 64, 3)),
        np.zeros((64, 64), np.uint8),
        torch.zeros(3, 8, 8, dtype=torch.uint8),
        "image.png",
    ):
        with pytest.raises(ValueError):
            find_objects(bad)


def test_empty_and_speck_images_have_no_objects():
    black = np.zeros((64, 64, 3), np.uint8)
    assert find_objects(black) == []
    black[30:32, 30] = 255  # a two-pixel speck
    assert find_objects(black) == []
    assert not satisfies("a red circle", black)


def test_is_held_out_prompt():
    assert is_held_out_prompt("a green triangle")
    assert is_held_out_prompt("a red circle and a small white square at the top")
    assert not is_held_out_prompt("a green square and a blue circle")
    assert is_held_out_prompt([ObjectSpec("circle", "orange")])


def test_fidelity_contract():
    empty = fidelity([])
    assert empty == {
        "seen": None,
        "held_out": None,
        "overall": None,
        "n": 0,
        "counts": {"seen": [0, 0], "held_out": [0, 0]},
    }
    red = scene(("circle", "red", "large", 1, 1))
    white = scene(("square", "white", "small", 0, 2))
    result = fidelity(
        [
            ("a red circle", red),
            ("a blue circle", red),
            ("a white square in the bottom left", white),
        ]
    )
    assert result["seen"] == 0.5 and result["held_out"] == 1.0
    assert result["overall"] == pytest.approx(2 / 3) and result["n"] == 3
    assert result["counts"] == {"seen": [1, 2], "held_out": [1, 1]}
    assert fidelity([("a green triangle", red)])["seen"] is None
    with pytest.raises(ValueError, match="a purple blob"):
        fidelity([("a purple blob", red)])


def test_read_folder_and_manifest_errors(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="a.png"):
        read_folder(tmp_path)  # no caption beside it
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        read_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        read_folder(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("a purple blob\n")
    with pytest.raises(ValueError, match=r"a\.txt: cannot parse prompt 'a purple blob'"):
        read_folder(tmp_path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('\n{"prompt": "a red circle", "file": "a.png"}\n{"prompt": "blob"}\n')
    with pytest.raises(ValueError, match="line 3"):
        read_manifest(manifest)
    manifest.write_text('{"prompt": "a red blob", "file": "a.png"}\n')
    with pytest.raises(ValueError, match="line 1: cannot parse prompt 'a red blob'"):
        read_manifest(manifest)
    manifest.write_text('{"prompt": "a red circle", "file": "nope.png"}\n')
    with pytest.raises(ValueError, match="nope.png"):
        read_manifest(manifest)
    manifest.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1"):
        read_manifest(manifest)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from dalle.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_on_folder(tmp_path, capsys):
    write_folder(tmp_path / "d", "holdout", 12, SEED, progress=False)
    rc, out, _ = run_cli(["eval", "shapes", str(tmp_path / "d")], capsys)
    assert rc == 0 and len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert result["n"] == 12 and result["overall"] == 1.0 and result["held_out"] == 1.0
    assert result["seen"] is None and result["counts"]["held_out"] == [12, 12]


def test_cli_on_manifest(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(6):
        s = make_sample(SEED, "train", i)
        s.image.save(tmp_path / "img" / f"{i}.png")
        prompt = s.caption if i < 4 else "a white square and a green triangle"
        lines.append(json.dumps({"prompt": prompt, "file": f"img/{i}.png"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    rc, out, _ = run_cli(["eval", "shapes", "--manifest", str(tmp_path / "m.jsonl")], capsys)
    result = json.loads(out)
    assert rc == 0 and result["n"] == 6
    assert result["counts"] == {"seen": [4, 4], "held_out": [0, 2]}
    assert set(result) >= {"seen", "held_out", "overall", "n", "counts"}


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing"
    for argv in (
        ["eval", "shapes", str(missing)],
        ["eval", "shapes"],
        ["eval", "shapes", str(tmp_path), "--manifest", str(missing)],
    ):
        rc, out, err = run_cli(argv, capsys)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, argv
    rc, _, err = run_cli(["eval", "shapes", str(missing)], capsys)
    assert str(missing) in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    (tmp_path / "bad" / "x.txt").write_text("a red circle\n")
    rc, out, err = run_cli(["eval", "shapes", str(tmp_path / "bad")], capsys)
    assert rc == 2 and out == "" and "x.png" in err and len(err.strip().splitlines()) == 1
