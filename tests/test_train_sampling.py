"""Choosing a model's sampling defaults (``dalle.train.choose_sampling``): the candidate the
judge scores best wins (ties, or near ties within ``margin``, to the earlier one), each is
drawn with the same seed, and without a judge or CLIP the model's defaults stay. The CLIP path runs in
``tests/test_train_api.py``, the shapes judge in the demo's test."""

from __future__ import annotations

import dataclasses

import pytest

from dalle.pipeline import DallePipeline
from dalle.sampler import Sampler
from dalle.train import choose_sampling
from serve_fixtures import tiny_parts

CAPTIONS = ["a red circle", "a small blue square", "a green triangle at the top"]
CANDIDATES = [
    Sampler(),
    Sampler(temperature=0.5, cond_scale=2.0),
    Sampler(temperature=0.7),
    Sampler(top_k=3),
]


@pytest.fixture(scope="module")
def pipe() -> DallePipeline:
    return DallePipeline(*tiny_parts(4))


def fields(row: dict) -> Sampler:
    return Sampler(**{f.name: row[f.name] for f in dataclasses.fields(Sampler)})


def test_the_candidate_the_judge_scores_best_wins(pipe):
    judged, scores = [], iter([0.25, 0.75, 0.5, 0.75])

    def judge(pairs):
        judged.append(list(pairs))
        return {"overall": next(scores), "n": len(judged[-1])}

    best, table = choose_sampling(pipe, CAPTIONS, CANDIDATES, judge, num_images=2, seed=3)
    assert best == CANDIDATES[1]  # 0.75, and ties go to the earlier candidate
    assert [row["score"] for row in table] == [0.25, 0.75, 0.5, 0.75]
    assert [fields(row) for row in table] == CANDIDATES
    assert all(row["metric"] == "judge" and row["seconds"] >= 0 for row in table)
    assert pipe.sampler == Sampler()  # the caller decides what to keep
    for pairs, candidate in zip(judged, CANDIDATES, strict=True):
        assert [caption for caption, _ in pairs] == [c for c in CAPTIONS for _ in range(2)]
        drawn = pipe(CAPTIONS, 2, 3, candidate).images  # same seed for every candidate
        assert [im.tobytes() for _, im in pairs] == [im.tobytes() for im in drawn]


@pytest.mark.parametrize(
    ("margin", "chosen"), [(0.0, 2), (0.0624, 2), (0.0625, 1), (0.1, 1), (0.125, 0), (0.2, 0)]
)
def test_the_earliest_candidate_within_the_margin_of_the_best_wins(pipe, margin, chosen):
    scores = iter([0.8125, 0.875, 0.9375, 0.5])  # 13, 14, 15 and 8 of 16 images

    def judge(pairs):
        list(pairs)
        return {"overall": next(scores)}

    best, _ = choose_sampling(pipe, CAPTIONS, CANDIDATES, judge, margin=margin)
    assert best == CANDIDATES[chosen]


def test_without_a_judge_or_clip_the_defaults_stay(pipe):
    best, table = choose_sampling(pipe, CAPTIONS, CANDIDATES)
    assert best == pipe.sampler
    assert [fields(row) for row in table] == CANDIDATES
    assert all(row["metric"] is None and row["score"] is None for row in table)


def test_bad_arguments_are_one_line_errors(pipe):
    for args, message in [
        (([], CANDIDATES), "expected at least one caption"),
        ((CAPTIONS, []), "expected at least one candidate"),
        ((CAPTIONS, [{"temperature": 0.5}]), "expected Sampler candidates, got dict"),
    ]:
        with pytest.raises(ValueError, match=message):
            choose_sampling(pipe, *args)
    for margin in (-0.1, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
            choose_sampling(pipe, CAPTIONS, CANDIDATES, lambda p: {"overall": 1.0}, margin=margin)
    with pytest.raises(ValueError, match="rerank needs a CLIP model"):
        choose_sampling(pipe, CAPTIONS, [Sampler(rerank=2)], lambda p: {"overall": 1.0})
