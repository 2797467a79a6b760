"""A bounded queue in front of one generation worker thread.

Sampling blocks for seconds, so it runs on a single worker thread and the event loop stays free
for health checks, the page and progress streams. At most ``capacity`` jobs wait behind the
running one; one more is refused with :class:`QueueFull`, which carries a ``Retry-After``
estimate (the app answers 429). Every job has a deadline counted from its admission, checked
before it starts and at each sampled token through the pipeline's progress callback; the same
check stops a job whose client went away. A job's exception is stored on its future and the
worker goes on with the next one.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

Progress = Callable[[int, int], None]  # (tokens_done, tokens_total)


class QueueFull(Exception):
    """Every place in the queue is taken; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, capacity: int, retry_after: int):
        super().__init__(f"the generation queue is full ({capacity} waiting); retry later")
        self.retry_after = retry_after


class JobTimeout(Exception):
    """The job passed its deadline (raised inside the worker, at a token boundary)."""


class JobCancelled(Exception):
    """The job was cancelled, usually because its client disconnected."""


class Job:
    """One admitted request: ``fn(progress)`` runs on the worker; ``future`` gets its result."""

    def __init__(
        self, fn: Callable[[Progress], Any], timeout_s: float, ahead: int, on_progress: Progress
    ):
        self.fn = fn
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.ahead = ahead  # jobs admitted before this one and not finished when it came
        self.on_progress = on_progress
        self.future: Future[Any] = Future()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop; it does at its next token (or never starts)."""
        self._cancelled.set()

    def check(self) -> None:
        if self._cancelled.is_set():
            raise JobCancelled("the request was cancelled")
        if time.monotonic() > self.deadline:
            raise JobTimeout(f"generation took longer than the {self.timeout_s:g} s limit")

    def progress(self, done: int, total: int) -> None:
        self.check()
        self.on_progress(done, total)


def _ignore(done: int, total: int) -> None:
    pass


class GenerationQueue:
    """One worker thread and at most ``capacity`` waiting jobs, each limited to ``timeout_s``."""

    def __init__(self, capacity: int = 8, timeout_s: float = 120.0):
        if capacity < 0:
            raise ValueError(f"queue capacity must be >= 0 waiting jobs, got {capacity}")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout_s}")
        self.capacity = capacity
        self.timeout_s = timeout_s
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0  # waiting + running
        self._running = False
        self._current: Job | None = None
        self._stopping = False
        self._mean_s = 1.0  # moving average of a job's run time, for Retry-After
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="dalle-generate", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Cancel the running job and the waiting ones, and wait (up to ``timeout_s``) for the
        worker to end."""
        if self._thread is None:
            return
        with self._lock:
            self._stopping = True
            if self._current is not None:
                self._current.cancel()
        self._jobs.put(None)
        self._thread.join(timeout_s)
        self._thread = None
        while True:  # jobs admitted after the stop marker
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.set_exception(JobCancelled("the server is shutting down"))

    @property
    def running(self) -> int:
        return int(self._running)

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._admitted - int(self._running)

    def submit(self, fn: Callable[[Progress], Any], on_progress: Progress | None = None) -> Job:
        """Admit ``fn`` (called on the worker with a progress callback) or raise QueueFull."""
        with self._lock:
            if self._admitted > self.capacity:  # one running + capacity waiting
                wait = self._mean_s * self._admitted
                raise QueueFull(self.capacity, max(1, min(3600, math.ceil(wait))))
            job = Job(fn, self.timeout_s, self._admitted, on_progress or _ignore)
            self._admitted += 1
        self._jobs.put(job)
        return job

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self._running, self._current = True, job
                if self._stopping:
                    job.cancel()
            start, result, error = time.monotonic(), None, None
            try:
                job.check()
                result = job.fn(job.progress)
            except BaseException as e:  # stored for its request; the worker never dies of it
                error = e
            with self._lock:  # free the place before the client hears back
                self._running, self._current = False, None
                self._admitted -= 1
                if error is None:
                    self._mean_s = 0.7 * self._mean_s + 0.3 * (time.monotonic() - start)
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)
