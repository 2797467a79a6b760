"""Why a generated shapes image fails its prompt: per-attribute errors, oracle@N and reranking.

:func:`dalle.eval.shapes_fidelity.satisfies` says yes or no; this module names the failure. Each wanted
object (a phrase of the prompt) is paired with at most one object found in the pixels, and
every attribute the phrase states is checked on its partner.

**Matching rule.** Wanted and found objects are paired one to one, as many pairs as the
smaller side has objects; among all such pairings the one chosen is the lexicographic minimum
of, summed over its pairs,

1. cell mismatches (a phrase that states a position prefers the object found in that cell),
2. then attribute mismatches (colour, shape, and size when stated),
3. then shape mismatches (at a tie, objects are identified by their noun, so "a red circle
   and a blue square" drawn as a blue circle and a red square reads as two colour errors),

and at a full tie the first one tried (partnered phrases as :func:`itertools.combinations`
of the prompt's, their partners as :func:`itertools.permutations` of the found objects). An image
has a perfect pairing exactly when :func:`~dalle.data.shapes_captions.matches` holds, so
:attr:`Diagnosis.correct` agrees with ``satisfies``. The search tries every pairing: fine for
the grammar's prompts (one or two phrases) against the handful of objects an image holds.

**Errors** of a wanted object with a partner: colour, shape, size (only when the phrase
states one) and cell (only when it states a position). A colour (shape) error is *from
another phrase* when the colour (shape) drawn is the one another phrase of the prompt asks
for: the attribute was bound to the wrong object, DALL-E's variable-binding failure. A wanted
object without a partner is *missing*; an image whose object count differs from the prompt's
has a *count* error (missing and extra objects alike).

**Reranking.** A prompt's result holds every candidate drawn and which of them were shown
(CLIP's picks; all of them without reranking). oracle@N: some shown image is correct. With
more candidates than picks, a prompt whose candidates are all wrong is a *generator miss*;
one with a correct candidate that CLIP did not rank first is a *reranker miss*.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations, permutations

from dalle.data.shapes_captions import Object, ObjectSpec, as_specs, is_held_out_prompt
from dalle.eval.shapes_fidelity import ImageLike, find_objects

ATTRIBUTES = ("color", "shape", "size", "cell")
GROUPS = ("1/seen", "1/held_out", "2/seen", "2/held_out")  # then "all"; more objects add rows


@dataclass(frozen=True)
class ObjectVerdict:
    """How one wanted object came out. An attribute is ``True`` when wrong, ``False`` when
    right and ``None`` when not judged (the phrase leaves it free, or nothing was matched)."""

    spec: ObjectSpec
    found: Object | None
    color: bool | None = None
    shape: bool | None = None
    size: bool | None = None
    cell: bool | None = None
    color_from_other: bool = False  # the colour drawn is another phrase's colour
    shape_from_other: bool = False  # the shape drawn is another phrase's shape

    @property
    def ok(self) -> bool:
        return self.found is not None and not any(getattr(self, a) for a in ATTRIBUTES)


@dataclass(frozen=True)
class Diagnosis:
    """One image against its prompt: a verdict per wanted object, in prompt order."""

    objects: tuple[ObjectVerdict, ...]
    found: int  # objects found in the image

    @property
    def count_wrong(self) -> bool:
        return self.found != len(self.objects)

    @property
    def missing(self) -> int:
        return sum(v.found is None for v in self.objects)

    @property
    def correct(self) -> bool:
        """Equals ``matches(specs, found)``: same count and every stated attribute holds."""
        return not self.count_wrong and all(v.ok for v in self.objects)


def _mismatches(spec: ObjectSpec, obj: Object) -> tuple[int, int, int]:
    """(cell, attribute, shape) mismatches of pairing ``spec`` with ``obj``."""
    cell = spec.col is not None and (spec.col, spec.row) != (obj.col, obj.row)
    size = spec.size is not None and spec.size != obj.size
    shape = spec.shape != obj.shape
    return int(cell), int(spec.color != obj.color) + int(shape) + int(size), int(shape)


def match(specs: Sequence[ObjectSpec], found: Sequence[Object]) -> tuple[int | None, ...]:
    """For each spec, the index of its partner in ``found`` or ``None`` (the matching rule of
    the module docstring)."""
    n = min(len(specs), len(found))
    best: tuple[int | None, ...] = (None,) * len(specs)
    best_cost: tuple[int, ...] | None = None
    for chosen in combinations(range(len(specs)), n):  # the specs that get a partner...
        for partners in permutations(range(len(found)), n):  # ...and their partners
            pairs = list(zip(chosen, partners, strict=True))
            per_pair = [_mismatches(specs[i], found[j]) for i, j in pairs]
            cost = tuple(map(sum, zip(*per_pair, strict=True))) if pairs else (0, 0, 0)
            if best_cost is None or cost < best_cost:
                pairing: list[int | None] = [None] * len(specs)
                for i, j in pairs:
                    pairing[i] = j
                best, best_cost = tuple(pairing), cost
    return best


def _verdict(spec: ObjectSpec, obj: Object | None, others: list[ObjectSpec]) -> ObjectVerdict:
    if obj is None:
        return ObjectVerdict(spec, None)
    color, shape = spec.color != obj.color, spec.shape != obj.shape
    return ObjectVerdict(
        spec,
        obj,
        color=color,
        shape=shape,
        size=None if spec.size is None else spec.size != obj.size,
        cell=None if spec.col is None else (spec.col, spec.row) != (obj.col, obj.row),
        color_from_other=color and obj.color in {o.color for o in others},
        shape_from_other=shape and obj.shape in {o.shape for o in others},
    )


def diagnose(prompt: str | Sequence[ObjectSpec], found: Sequence[Object]) -> Diagnosis:
    """The verdict on objects ``found`` in an image (e.g. by ``find_objects``) for a prompt."""
    specs = as_specs(prompt)
    pairing = match(specs, found)
    verdicts = []
    for i, (spec, j) in enumerate(zip(specs, pairing, strict=True)):
        others = specs[:i] + specs[i + 1 :]
        verdicts.append(_verdict(spec, None if j is None else found[j], others))
    return Diagnosis(tuple(verdicts), len(found))


def diagnose_image(prompt: str | Sequence[ObjectSpec], image: ImageLike) -> Diagnosis:
    """:func:`diagnose` on the objects the pixel checker finds in ``image``."""
    return diagnose(prompt, find_objects(image))


def group_of(prompt: str | Sequence[ObjectSpec]) -> str:
    """``"<objects>/<seen|held_out>"``: the row of the breakdown a prompt counts in."""
    specs = as_specs(prompt)
    return f"{len(specs)}/{'held_out' if is_held_out_prompt(specs) else 'seen'}"


@dataclass(frozen=True)
class PromptResult:
    """Every image drawn for one prompt and which were shown. ``candidates`` in CLIP's order
    (best first) when reranked; ``picks`` index into them, all of them without reranking."""

    prompt: str
    candidates: tuple[Diagnosis, ...]
    picks: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.candidates or not self.picks:
            raise ValueError(f"expected at least one candidate and one pick for {self.prompt!r}")
        if not all(0 <= i < len(self.candidates) for i in self.picks):
            raise ValueError(f"picks {self.picks} outside {len(self.candidates)} candidates")

    @property
    def shown(self) -> list[Diagnosis]:
        return [self.candidates[i] for i in self.picks]

    @property
    def reranked(self) -> bool:
        return len(self.candidates) > len(self.picks)


@dataclass
class Tally:
    """``hits`` out of ``total``; ``None`` flags are not counted."""

    hits: int = 0
    total: int = 0

    def add(self, flag: bool | None) -> None:
        if flag is not None:
            self.hits += int(flag)
            self.total += 1

    @property
    def rate(self) -> float | None:
        return self.hits / self.total if self.total else None


@dataclass
class ErrorStats:
    """Per-image and per-object counts over shown images: ``correct`` and ``count`` per image,
    ``missing`` per wanted object, each attribute per partnered object that states it, and
    ``*_from_other`` per colour (shape) error of a prompt with several phrases."""

    correct: Tally = field(default_factory=Tally)
    count: Tally = field(default_factory=Tally)
    missing: Tally = field(default_factory=Tally)
    color: Tally = field(default_factory=Tally)
    shape: Tally = field(default_factory=Tally)
    size: Tally = field(default_factory=Tally)
    cell: Tally = field(default_factory=Tally)
    color_from_other: Tally = field(default_factory=Tally)
    shape_from_other: Tally = field(default_factory=Tally)

    def add(self, d: Diagnosis) -> None:
        self.correct.add(d.correct)
        self.count.add(d.count_wrong)
        for v in d.objects:
            self.missing.add(v.found is None)
            for name in ATTRIBUTES:
                getattr(self, name).add(getattr(v, name))
            several = len(d.objects) > 1  # only then is there another phrase to borrow from
            self.color_from_other.add(v.color_from_other if v.color and several else None)
            self.shape_from_other.add(v.shape_from_other if v.shape and several else None)


@dataclass
class RerankStats:
    """Per prompt: ``oracle`` (some shown image correct), and over all candidates
    ``candidates`` (per image), ``oracle_candidates``, ``clip_top1`` (CLIP's best is correct),
    ``generator_miss``, ``reranker_miss``, and ``oracle_picks`` (per shown image, the best any
    picker could do: ``min(picks, correct candidates)``)."""

    oracle: Tally = field(default_factory=Tally)
    candidates: Tally = field(default_factory=Tally)
    oracle_candidates: Tally = field(default_factory=Tally)
    clip_top1: Tally = field(default_factory=Tally)
    generator_miss: Tally = field(default_factory=Tally)
    reranker_miss: Tally = field(default_factory=Tally)
    oracle_picks: Tally = field(default_factory=Tally)

    def add(self, r: PromptResult) -> None:
        self.oracle.add(any(d.correct for d in r.shown))
        if not r.reranked:
            return
        good = sum(d.correct for d in r.candidates)
        for d in r.candidates:
            self.candidates.add(d.correct)
        top1 = r.candidates[r.picks[0]].correct
        self.oracle_candidates.add(good > 0)
        self.clip_top1.add(top1)
        self.generator_miss.add(good == 0)
        self.reranker_miss.add(good > 0 and not top1)
        self.oracle_picks.hits += min(len(r.picks), good)
        self.oracle_picks.total += len(r.picks)


def _report(errors: ErrorStats, rerank: RerankStats, prompts: int, shown: int) -> dict:
    tallies = {**vars(errors), **{k: t for k, t in vars(rerank).items() if t.total}}
    return {
        "prompts": prompts,
        "images": errors.correct.total,
        "oracle_at": shown,
        "rates": {k: t.rate for k, t in tallies.items()},
        "counts": {k: [t.hits, t.total] for k, t in tallies.items()},
    }


def breakdown(results: Iterable[PromptResult]) -> dict[str, dict]:
    """The failure breakdown by :func:`group_of` row (``GROUPS`` first, any others sorted),
    then ``"all"``. Each row: ``prompts``, ``images`` (shown), ``oracle_at`` (the most shown
    per prompt), ``rates`` (fractions, ``None`` when nothing was counted) and ``counts``
    (``[hits, total]``) for the :class:`ErrorStats` and :class:`RerankStats` fields; the
    reranking fields appear only where some prompt had more candidates than picks."""
    rows: dict[str, tuple[ErrorStats, RerankStats, list[int]]] = {}
    for r in results:
        for key in (group_of(r.prompt), "all"):
            errors, rerank, shown = rows.setdefault(key, (ErrorStats(), RerankStats(), []))
            for d in r.shown:
                errors.add(d)
            rerank.add(r)
            shown.append(len(r.picks))
    order = [*GROUPS, *sorted(k for k in rows if k not in (*GROUPS, "all")), "all"]
    return {
        k: _report(rows[k][0], rows[k][1], len(rows[k][2]), max(rows[k][2]))
        for k in order
        if k in rows
    }
