"""One worker owns the model: UI and API jobs run one at a time, first come first served.

The pipeline and its patched weights are not re-entrant, so every generation and every model switch is
submitted here. A single-thread executor gives FIFO order for free. Each job has an id (``task(n)``, or the
client's own through A1111's ``force_task_id``) that ``/internal/progress`` and the UI can follow: waiting,
running, or among the recently finished ones.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How many finished ids are remembered for ``/internal/progress`` (A1111 keeps 16).
FINISHED_KEPT = 64


class DuplicateTaskError(ValueError):
    """A job id asked for (``force_task_id``) is already waiting or running."""


class CallQueue:
    """FIFO job queue with one worker thread (started on first use, not at import)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: list[str] = []  # ids waiting or running, in order; the running one is first
        self._running: str | None = None
        self._finished: deque[str] = deque(maxlen=FINISHED_KEPT)

    def submit(self, fn: Callable[..., T], *args: object, task_id: str | None = None,
               **kwargs: object) -> tuple[str, Future[T]]:
        """Queue ``fn(*args, **kwargs)``; returns ``(job id, future)``.

        Raises:
            DuplicateTaskError: ``task_id`` is given and a job with that id is waiting or running.
        """
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webui-job")
            if task_id is None:
                task_id = f"task({next(self._ids)})"
            elif task_id in self._pending:
                raise DuplicateTaskError(f"a job with id {task_id!r} is already queued; choose another force_task_id")
            self._pending.append(task_id)
            future = self._executor.submit(self._run, task_id, fn, args, kwargs)
        return task_id, future

    def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Queue ``fn`` and wait for its result (exceptions are re-raised in the caller)."""
        return self.submit(fn, *args, **kwargs)[1].result()

    def position(self, job_id: str) -> int | None:
        """0 for the running job, n for the n-th waiting one, ``None`` when unknown or finished."""
        with self._lock:
            return self._pending.index(job_id) if job_id in self._pending else None

    def status(self, job_id: str) -> tuple[bool, int | None, int, bool]:
        """``(running, place among the waiting jobs (0-based) or None, number waiting, recently finished)``."""
        with self._lock:
            waiting = [t for t in self._pending if t != self._running]
            place = waiting.index(job_id) if job_id in waiting else None
            return job_id == self._running, place, len(waiting), job_id in self._finished

    @property
    def running(self) -> str | None:
        """The id of the job the worker is running now."""
        with self._lock:
            return self._running

    @property
    def waiting(self) -> list[str]:
        """Ids of the jobs not started yet, in the order they will run."""
        with self._lock:
            return [t for t in self._pending if t != self._running]

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _run(self, job_id: str, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        with self._lock:
            self._running = job_id
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self._running = None
                self._pending.remove(job_id)
                self._finished.append(job_id)

    def shutdown(self, interrupt: Callable[[], object] | None = None) -> None:
        """Stop accepting jobs, drop the waiting ones, ``interrupt()`` the running one and wait for it to stop."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            if interrupt is not None:
                interrupt()
            executor.shutdown(wait=True)
