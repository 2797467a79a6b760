"""Ctrl-C at a step's end: a first SIGINT is recorded and acted on by the training loop once
the step it lands in is whole (so the checkpoint saved then never holds a half-applied
optimizer update); a second one interrupts at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigint_at_step_end() -> Iterator[list[int]]:
    """While active, a first SIGINT is only recorded in the yielded list (the loop checks it
    after each whole step) and a second one raises ``KeyboardInterrupt`` as usual. Left alone
    outside the main thread or when the caller has its own SIGINT handler."""
    stop: list[int] = []
    ours = threading.current_thread() is threading.main_thread()
    if not ours or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield stop
        return

    def record(signum: int, frame: object) -> None:
        stop.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, record)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
