"""--medvram / --lowvram placement, precision fallbacks, attention and compile flags — what the CPU can check.

On the CPU the "device" and the offload target are the same memory, so these tests check the policy (which part is
on the device while each stage runs, through the manager's own bookkeeping observed from forward hooks), the
plumbing (the streamer's order recording and prefetch), and that every mode gives the *same image* as the normal
mode, with and without LoRA. Peak VRAM and speed per mode are GPU measurements (tests/test_gpu.py, benchmarks/).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from modules import offload
from modules.processing import NansError, process
from modules.processing_params import GenerationParams

BASE = dict(prompt="a red circle", negative_prompt="blurry", steps=4, width=64, height=64, seed=8,
            save_images=False, sampler_name="Euler a")


def state_with(make_state, **policy_fields):
    """A state whose model is loaded under a policy with these fields (device stays the CPU)."""
    state = make_state(load=False)
    policy = dataclasses.replace(state.policy, **policy_fields)
    state.policy = state.models.policy = policy
    info = state.models.checkpoints[0]
    state.opts.set("sd_model_checkpoint", info.name, run_callbacks=False)
    state.models.load(info)
    return state


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[result.index_of_first_image]).astype(np.int16)


def test_planned_placement_is_a1111s() -> None:
    med = offload.planned_placement("medvram")
    assert med["unet"] == {"text_encoder": "cpu", "unet": "device", "vae": "cpu"}
    assert med["text_encoder"] == {"text_encoder": "device", "unet": "cpu", "vae": "cpu"}
    assert med["idle"] == {"text_encoder": "cpu", "unet": "cpu", "vae": "cpu"}
    low = offload.planned_placement("lowvram")
    assert low["unet"]["unet"] == "streamed" and low["vae"] == {"text_encoder": "cpu", "unet": "streamed", "vae": "device"}
    assert all(where == "device" for stage in offload.planned_placement("normal").values() for where in stage.values())


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_each_part_is_on_the_device_only_while_it_runs(make_state, mode: str) -> None:
    state = state_with(make_state, memory_mode=mode)
    model = state.models.current
    seen: dict[str, list[dict]] = {"text_encoder": [], "unet": [], "vae": []}
    handles = [getattr(model.pipe, name).register_forward_pre_hook(
        lambda module, args, name=name: seen[name].append(model.offload.residency())) for name in seen]
    handles.append(model.pipe.vae.decoder.register_forward_pre_hook(
        lambda module, args: seen["vae"].append(model.offload.residency())))
    try:
        process(state, GenerationParams(**BASE))
    finally:
        for handle in handles:
            handle.remove()
    plan = offload.planned_placement(mode)
    for stage, observations in seen.items():
        assert observations, stage
        assert all(o == plan[stage] for o in observations), (stage, observations[0])
    assert model.offload.residency() == plan["idle"]  # everything back on the CPU after the job


def test_every_mode_gives_the_normal_image_with_and_without_lora(make_state) -> None:
    from test_lora import kohya_state_dict, write_lora

    results = {}
    for mode in ("normal", "medvram", "lowvram"):
        state = state_with(make_state, memory_mode=mode)
        pipe = state.models.current.pipe
        if mode == "normal":
            lora = kohya_state_dict(pipe, seed=3)
        write_lora(state, "style", lora)
        originals = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
        plain = pixels(process(state, GenerationParams(**BASE)))
        with_lora = pixels(process(state, GenerationParams(**{**BASE, "prompt": "a red circle <lora:style:0.8>"})))
        again = pixels(process(state, GenerationParams(**BASE)))
        assert np.array_equal(plain, again), mode
        assert all(torch.equal(v, originals[k]) for k, v in pipe.unet.state_dict().items()), mode  # masters pristine
        results[mode] = (plain, with_lora)
        state.queue.shutdown()
    for mode in ("medvram", "lowvram"):
        assert np.array_equal(results[mode][0], results["normal"][0]), mode
        assert np.array_equal(results[mode][1], results["normal"][1]), mode
    assert not np.array_equal(results["normal"][0], results["normal"][1])


def test_every_mode_gives_the_normal_image_with_lora_and_folded_hypernetwork(make_state, monkeypatch) -> None:
    """A LoRA on to_k/to_v plus an affine hypernetwork folded into the same attention weights (the hypernetwork
    is activated first; the fold still comes after the LoRA): the patcher folds the master weights wherever they
    live — on the device (normal), in RAM (medvram, lowvram). Each mode gives normal mode's image, and that is the
    image of the same hypernetwork through attention processors up to float rounding."""
    from test_lora import kohya_state_dict, write_lora

    from modules.hypernetworks import folding
    from modules.hypernetworks.hypernetwork import Hypernetwork, HypernetworkSpec

    prompt = "a red circle <hypernet:lin:1> <lora:style:0.8>"  # activated in this order
    torch.manual_seed(40)
    hypernetwork = Hypernetwork.create("lin", [32], HypernetworkSpec(weight_initialization="XavierNormal"))
    images = {}
    for mode in ("normal", "medvram", "lowvram"):
        state = state_with(make_state, memory_mode=mode)
        if mode == "normal":
            lora = kohya_state_dict(state.models.current.pipe, seed=3)
        write_lora(state, "style", lora)
        state.paths.hypernetwork_dir.mkdir(parents=True, exist_ok=True)
        hypernetwork.save(state.paths.hypernetwork_dir / "lin.pt")
        state.libraries["hypernet"].refresh()
        images[mode] = pixels(process(state, GenerationParams(**{**BASE, "prompt": prompt})))
        if mode == "normal":
            images["lora only"] = pixels(process(state, GenerationParams(
                **{**BASE, "prompt": "a red circle <lora:style:0.8>"})))
            with monkeypatch.context() as patch:  # the same file through attention processors
                patch.setattr(folding, "fold", lambda *args: (None, frozenset()))
                images["unfolded"] = pixels(process(state, GenerationParams(**{**BASE, "prompt": prompt})))
        state.queue.shutdown()
    assert np.abs(images["normal"] - images["lora only"]).max() > 8  # the hypernetwork changes the image
    assert np.abs(images["normal"] - images["unfolded"]).max() <= 1
    for mode in ("medvram", "lowvram"):
        assert np.array_equal(images[mode], images["normal"]), f"{mode}: max |Δ| {np.abs(images[mode] - images['normal']).max()}"


def test_lowvram_switch_reaches_the_unit_prefetched_across_jobs(make_state) -> None:
    """The UNet's last unit prefetches its first (``down_blocks.0.resnets.0``) for the next call, so that copy
    outlives the job. A network that patches that very unit between jobs must be seen from the next job's first
    step, and its removal too: every image equals normal mode's bit for bit."""
    from test_lora import write_lora

    images = {}
    for mode in ("normal", "lowvram"):
        state = state_with(make_state, memory_mode=mode)
        weight = state.models.current.pipe.unet.down_blocks[0].resnets[0].conv1.weight
        diff = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.5
        write_lora(state, "first_unit", {"lora_unet_down_blocks_0_resnets_0_conv1.diff": diff})  # a "full" network
        images[mode] = [pixels(process(state, GenerationParams(**{**BASE, "prompt": prompt})))
                        for prompt in ("a red circle", "a red circle <lora:first_unit:1>", "a red circle")]
        state.queue.shutdown()
    assert not np.array_equal(images["normal"][0], images["normal"][1])  # the network changes the image
    for i, (normal, lowvram) in enumerate(zip(images["normal"], images["lowvram"])):
        assert np.array_equal(normal, lowvram), f"image {i}: max |Δ| {np.abs(normal - lowvram).max()}"


def test_lowvram_streams_every_unit_and_prefetches_after_the_first_pass(make_state) -> None:
    state = state_with(make_state, memory_mode="lowvram")
    streamer = state.models.current.offload.streamer
    units = len(streamer.units)
    assert units >= 8  # resnets, attentions, samplers of the tiny UNet
    process(state, GenerationParams(**{**BASE, "steps": 3, "sampler_name": "Euler"}))
    assert len(streamer.order) == units and not streamer._recording
    assert streamer.onloads == units * 3  # each unit once per UNet call (cond and uncond share a batch)
    assert streamer.prefetched == units * 2  # the first call only recorded the order
    assert all(not unit.loaded for unit in streamer.units)


def test_nan_in_a_half_precision_vae_is_retried_in_fp32(make_state) -> None:
    state = state_with(make_state, vae_dtype=torch.float16)
    model = state.models.current
    vae = model.pipe.vae
    assert next(vae.parameters()).dtype == torch.float16
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(3000.0)  # overflows fp16 (max 65504), fine in fp32
    result = process(state, GenerationParams(**BASE))
    assert next(vae.parameters()).dtype == torch.float32
    assert any("VAE produced NaNs" in c for c in result.comments)
    assert pixels(result).std() > 0


def test_nan_in_the_unet_is_a_clear_error(make_state) -> None:
    state = state_with(make_state)
    with torch.no_grad():
        state.models.current.pipe.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(NansError, match="--no-half"):
        process(state, GenerationParams(**BASE))
    state.args.disable_nan_check = True
    assert process(state, GenerationParams(**BASE)).images  # checked off: the (black) image comes back


def test_sliced_attention_and_channels_last_give_the_same_image(make_state) -> None:
    reference = pixels(process(state_with(make_state), GenerationParams(**BASE)))
    sliced = state_with(make_state, attention="sliced", channels_last=True)
    unet = sliced.models.current.pipe.unet
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"SlicedAttnProcessor"}
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(pixels(process(sliced, GenerationParams(**BASE))) - reference).max() <= 1


class CountingBackend:
    """A torch.compile backend that runs the captured graphs as they are and counts graphs and compiled calls."""

    def __init__(self) -> None:
        self.graphs = 0
        self.calls = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1

        def run(*args: object) -> object:
            self.calls += 1
            return graph.forward(*args)

        return run


@pytest.mark.slow
def test_compiled_unet_with_hypernetworks_compiles_nothing_new(make_state) -> None:
    """--opt-compile with hypernetworks. An affine one (A1111's default) is folded into the weights in place: its
    job runs the graph compiled by the first job. One with an activation needs attention processors, new objects
    per job that made torch.compile recompile at every job until its recompile limit dropped the UNet to eager for
    good: that job runs uncompiled. Every image equals the uncompiled state's, and nothing is compiled twice."""
    from test_lora import kohya_state_dict, write_lora

    from modules.hypernetworks.hypernetwork import Hypernetwork, HypernetworkSpec

    torch.manual_seed(41)
    files = {"lin": Hypernetwork.create("lin", [32], HypernetworkSpec(weight_initialization="XavierNormal")),
             "relu": Hypernetwork.create("relu", [32], HypernetworkSpec((1, 2, 1), "relu",
                                                                       weight_initialization="XavierNormal"))}
    params = dict(BASE, sampler_name="Euler")
    prompts = {"plain": "a red circle", "lin": "a red circle <hypernet:lin:1>", "relu": "a red circle <hypernet:relu:1>",
               "lora": "a red circle <lora:a:1> <hypernet:lin:0.5>", "plain again": "a red circle"}
    backend = CountingBackend()
    images, counts = {}, {}
    for name, fields in (("eager", {}), ("compiled", {"compile": True, "compile_backend": backend})):
        state = state_with(make_state, **fields)
        state.paths.hypernetwork_dir.mkdir(parents=True, exist_ok=True)
        for stem, hypernetwork in files.items():
            hypernetwork.save(state.paths.hypernetwork_dir / f"{stem}.pt")
        state.libraries["hypernet"].refresh()
        if name == "eager":
            lora = kohya_state_dict(state.models.current.pipe, seed=6)
        write_lora(state, "a", lora)
        torch._dynamo.reset()
        for job, prompt in prompts.items():
            images[name, job] = pixels(process(state, GenerationParams(**{**params, "prompt": prompt})))
            counts[name, job] = (backend.graphs, backend.calls)
        state.queue.shutdown()
    steps = params["steps"]
    graphs, calls = counts["compiled", "plain"]
    assert graphs >= 1 and calls >= steps  # the first job compiled the UNet and ran it
    assert counts["compiled", "lin"] == (graphs, calls + steps)  # folded: the same graph, compiled
    assert counts["compiled", "relu"] == counts["compiled", "lin"]  # processors: nothing compiled or run compiled
    assert counts["compiled", "plain again"] == (graphs, calls + 3 * steps)  # lin, lora, plain again compiled
    assert np.abs(images["eager", "lin"] - images["eager", "plain"]).max() > 8  # the hypernetworks do work
    assert np.abs(images["eager", "relu"] - images["eager", "plain"]).max() > 8
    for job in prompts:
        assert np.array_equal(images["compiled", job], images["eager", job]), job


@pytest.mark.slow
def test_compiled_unet_survives_lora_switches_without_recompiling(make_state) -> None:
    from torch._dynamo.utils import counters

    from test_lora import kohya_state_dict, write_lora

    torch._dynamo.reset()
    counters.clear()
    state = state_with(make_state, compile=True, compile_backend="aot_eager")
    pipe = state.models.current.pipe
    write_lora(state, "a", kohya_state_dict(pipe, seed=4))
    write_lora(state, "b", kohya_state_dict(pipe, seed=5))
    params = dict(BASE, sampler_name="Euler")
    plain = pixels(process(state, GenerationParams(**params)))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    a = pixels(process(state, GenerationParams(**{**params, "prompt": "a red circle <lora:a:1>"})))
    b = pixels(process(state, GenerationParams(**{**params, "prompt": "a red circle <lora:b:1>"})))
    again = pixels(process(state, GenerationParams(**params)))
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation on any switch
    assert np.array_equal(plain, again) and not np.array_equal(a, b) and not np.array_equal(plain, a)
