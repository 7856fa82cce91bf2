"""One worker owns the model: UI and API jobs run one at a time, first come first served.

The pipeline and its patched weights are not re-entrant, so every generation and every model switch is
submitted here. A single-thread executor gives FIFO order for free; each job gets an id that ``/progress``
and the UI can follow.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class CallQueue:
    """FIFO job queue with one worker thread (started on first use, not at import)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: list[str] = []  # ids waiting or running, in order

    def submit(self, fn: Callable[..., T], *args: object, **kwargs: object) -> tuple[str, Future[T]]:
        """Queue ``fn(*args, **kwargs)``; returns ``(job id, future)``."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webui-job")
            job_id = f"task({next(self._ids)})"
            self._pending.append(job_id)
            future = self._executor.submit(self._run, job_id, fn, args, kwargs)
        return job_id, future

    def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Queue ``fn`` and wait for its result (exceptions are re-raised in the caller)."""
        return self.submit(fn, *args, **kwargs)[1].result()

    def position(self, job_id: str) -> int | None:
        """0 for the running job, n for the n-th waiting one, ``None`` when unknown or finished."""
        with self._lock:
            return self._pending.index(job_id) if job_id in self._pending else None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _run(self, job_id: str, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self._pending.remove(job_id)

    def shutdown(self) -> None:
        """Stop accepting jobs and wait for the running one."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
