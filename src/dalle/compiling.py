"""``torch.compile`` behind an option, with the eager path as its fallback.

:class:`Compiled` wraps one function: the first call compiles it (Inductor: a C++ compiler on
the CPU, Triton on CUDA) with static shapes and no graph breaks allowed, later calls reuse the
compiled code (a new input shape compiles once more). When compiling fails, whatever the
reason (no compiler, an unsupported platform, a graph break), one line goes to stderr, the call
runs eagerly, and so does every later one: compiling is a speed option, never a new way to
fail. The sampler (``dalle.sampling``) compiles the cached decode step (with dynamic shapes: one
graph for every position and batch size); the transformer trainer (``dalle.train.transformer_trainer``) its
loss.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable
from typing import Any

import torch


def warn(what: str, error: BaseException) -> None:
    """The one-line warning that ``what`` could not be compiled and runs eagerly."""
    reason = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {reason[0][:160]}" if reason else type(error).__name__
    print(f"warning: torch.compile failed for {what} ({detail}); running it eagerly",
          file=sys.stderr)  # fmt: skip


class Compiled:
    """``fn`` compiled on first use (``options`` go to ``torch.compile``; by default one graph,
    static shapes); ``fallback`` (default ``fn``) runs eagerly once compiling has failed.
    ``compile_s`` sums the seconds of the calls that compiled a graph, so a caller can report
    warm-up apart from steady speed."""

    def __init__(self, fn: Callable, what: str, fallback: Callable | None = None, **options: Any):
        self.fn, self.what, self.fallback = _own_code(fn), what, fallback or fn
        self.options = {"fullgraph": True, "dynamic": False, **options}
        self.compiled: Callable | None = None
        self.failed = False
        self.compile_s = 0.0

    def __call__(self, *args: Any) -> Any:
        if self.failed:
            return self.fallback(*args)
        graphs = _graphs_compiled()
        t0 = time.perf_counter()
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.fn, **self.options)
            out = self.compiled(*args)
        except Exception as e:  # a missing compiler, a backend error, a graph break, ...
            self.failed = True
            warn(self.what, e)
            return self.fallback(*args)
        if _graphs_compiled() != graphs:
            self.compile_s += time.perf_counter() - t0
        return out


def _own_code(fn: Callable) -> Callable:
    """A copy of the function ``fn`` with a code object of its own. Dynamo keeps compiled
    graphs per code object, looks them up in turn and stops compiling past 8 of them; a copy
    per :class:`Compiled` (per model, for the decode step) keeps each one's graphs apart."""
    if not isinstance(fn, types.FunctionType):
        return fn
    code = fn.__code__.replace()
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _graphs_compiled() -> int:
    """Graphs Dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]
