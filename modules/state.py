"""The process's mutable state: one :class:`AppState`, built by ``webui.py`` and passed down.

:class:`JobState` is the progress of the job that is running: written by the sampling loop, read by
``/sdapi/v1/progress`` and the UI. Interrupt and skip are requests the loop polls between steps.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from modules.call_queue import CallQueue
from modules.devices import DevicePolicy
from modules.extensions import ExtensionParts
from modules.extra_networks import ExtraNetworkRegistry
from modules.hashes import HashCache
from modules.options import Options
from modules.paths import Paths
from modules.sd_models import ModelManager
from modules.textual_inversion.database import EmbeddingDatabase


@dataclass
class JobState:
    """Progress of the running job (A1111's ``shared.state`` fields, without the globals)."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    job_timestamp: str = "0"
    textinfo: str | None = None
    time_start: float | None = None
    current_latent: object | None = None  # torch.Tensor (B, 4, h, w): the latest latents kept for the live preview
    id_live_preview: int = 0  # counts the latents kept, so a client can ask only for a newer preview
    outer: bool = False  # a script (X/Y/Z plot) runs several jobs as one: their begin/end keep its counts
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, job: str, job_count: int) -> None:
        """Start a job of ``job_count`` batches; inside a script's run (:meth:`outer_run`), go on counting."""
        with self._lock:
            if self.outer:
                self.sampling_step = self.sampling_steps = 0
                self.skipped = False
                return
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.sampling_step = self.sampling_steps = 0
            self.interrupted = self.skipped = False
            self.job_timestamp = time.strftime("%Y%m%d%H%M%S")
            self.time_start = time.time()
            self.textinfo = None
            self.current_latent = None

    def next_batch(self) -> None:
        """One batch (``n_iter`` iteration) is done; a skip only ever applies to the batch it was sent in."""
        with self._lock:
            self.job_no += 1
            self.sampling_step = 0
            self.skipped = False

    def next_pass(self) -> None:
        """The batch's first pass is done and its hires pass follows: one more of ``job_count``, as in A1111.
        A skip sent during the first pass still applies (it skips the whole batch)."""
        with self._lock:
            self.job_no += 1
            self.sampling_step = 0

    def set_step(self, step: int, steps: int) -> None:
        with self._lock:
            self.sampling_step, self.sampling_steps = step, steps

    def set_latent(self, latents: object) -> None:
        """Keep a copy of the running job's latents for ``/progress``'s live preview (decoded only when asked)."""
        with self._lock:
            self.current_latent = latents
            self.id_live_preview += 1

    def live_latent(self) -> tuple[object | None, int]:
        """``(latents kept for the preview or None, id_live_preview)``, read together."""
        with self._lock:
            return self.current_latent, self.id_live_preview

    @contextlib.contextmanager
    def outer_run(self, job: str, job_count: int) -> Iterator[None]:
        """A run of several jobs that counts as one (A1111's script ``job_count``): an interrupt stops them all,
        and progress goes over ``job_count`` batches in all; it ends with the block, even on error."""
        self.begin(job, job_count)
        with self._lock:
            self.outer = True
        try:
            yield
        finally:
            with self._lock:
                self.outer = False
            self.end()

    def end(self) -> None:
        with self._lock:
            if self.outer:
                self.sampling_step = self.sampling_steps = 0
                return
            self.current_latent = None
            self.job = ""
            self.job_count = self.job_no = 0
            self.sampling_step = self.sampling_steps = 0
            self.time_start = None

    def interrupt(self) -> None:
        """Stop the running job after the current step; what is done so far is still decoded and saved."""
        with self._lock:
            if self.job:
                self.interrupted = True

    def skip(self) -> None:
        """Finish the current batch early and go on with the next one."""
        with self._lock:
            if self.job:
                self.skipped = True

    @property
    def should_stop_batch(self) -> bool:
        return self.interrupted or self.skipped

    def progress(self) -> tuple[float, float]:
        """A1111's ``(progress 0..1, eta_relative seconds)``."""
        with self._lock:
            if not self.job_count or self.time_start is None:
                return 0.0, 0.0
            value = 0.01 + self.job_no / self.job_count
            if self.sampling_steps:
                value += self.sampling_step / self.sampling_steps / self.job_count
            value = min(value, 1.0)
            elapsed = time.time() - self.time_start
            return value, elapsed / value - elapsed


@dataclass
class AppState:
    """Everything the process owns. Built once in ``webui.py``; tests build their own."""

    args: argparse.Namespace
    paths: Paths
    opts: Options
    policy: DevicePolicy
    hashes: HashCache
    models: ModelManager
    embeddings: EmbeddingDatabase | None = None
    networks: ExtraNetworkRegistry = field(default_factory=ExtraNetworkRegistry)
    libraries: dict[str, object] = field(default_factory=dict)  # network libraries by type ("lora", "hypernet")
    extension_parts: list[ExtensionParts] = field(default_factory=list)
    queue: CallQueue = field(default_factory=CallQueue)
    job: JobState = field(default_factory=JobState)
    notices: list[str] = field(default_factory=list)  # shown at the top of the UI (e.g. "demo model in use")
