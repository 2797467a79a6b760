"""The failure breakdown (dalle.eval.shapes_breakdown) against rendered scenes: a prompt drawn
right, and drawn with a known fault (colours or shapes swapped between the two objects, a wrong
size, a wrong cell, an object missing or extra), must be diagnosed as exactly that fault."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from dalle.data.shapes import COLORS, SHAPES, ShapeObject, draw_scene, make_sample
from dalle.eval.shapes_breakdown import (
    Diagnosis,
    PromptResult,
    breakdown,
    diagnose,
    diagnose_image,
    group_of,
    match,
)
from dalle.eval.shapes_fidelity import find_objects, matches, parse_prompt, satisfies

PROMPT = "a small orange diamond at the bottom and a large cyan triangle in the bottom left"
DIAMOND = ShapeObject("diamond", "orange", "small", 1, 2, 32, 53)
TRIANGLE = ShapeObject("triangle", "cyan", "large", 0, 2, 11, 53)


def errors(d: Diagnosis) -> dict[str, list[str]]:
    """Per wanted object (by shape and colour), the names of its errors."""
    names = ("color", "shape", "size", "cell", "color_from_other", "shape_from_other")
    return {
        f"{v.spec.color} {v.spec.shape}": ["missing"]
        if v.found is None
        else [n for n in names if getattr(v, n)]
        for v in d.objects
    }


def test_right_image_has_no_errors():
    d = diagnose_image(PROMPT, draw_scene([DIAMOND, TRIANGLE]))
    assert d.correct and not d.count_wrong and d.missing == 0
    assert errors(d) == {"orange diamond": [], "cyan triangle": []}
    assert [v.size for v in d.objects] == [False, False]  # stated: judged
    free = diagnose_image("a orange diamond and a cyan triangle", draw_scene([TRIANGLE, DIAMOND]))
    assert free.correct and [(v.size, v.cell) for v in free.objects] == [(None, None)] * 2


def test_swapped_colours_are_bound_to_the_other_object():
    image = draw_scene([replace(DIAMOND, color="cyan"), replace(TRIANGLE, color="orange")])
    d = diagnose_image(PROMPT, image)
    assert not d.correct and not d.count_wrong
    both = ["color", "color_from_other"]
    assert errors(d) == {"orange diamond": both, "cyan triangle": both}


def test_swapped_shapes_are_bound_to_the_other_object():
    image = draw_scene([replace(DIAMOND, shape="triangle"), replace(TRIANGLE, shape="diamond")])
    both = ["shape", "shape_from_other"]
    assert errors(diagnose_image(PROMPT, image)) == {"orange diamond": both, "cyan triangle": both}


def test_the_issues_example_one_colour_borrowed_one_plain_wrong():
    """Issue 20: drawn as an orange triangle in the bottom left and a magenta diamond at the
    bottom. Cells pair them up; the triangle borrowed the diamond's orange."""
    image = draw_scene([replace(DIAMOND, color="magenta"), replace(TRIANGLE, color="orange")])
    d = diagnose_image(PROMPT, image)
    assert errors(d) == {
        "orange diamond": ["color"],
        "cyan triangle": ["color", "color_from_other"],
    }


def test_wrong_size_and_wrong_cell_are_named():
    small = replace(TRIANGLE, size="small")
    assert errors(diagnose_image(PROMPT, draw_scene([DIAMOND, small]))) == {
        "orange diamond": [],
        "cyan triangle": ["size"],
    }
    moved = replace(DIAMOND, col=2, row=0, cx=53, cy=11)  # to the top right
    assert errors(diagnose_image(PROMPT, draw_scene([moved, TRIANGLE]))) == {
        "orange diamond": ["cell"],
        "cyan triangle": [],
    }


def test_missing_and_extra_objects_are_count_errors():
    d = diagnose_image(PROMPT, draw_scene([TRIANGLE]))
    assert d.count_wrong and d.missing == 1 and not d.correct
    assert errors(d) == {"orange diamond": ["missing"], "cyan triangle": []}
    extra = ShapeObject("circle", "red", "small", 2, 0, 53, 11)
    d = diagnose_image(PROMPT, draw_scene([DIAMOND, TRIANGLE, extra]))
    assert d.count_wrong and d.missing == 0 and not d.correct
    assert errors(d) == {"orange diamond": [], "cyan triangle": []}


def test_without_positions_a_tie_keeps_the_shapes():
    """No cell to go by: both pairings cost two errors; the rule names them colour errors."""
    image = draw_scene([replace(DIAMOND, color="cyan"), replace(TRIANGLE, color="orange")])
    d = diagnose_image("a orange diamond and a cyan triangle", image)
    both = ["color", "color_from_other"]
    assert errors(d) == {"orange diamond": both, "cyan triangle": both}


def test_match_pairs_by_cell_first():
    specs = parse_prompt("a red circle in the top left and a blue square in the center")
    found = find_objects(
        draw_scene(
            [
                ShapeObject("square", "blue", "small", 0, 0, 11, 11),  # right look, wrong cell
                ShapeObject("circle", "red", "small", 1, 1, 32, 32),
            ]
        )
    )
    assert [(o.col, o.row) for o in found] == [(0, 0), (1, 1)]
    assert match(specs, found) == (0, 1)  # by cell, though both then miss colour and shape
    assert match(specs, found[:1]) == (0, None)
    assert match(specs, []) == (None, None)


def test_correct_agrees_with_matches_on_dataset_scenes():
    rng = random.Random(7)
    for i in range(150):
        s = make_sample(7, ("train", "holdout")[i % 2], i)
        found = find_objects(s.image)
        specs = parse_prompt(s.caption)
        k = rng.randrange(len(specs))
        wrong = [
            replace(specs[k], color=rng.choice([c for c in COLORS if c != specs[k].color])),
            replace(specs[k], shape=rng.choice([h for h in SHAPES if h != specs[k].shape])),
            replace(specs[k], col=None, row=None, size=None),
            replace(specs[k], size="small" if s.objects[k].size == "large" else "large"),
        ][i % 4]
        for variant in (specs, specs[:k] + [wrong] + specs[k + 1 :]):
            assert diagnose(variant, found).correct == matches(variant, found), s.caption
        assert diagnose(specs, found).correct and satisfies(s.caption, s.image)


def test_group_of():
    assert group_of("a red circle") == "1/seen"
    assert group_of("a green triangle") == "1/held_out"
    assert group_of("a red circle and a white square") == "2/held_out"
    assert group_of(PROMPT) == "2/seen"


def test_breakdown_rates_oracle_and_reranking():
    right = draw_scene([DIAMOND, TRIANGLE])
    swapped = draw_scene([replace(DIAMOND, color="cyan"), replace(TRIANGLE, color="orange")])
    good, bad = diagnose_image(PROMPT, right), diagnose_image(PROMPT, swapped)
    circle = diagnose_image("a red circle", draw_scene([replace(DIAMOND, shape="circle")]))
    results = [
        PromptResult(PROMPT, (bad, good, bad, bad), (0, 2)),  # CLIP ranked a wrong one first
        PromptResult(PROMPT, (bad, bad, bad, bad), (0, 1)),  # no candidate right
        PromptResult("a red circle", (circle, circle), (0, 1)),  # not reranked, all wrong
    ]
    rows = breakdown(results)
    assert list(rows) == ["1/seen", "2/seen", "all"]
    two = rows["2/seen"]
    assert two["prompts"] == 2 and two["images"] == 4 and two["oracle_at"] == 2
    c = two["counts"]
    assert c["correct"] == [0, 4] and c["oracle"] == [0, 2] and c["count"] == [0, 4]
    assert c["color"] == [8, 8] and c["color_from_other"] == [8, 8] and c["shape"] == [0, 8]
    assert c["size"] == [0, 8] and c["cell"] == [0, 8] and c["missing"] == [0, 8]
    assert c["candidates"] == [1, 8] and c["oracle_candidates"] == [1, 2]
    assert c["clip_top1"] == [0, 2] and c["generator_miss"] == [1, 2]
    assert c["reranker_miss"] == [1, 2] and c["oracle_picks"] == [1, 4]
    assert two["rates"]["color"] == 1.0 and two["rates"]["oracle_picks"] == 0.25
    one = rows["1/seen"]
    assert one["counts"]["color"] == [2, 2] and one["counts"]["color_from_other"] == [0, 0]
    assert one["rates"]["color_from_other"] is None and "clip_top1" not in one["counts"]
    assert rows["all"]["counts"]["correct"] == [0, 6] and rows["all"]["prompts"] == 3
    with pytest.raises(ValueError, match="outside"):
        PromptResult(PROMPT, (good,), (1,))
