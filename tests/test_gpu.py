"""CUDA paths: fp16 by default, the precision flags, same images as fp32 within fp16 tolerance.

Marked ``gpu``: they run wherever CUDA is present (a lent GPU machine) and are skipped, with that reason, elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.processing import process
from modules.processing_params import GenerationParams

pytestmark = pytest.mark.gpu
BASE = dict(prompt="a red circle", steps=8, width=64, height=64, seed=3, save_images=False, sampler_name="Euler")


def _image(state) -> np.ndarray:
    return np.asarray(process(state, GenerationParams(**BASE)).images[0]).astype(np.float32)


def test_cuda_defaults_to_fp16_and_matches_fp32(make_state) -> None:
    half = make_state()
    assert half.policy.is_cuda and half.models.current.pipe.unet.dtype == torch.float16
    fp16 = _image(half)
    full = make_state("--no-half")
    assert full.models.current.pipe.unet.dtype == torch.float32
    fp32 = _image(full)
    assert np.abs(fp16 - fp32).mean() < 4.0  # fp16 rounding only: a few levels out of 255 on average


def test_no_half_vae_keeps_only_the_vae_in_fp32(make_state) -> None:
    state = make_state("--no-half-vae")
    pipe = state.models.current.pipe
    assert pipe.unet.dtype == torch.float16 and pipe.vae.dtype == torch.float32
    assert _image(state).std() > 1


def test_gpu_seed_source_differs_from_cpu_source(make_state) -> None:
    """A1111's default RNG is the GPU's: the same seed gives other noise than the CPU source (and is recorded)."""
    state = make_state()
    gpu = _image(state)
    state.opts.set("randn_source", "CPU", run_callbacks=False)
    result = process(state, GenerationParams(**BASE))
    assert "RNG: CPU" in result.infotexts[0]
    assert np.abs(np.asarray(result.images[0]).astype(np.float32) - gpu).max() > 0


def _mode_state(make_state, mode: str):
    import dataclasses

    state = make_state(load=False)
    state.policy = state.models.policy = dataclasses.replace(state.policy, memory_mode=mode)
    info = state.models.checkpoints[0]
    state.opts.set("sd_model_checkpoint", info.name, run_callbacks=False)
    state.models.load(info)
    return state


def test_memory_modes_same_images_and_less_vram(make_state) -> None:
    """Each mode's image equals normal mode's within fp16 tolerance; peak VRAM drops from normal to lowvram."""
    peaks, images = {}, {}
    for mode in ("normal", "medvram", "lowvram"):
        torch.cuda.empty_cache()
        state = _mode_state(make_state, mode)
        torch.cuda.reset_peak_memory_stats()
        images[mode] = _image(state)
        peaks[mode] = torch.cuda.max_memory_allocated()
        state.queue.shutdown()
        del state
    for mode in ("medvram", "lowvram"):
        assert np.abs(images[mode] - images["normal"]).mean() < 1.0, mode
    assert peaks["medvram"] < peaks["normal"] and peaks["lowvram"] < peaks["medvram"], peaks


def test_lowvram_prefetches_on_a_side_stream(make_state) -> None:
    state = _mode_state(make_state, "lowvram")
    streamer = state.models.current.offload.streamer
    assert streamer.stream is not None
    _image(state)
    assert streamer.prefetched > 0 and all(m.is_pinned() for m in streamer.master_tensors)
