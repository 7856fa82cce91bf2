"""LoRA end to end on the tiny model: parity with diffusers' own loader, A1111's tag rules, invariants, failures."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules import model_loading
from modules.extra_networks import ActivationContext, parse_prompt
from modules.processing import process
from modules.processing_params import GenerationParams

BASE = dict(negative_prompt="", steps=3, width=64, height=64, seed=21, save_images=False, sampler_name="Euler")
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_in", "conv_out", "time_emb_proj"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@pytest.fixture
def state(make_state):
    return make_state()


def kohya_state_dict(pipe, seed: int, rank: int = 4, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """A kohya LoRA written by diffusers' own converter from PEFT adapters on copies of the tiny model."""
    import copy

    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    unet, te = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.text_encoder)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=False, target_modules=UNET_TARGETS))
    te.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights=False, target_modules=TE_TARGETS))
    peft = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
    peft |= {f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(te).items()}
    kohya = convert_state_dict_to_kohya(peft)
    if alpha is not None:  # diffusers writes alpha = rank; give the file the real alpha
        kohya = {k: (torch.tensor(float(alpha)) if k.endswith(".alpha") else v) for k, v in kohya.items()}
    return {k: v.detach().contiguous() for k, v in kohya.items()}


def write_lora(state, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path = state.paths.lora_dir / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    state.libraries["lora"].refresh()
    return path


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[result.index_of_first_image]).astype(np.int16)


def generate(state, prompt: str) -> object:
    return process(state, GenerationParams(prompt=prompt, **BASE))


def activate(state, prompt: str) -> ActivationContext:
    """Run only the networks' activation for ``prompt`` (what a job does before encoding)."""
    _, data = parse_prompt(prompt)
    ctx = ActivationContext(model=state.models.current, opts=state.opts.snapshot())
    with state.networks.activated(ctx, data):
        pass
    return ctx


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(("multiplier", "alpha"), [(1.0, None), (0.6, 2.0)])
def test_merged_weights_equal_diffusers_load_and_fuse(state, tiny_checkpoint: Path, multiplier: float,
                                                      alpha: float | None) -> None:
    """Independent implementation: diffusers' load_lora_weights + fuse_lora on the same file."""
    pipe = state.models.current.pipe
    path = write_lora(state, "parity", kohya_state_dict(pipe, seed=1, alpha=alpha))
    originals = (weights(pipe.unet), weights(pipe.text_encoder))
    activate(state, f"x <lora:parity:{multiplier}>")

    reference = model_loading.build_pipeline(model_loading.read_state_dict(tiny_checkpoint),
                                             model_loading.read_sidecar_config(tiny_checkpoint), "reference")
    reference.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="parity")
    reference.fuse_lora(lora_scale=multiplier, components=["unet", "text_encoder"])
    reference.unload_lora_weights()
    for ours, theirs, original in zip((pipe.unet, pipe.text_encoder), (reference.unet, reference.text_encoder),
                                      originals):
        a, b = ours.state_dict(), theirs.state_dict()
        changed = [k for k in a if not torch.equal(a[k], original[k])]
        assert len(changed) > 10, "the LoRA changed (almost) nothing"
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=2e-6, rtol=1e-5), key


def test_before_equals_after_and_zero_equals_none(state) -> None:
    pipe = state.models.current.pipe
    write_lora(state, "style", kohya_state_dict(pipe, seed=2))
    original_unet, original_te = weights(pipe.unet), weights(pipe.text_encoder)
    before = pixels(generate(state, "a red cat"))
    during = pixels(generate(state, "a red cat <lora:style:1>"))
    zero = pixels(generate(state, "a red cat <lora:style:0>"))
    after = pixels(generate(state, "a red cat"))
    assert np.abs(before - during).max() > 0
    assert np.array_equal(before, zero) and np.array_equal(before, after)
    assert all(torch.equal(v, original_unet[k]) for k, v in pipe.unet.state_dict().items())
    assert all(torch.equal(v, original_te[k]) for k, v in pipe.text_encoder.state_dict().items())


def test_te_and_unet_multipliers_follow_a1111(state) -> None:
    pipe = state.models.current.pipe
    write_lora(state, "m", kohya_state_dict(pipe, seed=3))
    te0 = weights(pipe.text_encoder)
    unet0 = weights(pipe.unet)
    activate(state, "<lora:m:0:1>")  # te 0, unet 1: text encoder untouched
    assert all(torch.equal(v, te0[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert any(not torch.equal(v, unet0[k]) for k, v in pipe.unet.state_dict().items())
    activate(state, "<lora:m:te=0.2>")  # unet defaults to te: both 0.2
    te_02, unet_02 = weights(pipe.text_encoder), weights(pipe.unet)
    activate(state, "<lora:m:0.2:0.2>")
    assert all(torch.equal(v, te_02[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert all(torch.equal(v, unet_02[k]) for k, v in pipe.unet.state_dict().items())
    activate(state, "<lyco:m:0.2>")  # the LyCORIS alias
    assert all(torch.equal(v, unet_02[k]) for k, v in pipe.unet.state_dict().items())
    activate(state, "nothing")
    assert all(torch.equal(v, unet0[k]) for k, v in pipe.unet.state_dict().items())


def test_dyn_tag_keeps_the_first_ranks_and_leaves_the_shared_file_whole(state) -> None:
    """``<lora:x:1:dyn=2>`` on a rank-4 file (A1111: the first 2 ranks, scale alpha / full rank) equals a rank-2 file
    of those ranks with alpha halved; the cached parse is shared, so the next job without ``dyn`` gets all 4."""
    pipe = state.models.current.pipe
    full = kohya_state_dict(pipe, seed=6, rank=4, alpha=2.0)
    first_two = {}
    for key, tensor in full.items():
        if key.endswith("lora_down.weight"):
            first_two[key] = tensor[:2].clone()
        elif key.endswith("lora_up.weight"):
            first_two[key] = tensor[:, :2].clone()
        else:  # alpha: 2/4 over 4 ranks is the same scale as 1/2 over 2
            first_two[key] = tensor / 2
    write_lora(state, "x", full)
    write_lora(state, "x2", first_two)
    activate(state, "<lora:x2:1>")
    expected = weights(pipe.unet)
    activate(state, "<lora:x:1>")
    whole = weights(pipe.unet)
    activate(state, "<lora:x:1:dyn=2>")
    for key, value in pipe.unet.state_dict().items():
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=0)
    assert any((whole[k] - expected[k]).abs().max() > 1e-4 for k in whole)  # the limit matters
    activate(state, "<lora:x:1>")
    assert all(torch.equal(v, whole[k]) for k, v in pipe.unet.state_dict().items())
    activate(state, "nothing")


def test_switching_a_to_b_equals_b_fresh(state) -> None:
    pipe = state.models.current.pipe
    write_lora(state, "a", kohya_state_dict(pipe, seed=4))
    write_lora(state, "b", kohya_state_dict(pipe, seed=5, rank=2))
    activate(state, "<lora:b:0.7>")
    fresh = weights(pipe.unet)
    activate(state, "nothing")
    activate(state, "<lora:a:1> <lora:b:0.3>")
    activate(state, "<lora:b:0.7>")
    assert all(torch.equal(v, fresh[k]) for k, v in pipe.unet.state_dict().items())
    activate(state, "nothing")


def test_random_switching_over_many_files_ends_bit_identical(state) -> None:
    pipe = state.models.current.pipe
    for i in range(4):
        write_lora(state, f"r{i}", kohya_state_dict(pipe, seed=10 + i, rank=1 + i))
    unet0, te0 = weights(pipe.unet), weights(pipe.text_encoder)
    rng = random.Random(0)
    for _ in range(200):
        tags = [f"<lora:r{i}:{rng.choice(['1', '0.5', '-0.4', '0:1', '1:0'])}>" for i in rng.sample(range(4), rng.randint(0, 4))]
        activate(state, " ".join(tags))
    activate(state, "")
    assert all(torch.equal(v, unet0[k]) for k, v in pipe.unet.state_dict().items())
    assert all(torch.equal(v, te0[k]) for k, v in pipe.text_encoder.state_dict().items())


def test_missing_and_broken_networks_are_reported_and_the_job_runs(state) -> None:
    pipe = state.models.current.pipe
    unet0 = weights(pipe.unet)
    broken = state.paths.lora_dir / "broken.safetensors"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    state.libraries["lora"].refresh()
    result = generate(state, "a cat <lora:ghost:1> <lora:broken:1> <lora:cat:abc>")
    assert "Networks not found: ghost" in result.comments
    assert any(c.startswith("Lora broken could not be loaded") and "broken.safetensors" in c for c in result.comments)
    assert any("multipliers must be numbers" in c for c in result.comments)
    assert all(torch.equal(v, unet0[k]) for k, v in pipe.unet.state_dict().items())
    assert "Networks not found: ghost" in result.info()["comments"]


def test_lora_hashes_in_the_infotext(state) -> None:
    pipe = state.models.current.pipe
    path = write_lora(state, "hashme", kohya_state_dict(pipe, seed=6), metadata={"ss_output_name": "HashAlias"})
    data = path.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    addnet = hashlib.sha256(data[8 + header:]).hexdigest()[:12]  # A1111's "addnet" hash, computed independently
    result = generate(state, "a cat <lora:HashAlias:0.5>")
    assert f'Lora hashes: "HashAlias: {addnet}"' in result.infotexts[0]
    assert result.infotexts[0].startswith("a cat <lora:HashAlias:0.5>")


def test_peft_dotted_file_equals_its_kohya_twin(state) -> None:
    """A1111 silently ignores diffusers/PEFT dotted keys; we load them, and they mean the same as kohya's."""
    from diffusers.utils import convert_unet_state_dict_to_peft  # noqa: F401 - presence check of the API we rely on
    from peft import LoraConfig, get_peft_model_state_dict
    import copy

    pipe = state.models.current.pipe
    torch.manual_seed(7)
    unet = copy.deepcopy(pipe.unet)
    unet.add_adapter(LoraConfig(r=3, lora_alpha=3, init_lora_weights=False, target_modules=["to_q", "to_v"]))
    peft = {f"unet.{k}": v.detach().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    write_lora(state, "dotted", peft)
    from diffusers.utils import convert_state_dict_to_kohya

    write_lora(state, "kohya", {k: v.contiguous() for k, v in convert_state_dict_to_kohya(peft).items()})
    activate(state, "<lora:dotted:0.8>")
    dotted = weights(pipe.unet)
    activate(state, "<lora:kohya:0.8>")
    assert all(torch.allclose(v, dotted[k], atol=1e-7) for k, v in pipe.unet.state_dict().items())
    activate(state, "")


def test_a_job_changing_loras_and_folded_hypernetworks_writes_each_weight_once(state) -> None:
    """LoRAs (patcher layer 0) and affine hypernetworks (folded, layer 1) both change ``to_k``/``to_v``; a job that
    switches both patches every weight once, in whichever order the tags come (the patchers defer to the end of
    activation), and the result equals activating the same prompt on pristine weights."""
    from modules.hypernetworks import folding
    from modules.hypernetworks.hypernetwork import Hypernetwork, HypernetworkSpec

    pipe = state.models.current.pipe
    widths = sorted({attn.to_k.in_features for attn in folding.attention_modules(pipe.unet).values()})
    state.paths.hypernetwork_dir.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("h1", "h2")):
        torch.manual_seed(50 + seed)
        Hypernetwork.create(name, widths, HypernetworkSpec(weight_initialization="XavierNormal")).save(
            state.paths.hypernetwork_dir / f"{name}.pt")
    state.libraries["hypernet"].refresh()
    for seed, name in enumerate(("a", "b")):
        write_lora(state, name, kohya_state_dict(pipe, seed=60 + seed))
    original = weights(pipe.unet)
    params = dict(pipe.unet.named_parameters())

    activate(state, "x <lora:a:1> <hypernet:h1:1>")
    for prompt in ("x <hypernet:h2:0.7> <lora:b:0.9>", "x <lora:a:0.5> <hypernet:h1:1>"):
        before = {k: p._version for k, p in params.items()}
        activate(state, prompt)
        writes = {k: p._version - before[k] for k, p in params.items()}
        to_k = [k for k in writes if k.endswith("to_k.weight")]
        assert to_k and all(writes[k] == 1 for k in to_k), prompt  # changed by both layers, written once
        assert max(writes.values()) == 1, prompt
        switched = weights(pipe.unet)
        activate(state, "x")
        assert all(torch.equal(v, original[k]) for k, v in weights(pipe.unet).items())
        activate(state, prompt)
        assert all(torch.equal(v, switched[k]) for k, v in weights(pipe.unet).items()), prompt
