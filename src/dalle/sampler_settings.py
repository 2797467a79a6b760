"""What a sampler can be told: every sampling setting, each with its kind, label and help,
checked once, when the settings are built. Torch-free, so the command line can derive its flags
from these fields without loading a model (``dalle.sampler.Sampler`` adds the drawing).

Each setting is a dataclass field declared with :func:`setting`: its kind (a key of
:data:`KINDS`: how it is checked), its label (:meth:`SamplerSettings.describe`) and its help.
The command line (``dalle generate``) and the HTTP API (``dalle serve``) derive their options
from these fields, so a new setting is a field here, and its effect in ``dalle.sampler``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar


def _real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# A setting's kind -> (its check, what the check asks for): the one place a value is judged.
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda v: _real(v) and math.isfinite(v) and v > 0, "a finite number > 0"),
    "count": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "an integer >= 1",
    ),  # fmt: skip
    "probability": (lambda v: _real(v) and 0 < v <= 1, "in (0, 1]"),
    "finite": (lambda v: _real(v) and math.isfinite(v), "finite"),
}


class SettingError(ValueError):
    """A sampling setting out of range: ``name`` (the field), ``reason`` (what it must be, what
    came). The command line and the server name the flag or field in their own words."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name} {reason}")
        self.name, self.reason = name, reason


def setting(default: Any, kind: str, label: str, help: str) -> Any:
    """A :class:`Sampler` field: ``kind`` is a key of :data:`KINDS`; a ``None`` default makes
    the setting optional (``None``, or ``off`` on the command line, turns it off); ``label``
    names it in :meth:`Sampler.describe`, ``help`` on the command line and in the API schema."""
    if kind not in KINDS:
        raise ValueError(f"unknown setting kind {kind!r}; expected one of {sorted(KINDS)}")
    return dataclasses.field(default=default, metadata={"kind": kind, "label": label, "help": help})


@dataclass(frozen=True)
class SamplerSettings:
    """Every sampling setting, checked when built. The defaults are plain sampling, the
    behaviour of a model folder without ``generation.json``. ``rerank`` is the pipeline's: it
    draws that many candidates per image and keeps the best by CLIP."""

    temperature: float = setting(1.0, "positive", "temperature", "softmax temperature")
    top_k: int | None = setting(None, "count", "top-k", "sample from the k likeliest codes")
    top_p: float | None = setting(
        None, "probability", "top-p", "nucleus sampling: the likeliest codes holding this mass"
    )
    min_p: float | None = setting(
        None, "probability", "min-p",
        "keep the codes at least this fraction as likely as the likeliest (Nguyen et al. 2024)",
    )  # fmt: skip
    typical_p: float | None = setting(
        None, "probability", "typical-p",
        "locally typical sampling: the codes nearest the entropy holding this mass (Meister et al. 2023)",
    )  # fmt: skip
    cond_scale: float = setting(
        1.0, "finite", "guidance", "classifier-free guidance scale, 1 = off"
    )
    rerank: int | None = setting(
        None, "count", "rerank", "draw N candidates per image and keep the best by CLIP"
    )

    ADDED_FIELDS: ClassVar[tuple[str, ...]] = (
        "min_p",
        "typical_p",
    )  # older generation.json files lack them

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check, wanted = KINDS[f.metadata["kind"]]
            if value is None and f.default is None:
                continue
            if not check(value):
                raise SettingError(f.name, f"must be {wanted}, got {value!r}")

    def override(self, **fields: Any) -> SamplerSettings:
        """A copy with the given fields replaced (``top_k=None`` turns top-k off); an unknown
        name is a ``ValueError``."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise ValueError(f"unknown sampling setting(s) {unknown}; expected some of {names}")
        return dataclasses.replace(self, **fields)

    def describe(self) -> str:
        """One line: ``temperature 0.5, top-k off, top-p off, min-p off, guidance 2, rerank off``."""
        parts = [(f.metadata["label"], getattr(self, f.name)) for f in dataclasses.fields(self)]
        return ", ".join(f"{label} {'off' if v is None else f'{v:g}'}" for label, v in parts)
