"""Follow a job on the shared queue for the page: its place in the queue, a progress bar with ETA, the live preview.

The UI submits to the same :class:`~modules.call_queue.CallQueue` as the API, so a page (or a second browser tab)
whose job waits behind another sees where it stands. Everything here reads state; the sampling loop keeps the
latents for the preview (``JobState.set_latent``) and :mod:`modules.previews` turns them into a picture.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass

from modules import previews
from modules.state import AppState

POLL_SECONDS = 0.25  # how often the page's bar is refreshed while a job runs


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the bar shows at one moment (read from the queue and the JobState)."""

    running: bool  # this job is the one the worker runs now
    place: int | None  # 0-based place among the waiting jobs (None: not waiting)
    waiting: int  # how many jobs wait in all
    progress: float  # 0..1 of the running job
    eta: float  # seconds left (A1111's eta_relative)
    text: str  # "Batch 1/2, step 5/20"


def snapshot(state: AppState, job_id: str | None) -> Snapshot:
    """Where ``job_id`` stands; with ``job_id=None`` the job the worker runs now, whoever sent it."""
    job = state.job
    if job_id is None:
        running, place, waiting = bool(job.job), None, len(state.queue.waiting)
    else:
        running, place, waiting, _ = state.queue.status(job_id)
    value, eta = job.progress() if running else (0.0, 0.0)
    text = ""
    if running and job.job_count:
        text = f"Batch {min(job.job_no + 1, job.job_count)}/{job.job_count}"
        if job.sampling_steps:
            text += f", step {job.sampling_step}/{job.sampling_steps}"
    return Snapshot(running, place, waiting, value, eta, text)


def format_eta(seconds: float) -> str:
    """A1111's progress bar time: ``45s``, ``2m 05s``, ``1h 02m 03s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def render(snap: Snapshot, preview_src: str | None = None, ahead_text: str = "") -> str:
    """The progress block's HTML: the bar (or the place in the queue) and the live preview under it."""
    if snap.place is not None:
        ahead = "1 job" if snap.place == 0 else f"{snap.place + 1} jobs"
        label = f"In queue: {ahead} ahead of this one"
        if ahead_text:
            label += f" (running: {ahead_text})"
        bar = f'<div class="webui-progress-bar queued"><span class="webui-progress-text">{html.escape(label)}</span></div>'
    elif snap.running:
        percent = int(snap.progress * 100)
        label = f"{percent}% ETA: {format_eta(snap.eta)}" + (f" · {snap.text}" if snap.text else "")
        bar = (f'<div class="webui-progress-bar" data-progress="{percent}">'
               f'<div class="webui-progress-fill" style="width:{percent}%"></div>'
               f'<span class="webui-progress-text">{html.escape(label)}</span></div>')
    else:
        bar = '<div class="webui-progress-bar"><span class="webui-progress-text">Starting…</span></div>'
    image = f'<img class="webui-live-preview" alt="Live preview" src="{preview_src}">' if preview_src else ""
    return f'<div class="webui-progress">{bar}{image}</div>'


class PreviewTracker:
    """Turns the latents the sampler kept into a data URL, only when newer ones arrived."""

    def __init__(self) -> None:
        self._seen = -1
        self.src: str | None = None

    def update(self, state: AppState) -> str | None:
        latents, number = state.job.live_latent()
        if latents is not None and number != self._seen:
            self._seen = number
            self.src = _data_url(previews.preview_image(latents))
        return self.src


def follow(state: AppState, job_id: str, future: Future, poll: float = POLL_SECONDS) -> Iterator[str]:
    """Yield the progress HTML of ``job_id`` until its future is done (then return; the caller takes the result)."""
    tracker = PreviewTracker()
    while not wait([future], timeout=poll).done:
        snap = snapshot(state, job_id)
        src = tracker.update(state) if snap.running else None
        ahead = snapshot(state, None).text if snap.place is not None else ""
        yield render(snap, src, ahead)


def watch_running(state: AppState, poll: float = POLL_SECONDS, limit: float = 3600.0) -> Iterator[str]:
    """For a page opened while someone else's job runs: follow that job until the worker is idle."""
    tracker = PreviewTracker()
    deadline = time.monotonic() + limit
    while state.job.job and time.monotonic() < deadline:
        snap = snapshot(state, None)
        label = f"{snap.waiting} more waiting" if snap.waiting else ""
        yield render(Snapshot(True, None, snap.waiting, snap.progress, snap.eta, ", ".join(
            t for t in (snap.text, label) if t)), tracker.update(state))
        time.sleep(poll)
    yield ""


def _data_url(image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
