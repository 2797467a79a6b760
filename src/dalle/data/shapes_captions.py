"""The captioned-shapes caption grammar (shared/SHAPES.md, "Captions"): a caption is parsed into
object specs, and specs are matched one to one against objects, those of a scene's metadata or
those the pixel checker (:mod:`dalle.eval.shapes_fidelity`) finds in an image. CLIP's positives rule for
the shapes (a caption describes every scene it matches) is built on the same match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from dalle.data.shapes import COLORS, HELD_OUT, POSITIONS, SHAPES, SIZES

_CELL_OF = {phrase: cell for cell, phrase in POSITIONS.items()}
_PHRASE = re.compile(
    rf"an? (?:(?P<size>{'|'.join(SIZES)}) )?(?P<color>{'|'.join(COLORS)}) "
    rf"(?P<shape>{'|'.join(SHAPES)})(?: (?P<position>{'|'.join(POSITIONS.values())}))?"
)
_EXPECTED = "expected 'a [small|large] <colour> <shape> [position]' phrases joined by ' and '"


class Object(Protocol):
    """What a spec is matched against: a drawn object or one found in pixels."""

    shape: str
    color: str
    size: str
    col: int
    row: int


@dataclass(frozen=True)
class ObjectSpec:
    """One object phrase of a prompt; ``None`` marks an attribute the prompt leaves free."""

    shape: str
    color: str
    size: str | None = None
    col: int | None = None
    row: int | None = None

    def phrase(self) -> str:
        words = ["a", self.size, self.color, self.shape]
        if self.col is not None and self.row is not None:
            words.append(POSITIONS[(self.col, self.row)])
        return " ".join(w for w in words if w)


def parse_prompt(text: str) -> list[ObjectSpec]:
    """Prompt text -> its objects in order; raises ``ValueError`` outside the caption grammar."""
    if not isinstance(text, str):
        raise ValueError(f"expected a prompt string, got {type(text).__name__}")
    clean = " ".join(text.strip().lower().rstrip(".").split())
    specs = []
    for part in clean.split(" and "):
        m = _PHRASE.fullmatch(part)
        if m is None:
            raise ValueError(f"cannot parse prompt {text.strip()!r}: {_EXPECTED}")
        col, row = _CELL_OF[m["position"]] if m["position"] else (None, None)
        specs.append(ObjectSpec(m["shape"], m["color"], m["size"], col, row))
    return specs


def format_prompt(specs: Iterable[ObjectSpec]) -> str:
    """Objects -> prompt text in the caption grammar (inverse of ``parse_prompt``)."""
    return " and ".join(s.phrase() for s in specs)


def as_specs(prompt: str | Iterable[ObjectSpec]) -> list[ObjectSpec]:
    return parse_prompt(prompt) if isinstance(prompt, str) else list(prompt)


def is_held_out_prompt(prompt: str | Iterable[ObjectSpec]) -> bool:
    """True when the prompt names at least one held-out colour-shape pair."""
    return any((s.color, s.shape) in HELD_OUT for s in as_specs(prompt))


def _fits(spec: ObjectSpec, obj: Object) -> bool:
    return (
        spec.shape == obj.shape
        and spec.color == obj.color
        and spec.size in (None, obj.size)
        and spec.col in (None, obj.col)
        and spec.row in (None, obj.row)
    )


def matches(specs: list[ObjectSpec], found: Sequence[Object]) -> bool:
    """True when ``specs`` and ``found`` pair up one to one with every stated attribute holding."""
    if len(specs) != len(found):
        return False
    owner: dict[int, int] = {}  # found index -> spec index (bipartite matching, augmenting paths)

    def place(i: int, tried: set[int]) -> bool:
        for j, obj in enumerate(found):
            if j not in tried and _fits(specs[i], obj):
                tried.add(j)
                if j not in owner or place(owner[j], tried):
                    owner[j] = i
                    return True
        return False

    return all(place(i, set()) for i in range(len(specs)))


def positives(captions: Sequence[str], scenes: Sequence[Sequence[Object]]) -> torch.Tensor:
    """``(B, B)`` bool: caption i is satisfied by the scene of objects j (SHAPES.md's rule)."""
    specs = [parse_prompt(c) for c in captions]
    return torch.tensor([[matches(s, list(scene)) for scene in scenes] for s in specs])
