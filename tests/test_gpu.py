"""CUDA paths: fp16 by default, the precision flags, same images as fp32 within fp16 tolerance, the memory modes,
networks patched into fp16 master weights wherever they live, and the compiled fast path.

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


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_in_fp16_in_every_memory_mode(make_state, upscaler: str) -> None:
    """The hires pass on CUDA in fp16 (the picture upscaler's VAE encode included) follows each memory mode's
    placement and matches the fp32 image within fp16 tolerance."""
    params = GenerationParams(**{**BASE, "enable_hr": True, "denoising_strength": 0.5, "hr_upscaler": upscaler})
    full = make_state("--no-half")
    reference = np.asarray(process(full, params).images[0]).astype(np.float32)
    full.queue.shutdown()
    del full
    for mode in ("normal", "medvram", "lowvram"):
        state = _mode_state(make_state, mode)
        assert state.models.current.pipe.unet.dtype == torch.float16
        image = process(state, params).images[0]
        assert image.size == (128, 128), mode
        assert np.abs(np.asarray(image).astype(np.float32) - reference).mean() < 4.0, mode
        state.queue.shutdown()
        del state
        torch.cuda.empty_cache()


def test_lowvram_prefetches_on_a_side_stream(make_state) -> None:
    state = _mode_state(make_state, "lowvram")
    streamer = state.models.current.offload.streamer
    assert streamer.stream is not None
    _image(state)
    assert streamer.prefetched > 0 and all(m.is_pinned() for m in streamer.master_tensors)


def _lora_images(state) -> list[np.ndarray]:
    """No network, a kohya LoRA (attention, feed-forward and resnet convs), no network again."""
    return [np.asarray(process(state, GenerationParams(**{**BASE, "prompt": prompt})).images[0]).astype(np.float32)
            for prompt in ("a red circle", "a red circle <lora:style:0.8>", "a red circle")]


def test_networks_patch_fp16_master_weights_in_every_mode(make_state) -> None:
    """On CUDA in fp16 a LoRA changes the image and leaves the weights bit-identical when removed, in every memory
    mode (the masters live on the GPU in normal mode, in pinned CPU memory in the other two); each mode's images
    equal normal mode's within fp16 tolerance."""
    from test_lora import kohya_state_dict, write_lora

    images, lora = {}, None
    for mode in ("normal", "medvram", "lowvram"):
        state = _mode_state(make_state, mode)
        unet = state.models.current.pipe.unet
        assert unet.dtype == torch.float16
        if lora is None:
            lora = {k: v.cpu() for k, v in kohya_state_dict(state.models.current.pipe, seed=3).items()}
        write_lora(state, "style", lora)
        originals = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        images[mode] = _lora_images(state)
        assert all(torch.equal(v, originals[k]) for k, v in unet.state_dict().items()), mode
        assert np.abs(images[mode][0] - images[mode][2]).max() <= 1, mode  # removal restores the image
        state.queue.shutdown()
        del state, unet
        torch.cuda.empty_cache()
    assert np.abs(images["normal"][0] - images["normal"][1]).mean() > 1  # the LoRA changes the image
    for mode in ("medvram", "lowvram"):
        for ours, normal in zip(images[mode], images["normal"]):
            assert np.abs(ours - normal).mean() < 1.0, mode


def test_folded_hypernetwork_with_lora_in_fp16_in_every_mode(make_state, monkeypatch) -> None:
    """An affine hypernetwork folded into fp16 attention weights, with a LoRA on the same modules: in each memory
    mode the fold is computed on the GPU (the patcher's compute device, also for the masters in RAM of the
    low-memory modes) and the image equals the same hypernetwork's through attention processors, and normal
    mode's, within fp16 tolerance."""
    from test_lora import kohya_state_dict, write_lora

    from modules.hypernetworks import folding
    from modules.hypernetworks.hypernetwork import Hypernetwork, HypernetworkSpec

    prompt = "a red circle <hypernet:lin:1> <lora:style:0.8>"
    torch.manual_seed(40)
    hypernetwork = Hypernetwork.create("lin", [32], HypernetworkSpec(weight_initialization="XavierNormal"))
    folded_devices: list[torch.device] = []
    original_get = folding._Maps.get

    def recording_get(self, device):
        folded_devices.append(device)
        return original_get(self, device)

    monkeypatch.setattr(folding._Maps, "get", recording_get)
    images, lora = {}, None
    for mode in ("normal", "medvram", "lowvram"):
        state = _mode_state(make_state, mode)
        if lora is None:
            lora = {k: v.cpu() for k, v in kohya_state_dict(state.models.current.pipe, seed=3).items()}
        write_lora(state, "style", lora)
        state.paths.hypernetwork_dir.mkdir(parents=True, exist_ok=True)
        hypernetwork.save(state.paths.hypernetwork_dir / "lin.pt")
        state.libraries["hypernet"].refresh()
        folded_devices.clear()
        images[mode] = np.asarray(process(state, GenerationParams(**{**BASE, "prompt": prompt})).images[0]).astype(np.float32)
        assert folded_devices and all(d.type == "cuda" for d in folded_devices), mode
        if mode == "normal":
            images["lora only"] = np.asarray(process(state, GenerationParams(
                **{**BASE, "prompt": "a red circle <lora:style:0.8>"})).images[0]).astype(np.float32)
            with monkeypatch.context() as patch:  # the same file through attention processors
                patch.setattr(folding, "fold", lambda *args: (None, frozenset()))
                images["unfolded"] = np.asarray(process(state, GenerationParams(
                    **{**BASE, "prompt": prompt})).images[0]).astype(np.float32)
        state.queue.shutdown()
        del state
        torch.cuda.empty_cache()
    assert np.abs(images["normal"] - images["lora only"]).mean() > 1  # the hypernetwork changes the image
    assert np.abs(images["normal"] - images["unfolded"]).mean() < 1.0
    for mode in ("medvram", "lowvram"):
        assert np.abs(images[mode] - images["normal"]).mean() < 1.0, mode


def _host_to_device_copies(fn) -> int:
    """How many host→device memcpys the CUDA profiler records while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if "HtoD" in event.name)


def test_switching_back_to_a_recent_lora_set_copies_nothing_from_the_host(make_state) -> None:
    """Normal mode keeps the network tensors of the last two sets on the GPU (a kohya LoRA's factors, added by
    ``add_to``, and a "full" network's diff, through ``calc_staged``): A → B → A moves nothing from host memory on
    the way back. ``--medvram`` (VRAM is what it saves) copies them at every switch — also the control
    that the profiler sees these copies at all."""
    from test_lora import kohya_state_dict, write_lora

    from modules.extra_networks import ActivationContext, parse_prompt

    counts = {}
    for mode in ("normal", "medvram"):
        state = _mode_state(make_state, mode)
        pipe = state.models.current.pipe
        for name, seed in (("a", 4), ("b", 5)):
            write_lora(state, name, {k: v.cpu() for k, v in kohya_state_dict(pipe, seed=seed).items()})
        conv = pipe.unet.down_blocks[0].resnets[0].conv1.weight  # a "full" network: the calc_staged path
        write_lora(state, "full", {"lora_unet_down_blocks_0_resnets_0_conv1.diff": torch.randn(conv.shape) * 0.1})

        def activate(prompt: str, state=state) -> None:
            _, data = parse_prompt(prompt)
            ctx = ActivationContext(model=state.models.current, opts=state.opts.snapshot())
            with state.networks.activated(ctx, data):
                assert not ctx.comments, ctx.comments

        counts[mode] = [_host_to_device_copies(lambda p=p: activate(p))
                        for p in ("<lora:a:0.8> <lora:full:1>", "<lora:b:0.8>", "<lora:a:0.8> <lora:full:1>")]
        unet_patcher = state.models.current.patchers["unet"]
        assert (unet_patcher.staged_bytes > 0) == (mode == "normal"), mode
        activate("")
        state.queue.shutdown()
        del state, pipe, conv
        torch.cuda.empty_cache()
    assert counts["normal"][0] > 0 and counts["normal"][2] == 0, counts
    assert counts["medvram"][2] > 0, counts


def test_opt_compile_with_cuda_graphs_survives_lora_switches(make_state) -> None:
    """``--opt-compile`` on CUDA (inductor, "reduce-overhead": CUDA graphs) gives the eager image within fp16
    tolerance, and a LoRA switch changes the weights in place: no new graph, and the switch shows in the image.
    A linear hypernetwork, folded into the weights in place, compiles nothing either."""
    from torch._dynamo.utils import counters

    from test_lora import kohya_state_dict, write_lora

    from modules.hypernetworks.hypernetwork import Hypernetwork, HypernetworkSpec

    eager_state = make_state()
    lora = kohya_state_dict(eager_state.models.current.pipe, seed=3)
    write_lora(eager_state, "style", {k: v.cpu() for k, v in lora.items()})
    eager = _lora_images(eager_state)
    eager_state.queue.shutdown()
    del eager_state
    torch._dynamo.reset()
    counters.clear()
    state = make_state("--opt-compile")
    assert state.policy.compile
    plain = _image(state)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    compiled = _lora_images(state)
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation on either switch
    state.paths.hypernetwork_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(41)
    Hypernetwork.create("lin", [32, 64], HypernetworkSpec(weight_initialization="XavierNormal")).save(
        state.paths.hypernetwork_dir / "lin.pt")
    state.libraries["hypernet"].refresh()
    hypernet = process(state, GenerationParams(**{**BASE, "prompt": "a red circle <hypernet:lin:1>"})).images[0]
    assert np.abs(np.asarray(hypernet).astype(np.float32) - plain).max() > 8  # the hypernetwork was applied
    assert np.abs(_image(state) - plain).max() <= 1
    assert counters["stats"]["unique_graphs"] == graphs  # the folded hypernetwork's job reused the graph
    assert np.abs(plain - compiled[0]).max() <= 1
    for ours, reference in zip(compiled, eager):
        assert np.abs(ours - reference).mean() < 1.0
    assert np.abs(compiled[0] - compiled[1]).mean() > 1


def test_patching_cpu_masters_computes_on_the_gpu() -> None:
    """The low-memory modes' patcher: fp16 masters in pinned RAM, deltas computed on the GPU, the result copied back
    — equal to computing on the CPU (up to fp32 rounding, cast to fp16), and the originals restored bit for bit."""
    from modules.patching import WantedNetwork, WeightPatcher

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(320, 640), torch.nn.Linear(640, 320)).half()
    for p in module.parameters():
        p.data = p.data.pin_memory()
    original = {k: v.clone() for k, v in module.state_dict().items()}
    seen = []

    class LowRank:
        def __init__(self, out: int, inp: int) -> None:
            self.up, self.down = torch.randn(out, 8) * 0.1, torch.randn(8, inp) * 0.1

        def calc(self, weight, bias):
            seen.append(weight.device.type)
            return self.up.to(weight) @ self.down.to(weight), None

    deltas = {"0": LowRank(640, 320), "1": LowRank(320, 640)}
    on_cpu = WeightPatcher(module, backup_device="cpu")
    on_cpu.reconcile([WantedNetwork("a", 0.8, deltas)])
    expected = {k: v.clone() for k, v in module.state_dict().items()}
    on_cpu.restore_all()
    seen.clear()
    patcher = WeightPatcher(module, backup_device="cpu", compute_device="cuda")
    patcher.reconcile([WantedNetwork("a", 0.8, deltas)])
    assert seen == ["cuda", "cuda"]
    for name, value in module.state_dict().items():
        assert value.device.type == "cpu" and value.is_pinned(), name  # the masters stay where they live
        assert torch.allclose(value.float(), expected[name].float(), atol=2e-3), name
    patcher.restore_all()
    assert all(torch.equal(v, original[k]) for k, v in module.state_dict().items())


def test_medvram_training_runs_on_the_gpu_and_parks_the_model_after(make_state, tmp_path) -> None:
    """Training under --medvram: every part computes on CUDA during the run (not on the CPU masters), and
    afterwards every parameter is back on its CPU master."""
    from test_training_trainers import red_dataset, settings

    from modules.training import embedding_trainer

    state = _mode_state(make_state, "medvram")
    pipe = state.models.current.pipe
    seen: dict[str, set[str]] = {"text_encoder": set(), "unet": set(), "vae.encoder": set()}
    modules = {"text_encoder": pipe.text_encoder, "unet": pipe.unet, "vae.encoder": pipe.vae.encoder}
    handles = [module.register_forward_pre_hook(
        lambda m, a, name=name: seen[name].add(next(m.parameters()).device.type)) for name, module in modules.items()]
    try:
        embedding_trainer.create_embedding(state, "gpuemb", 1)
        embedding_trainer.train_embedding(state, "gpuemb", settings(red_dataset(tmp_path / "red"), steps=2,
                                                                    create_image_every=2))
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {name: {"cuda"} for name in seen}, seen
    assert all(p.device.type == "cpu" for module in modules.values() for p in module.parameters())


@pytest.mark.parametrize("mode", ["normal", "medvram"])
def test_unload_to_ram_frees_the_gpu_with_a_lora_patched(make_state, mode: str) -> None:
    """``/sdapi/v1/unload-checkpoint`` with a LoRA patched in: the model's weights, the patcher's backups, its
    staged LoRA tensors and the cached prompt encodings all leave the GPU (what a bot that frees VRAM for another
    program needs); the next job brings the model back and gives the same image, LoRA included, and removing the
    LoRA then restores the original weights bit for bit."""
    from test_lora import kohya_state_dict, write_lora

    state = _mode_state(make_state, mode)
    model = state.models.current
    originals = {k: v.detach().cpu().clone() for k, v in model.pipe.unet.state_dict().items()}
    write_lora(state, "style", {k: v.cpu() for k, v in kohya_state_dict(model.pipe, seed=3).items()})
    prompt = {**BASE, "prompt": "a red circle <lora:style:0.8>"}
    before = np.asarray(process(state, GenerationParams(**prompt)).images[0]).astype(np.float32)
    pipe, patchers = model.pipe, model.patchers.values()
    assert mode != "normal" or any(p._backup for p in patchers)  # the LoRA's backups, beside the GPU weights
    state.models.unload_to_ram()
    on_gpu = [name for part in ("unet", "text_encoder", "vae")
              for name, t in [*getattr(pipe, part).named_parameters(), *getattr(pipe, part).named_buffers()]
              if t.is_cuda]
    assert on_gpu == [], (mode, on_gpu[:5])
    assert not [path for p in patchers for path, backup in p._backup.items()
                if any(t is not None and t.is_cuda for t in backup)]
    assert all(p.staged_bytes == 0 for p in patchers) and not model.cond_cache._items, mode
    after = np.asarray(process(state, GenerationParams(**prompt)).images[0]).astype(np.float32)
    assert np.abs(after - before).max() <= 1, mode
    assert not model.parked
    process(state, GenerationParams(**BASE))  # no LoRA: the original weights
    assert all(torch.equal(v.cpu(), originals[k]) for k, v in model.pipe.unet.state_dict().items()), mode
