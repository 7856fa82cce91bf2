"""Every network type's ΔW against the independent lycoris-lora library (4.1.3) on the tiny SD1.5-layout model.

Method: wrap a real layer of the tiny model (Linear, 3x3 conv, 1x1 conv, GroupNorm, LayerNorm) in a lycoris module,
give its parameters non-zero random values (LyCORIS initialises "up" halves to zero), read the tensors it would save
(``state_dict()`` gives the file's suffixes), build our module from them and compare ``m · calc_updown(W)`` — what
the patcher adds — with the ΔW the library applies. The library's ΔW is read off its own *forward* pass (the layer's
response to unit inputs), not from ``get_diff_weight``: in 4.1.3 ``get_diff_weight`` of LoHa and LoKr applies
``alpha/rank`` twice, while the forward path (what training and inference use) applies it once.

Where A1111 deliberately differs from the library (GLoRA ignores alpha, DoRA's per-input norm with the stored
magnitude broadcast as is, OFT/BOFT multiplier, DyLoRA's scale), the test follows A1111 against the reference's
formula and compares with the library only under settings where both agree.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from importlib import import_module
from pathlib import Path

import lycoris.kohya
import lycoris.modules as lm
import pytest
import torch
from conftest import load_lora_package
from lycoris.functional import factorization as lycoris_factorization
from torch import nn

from modules import demo_model
from modules.patching import WantedNetwork, WeightPatcher

PKG = load_lora_package()
network = import_module(PKG.__name__ + ".network")
network_types = import_module(PKG.__name__ + ".network_types")
network_lora = import_module(PKG.__name__ + ".network_lora")
network_hada = import_module(PKG.__name__ + ".network_hada")
network_lokr = import_module(PKG.__name__ + ".network_lokr")
network_ia3 = import_module(PKG.__name__ + ".network_ia3")
network_oft = import_module(PKG.__name__ + ".network_oft")
network_glora = import_module(PKG.__name__ + ".network_glora")
network_full = import_module(PKG.__name__ + ".network_full")
network_norm = import_module(PKG.__name__ + ".network_norm")
lyco_helpers = import_module(PKG.__name__ + ".lyco_helpers")

RESULTS: dict[str, float] = {}  # case → max |ours − library|, printed at the end with -s


# ---------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layers() -> dict[str, nn.Module]:
    """Real layers of the tiny SD1.5-layout model (fp32, random weights)."""
    unet, _vae, text_encoder = demo_model.build_components()
    resnet = unet.down_blocks[1].resnets[0]
    te_layer = text_encoder.get_submodule(next(n for n, _ in text_encoder.named_modules() if n.endswith("layers.0")))
    picked = {
        "linear": te_layer.mlp.fc1,  # 32 → 64, with bias
        "linear_sq": unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q,  # 32 → 32, no bias
        "conv3": resnet.conv1,  # 32 → 64, 3x3, stride 1
        "conv1": resnet.conv_shortcut,  # 32 → 64, 1x1
        "groupnorm": resnet.norm1,
        "layernorm": te_layer.layer_norm1,
    }
    assert isinstance(picked["linear"], nn.Linear) and isinstance(picked["conv3"], nn.Conv2d)
    assert picked["conv3"].kernel_size == (3, 3) and picked["conv1"].kernel_size == (1, 1)
    return picked


def randomize(module: nn.Module, seed: int, std: float = 0.2) -> nn.Module:
    """Non-zero random parameters, keeping each kind's meaning (OFT blocks small, scales near 1, DoRA near ‖W‖)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name == "dora_scale":
                p.mul_(1 + 0.2 * noise)
            elif name == "rescale":
                p.copy_(1 + 0.2 * noise)
            elif name == "oft_blocks":
                p.copy_(0.05 * noise)
            else:
                p.copy_(std * noise)
    return module


def library_delta(lyco: nn.Module) -> torch.Tensor:
    """The ΔW the library's forward pass applies, read off its response to unit inputs.

    Linear: ``forward(I) − base(I) = ΔWᵀ``. Conv (stride 1, "same" padding): one input image per input channel,
    a unit impulse at the centre; the response is the kernel, flipped.
    """
    layer = lyco.org_module[0]
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            x = torch.eye(layer.in_features)
            return (lyco(x) - lyco.org_forward(x)).T.contiguous()
        assert isinstance(layer, nn.Conv2d) and layer.stride == (1, 1)
        kh, kw = layer.kernel_size
        assert layer.padding == (kh // 2, kw // 2)
        cin = layer.in_channels
        x = torch.zeros(cin, cin, kh, kw)
        x[torch.arange(cin), torch.arange(cin), kh // 2, kw // 2] = 1.0
        response = lyco(x) - lyco.org_forward(x)  # (in, out, kh, kw)
        return response.transpose(0, 1).flip(2, 3).contiguous()


def weights_for(w: dict[str, torch.Tensor], layer: nn.Module, key: str = "lora_unet_test_module") -> object:
    return network.NetworkWeights(network_key=key, module_path="test.module", component="unet",
                                  w={k: v.detach().clone() for k, v in w.items()},
                                  weight_shape=tuple(layer.weight.shape), module_type=type(layer).__name__)


def ours(lyco_or_w: nn.Module | dict[str, torch.Tensor], layer: nn.Module, multiplier: float = 1.0,
         dyn: int | None = None) -> tuple[object, torch.Tensor, torch.Tensor | None]:
    """Our module for the tensors, and what the patcher would add: ``m · ΔW`` and ``m · Δbias``."""
    w = lyco_or_w.state_dict() if isinstance(lyco_or_w, nn.Module) else lyco_or_w
    module = network_types.create_module(weights_for(w, layer))
    module.dyn = dyn
    bias = None if getattr(layer, "bias", None) is None else layer.bias.detach().float().clone()
    dw, db = module.calc(layer.weight.detach().float().clone(), bias)
    assert dw is not None and dw.shape == layer.weight.shape
    # What the patcher really writes (its add_to fast path for plain LoRA pairs, calc for the rest) is the same.
    patched = copy.deepcopy(layer).float()
    WeightPatcher(patched).reconcile([WantedNetwork("net", multiplier, {"": module})])
    written = patched.weight.detach() - layer.weight.detach().float()
    scale = max(layer.weight.abs().max().item(), (multiplier * dw).abs().max().item())
    torch.testing.assert_close(written, multiplier * dw, atol=2e-6 * scale, rtol=0)
    return module, multiplier * dw, None if db is None else multiplier * db


def assert_matches(case: str, got: torch.Tensor, expected: torch.Tensor, weight: torch.Tensor) -> None:
    """Tight fp32 agreement relative to the weight's scale; records the max abs difference."""
    assert got.shape == expected.shape
    assert expected.abs().max() > 1e-3, "the reference delta is (almost) zero: the comparison would prove nothing"
    err = (got - expected).abs().max().item()
    RESULTS[case] = max(RESULTS.get(case, 0.0), err)
    scale = max(weight.abs().max().item(), expected.abs().max().item())
    assert err <= 1e-5 * scale, f"{case}: max |ours − reference| = {err:.3g} (scale {scale:.3g})"


# ---------------------------------------------------------------------------------------------------------------
# Every algo against the library's forward pass
# ---------------------------------------------------------------------------------------------------------------

Builder = Callable[[nn.Module], nn.Module]
CASES: list[tuple[str, str, Builder, str]] = [
    # (case id, layer, lycoris module builder, our module class name)
    ("locon-linear", "linear", lambda l: lm.LoConModule("t", l, 1.0, lora_dim=4, alpha=2), "NetworkModuleLora"),
    ("locon-conv3", "conv3", lambda l: lm.LoConModule("t", l, 1.0, lora_dim=4, alpha=3), "NetworkModuleLora"),
    ("locon-conv3-tucker", "conv3", lambda l: lm.LoConModule("t", l, 1.0, lora_dim=4, alpha=3, use_tucker=True),
     "NetworkModuleLora"),
    ("locon-conv1", "conv1", lambda l: lm.LoConModule("t", l, 1.0, lora_dim=4, alpha=8), "NetworkModuleLora"),
    ("loha-linear", "linear", lambda l: lm.LohaModule("t", l, 1.0, lora_dim=4, alpha=2), "NetworkModuleHada"),
    ("loha-conv3", "conv3", lambda l: lm.LohaModule("t", l, 1.0, lora_dim=4, alpha=3), "NetworkModuleHada"),
    ("loha-conv3-tucker", "conv3", lambda l: lm.LohaModule("t", l, 1.0, lora_dim=4, alpha=3, use_tucker=True),
     "NetworkModuleHada"),
    ("lokr-linear", "linear", lambda l: lm.LokrModule("t", l, 1.0, lora_dim=2, alpha=1, factor=4), "NetworkModuleLokr"),
    ("lokr-linear-full", "linear", lambda l: lm.LokrModule("t", l, 1.0, lora_dim=2, alpha=1, full_matrix=True),
     "NetworkModuleLokr"),
    ("lokr-linear-decomposed", "linear",
     lambda l: lm.LokrModule("t", l, 1.0, lora_dim=2, alpha=3, decompose_both=True), "NetworkModuleLokr"),
    ("lokr-conv3", "conv3", lambda l: lm.LokrModule("t", l, 1.0, lora_dim=2, alpha=1, factor=4), "NetworkModuleLokr"),
    ("lokr-conv3-tucker-t2", "conv3",
     lambda l: lm.LokrModule("t", l, 1.0, lora_dim=2, alpha=1, factor=4, use_tucker=True), "NetworkModuleLokr"),
    ("lokr-conv3-full", "conv3", lambda l: lm.LokrModule("t", l, 1.0, lora_dim=2, alpha=1, factor=4, full_matrix=True),
     "NetworkModuleLokr"),
    ("ia3-linear", "linear", lambda l: lm.IA3Module("t", l, 1.0), "NetworkModuleIa3"),
    ("ia3-linear-on-input", "linear", lambda l: lm.IA3Module("t", l, 1.0, train_on_input=True), "NetworkModuleIa3"),
    # A1111 raises on conv IA3 (it reshapes the scales to (-1, 1)); we scale the channel axis like the library.
    ("ia3-conv3", "conv3", lambda l: lm.IA3Module("t", l, 1.0), "NetworkModuleIa3"),
    ("ia3-conv3-on-input", "conv3", lambda l: lm.IA3Module("t", l, 1.0, train_on_input=True), "NetworkModuleIa3"),
    ("diag-oft-linear", "linear", lambda l: lm.DiagOFTModule("t", l, 1.0, lora_dim=4, constraint=0),
     "NetworkModuleOFT"),
    ("diag-oft-linear-constraint-rescale", "linear",
     lambda l: lm.DiagOFTModule("t", l, 1.0, lora_dim=8, constraint=2e-3, rescaled=True), "NetworkModuleOFT"),
    ("diag-oft-conv3-rescale", "conv3",
     lambda l: lm.DiagOFTModule("t", l, 1.0, lora_dim=4, constraint=0, rescaled=True), "NetworkModuleOFT"),
    ("boft-linear", "linear", lambda l: lm.ButterflyOFTModule("t", l, 1.0, lora_dim=4), "NetworkModuleOFT"),
    ("boft-linear-sq-constraint", "linear_sq",
     lambda l: lm.ButterflyOFTModule("t", l, 1.0, lora_dim=4, constraint=2e-3), "NetworkModuleOFT"),
    ("boft-conv3-rescale", "conv3", lambda l: lm.ButterflyOFTModule("t", l, 1.0, lora_dim=8, rescaled=True),
     "NetworkModuleOFT"),
    # GLoRA: A1111 ignores alpha, LyCORIS scales by alpha/rank — they agree at alpha == rank (see the test below).
    ("glora-linear", "linear", lambda l: lm.GLoRAModule("t", l, 1.0, lora_dim=4, alpha=4), "NetworkModuleGLora"),
    ("glora-conv3", "conv3", lambda l: lm.GLoRAModule("t", l, 1.0, lora_dim=4, alpha=4), "NetworkModuleGLora"),
    ("glora-conv1", "conv1", lambda l: lm.GLoRAModule("t", l, 1.0, lora_dim=4, alpha=4), "NetworkModuleGLora"),
    # DoRA: A1111 normalises over every axis but the input one, i.e. LyCORIS's wd_on_out=False (see below for True).
    ("locon-dora-linear", "linear",
     lambda l: lm.LoConModule("t", l, 1.0, lora_dim=4, alpha=2, weight_decompose=True, wd_on_out=False),
     "NetworkModuleLora"),
    ("locon-dora-conv3", "conv3",
     lambda l: lm.LoConModule("t", l, 1.0, lora_dim=4, alpha=2, weight_decompose=True, wd_on_out=False),
     "NetworkModuleLora"),
    ("locon-dora-conv3-tucker", "conv3",
     lambda l: lm.LoConModule("t", l, 1.0, lora_dim=4, alpha=2, use_tucker=True, weight_decompose=True,
                              wd_on_out=False), "NetworkModuleLora"),
    ("loha-dora-linear", "linear",
     lambda l: lm.LohaModule("t", l, 1.0, lora_dim=4, alpha=2, weight_decompose=True, wd_on_out=False),
     "NetworkModuleHada"),
    ("lokr-dora-conv3", "conv3",
     lambda l: lm.LokrModule("t", l, 1.0, lora_dim=2, alpha=1, factor=4, weight_decompose=True, wd_on_out=False),
     "NetworkModuleLokr"),
]


@pytest.mark.parametrize("case,layer_name,build,class_name", CASES, ids=[c[0] for c in CASES])
def test_delta_matches_lycoris(layers, case, layer_name, build, class_name) -> None:
    layer = layers[layer_name]
    lyco = randomize(build(copy.deepcopy(layer)), seed=len(case))
    module, dw, db = ours(lyco, layer)
    assert type(module).__name__ == class_name
    assert db is None
    assert_matches(case, dw, library_delta(lyco), layer.weight)


@pytest.mark.parametrize("multiplier", [0.5, -1.25])
def test_lora_multiplier_matches_lycoris(layers, multiplier) -> None:
    """For additive types the library's multiplier and A1111's (applied after the scale) are the same thing."""
    layer = layers["conv3"]
    lyco = randomize(lm.LoConModule("t", copy.deepcopy(layer), multiplier, lora_dim=4, alpha=1.5), seed=3)
    _, dw, _ = ours(lyco, layer, multiplier)
    assert_matches(f"locon-conv3-m{multiplier}", dw, library_delta(lyco), layer.weight)


@pytest.mark.parametrize("layer_name", ["linear", "conv3"])
def test_full_matches_lycoris(layers, layer_name) -> None:
    """``diff``/``diff_b`` (a full fine-tune): the library saves them only after ``apply_to``."""
    layer = layers[layer_name]
    lyco = randomize(lm.FullModule("t", copy.deepcopy(layer), 1.0), seed=5)
    lyco.apply_to()  # folds the original into the module, which is what its state_dict expects
    module, dw, db = ours(lyco, layer, multiplier=0.75)
    assert isinstance(module, network_full.NetworkModuleFull)
    lib_dw, lib_db = lyco.get_diff_weight(multiplier=0.75)
    assert_matches(f"full-{layer_name}", dw, lib_dw, layer.weight)
    assert db is not None and lib_db is not None
    assert_matches(f"full-{layer_name}-bias", db, lib_db, layer.bias)


@pytest.mark.parametrize("layer_name", ["groupnorm", "layernorm"])
def test_norm_matches_lycoris(layers, layer_name) -> None:
    layer = layers[layer_name]
    lyco = randomize(lm.NormModule("t", copy.deepcopy(layer), 1.0), seed=6)
    module, dw, db = ours(lyco, layer, multiplier=0.5)
    assert isinstance(module, network_norm.NetworkModuleNorm)
    lib_dw, lib_db = lyco.get_diff_weight(multiplier=0.5)
    assert_matches(f"norm-{layer_name}", dw, lib_dw, layer.weight)
    assert db is not None
    assert_matches(f"norm-{layer_name}-bias", db, lib_db, layer.bias)


# ---------------------------------------------------------------------------------------------------------------
# Where A1111 and the library differ: A1111's formula, plus the library where both agree
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer_name", ["linear", "conv3"])
def test_glora_ignores_alpha(layers, layer_name) -> None:
    """A1111's GLoRA has no ``dim``, so ``alpha`` never scales it; LyCORIS multiplies by ``alpha / rank``."""
    layer = layers[layer_name]
    lyco = randomize(lm.GLoRAModule("t", copy.deepcopy(layer), 1.0, lora_dim=4, alpha=1), seed=7)
    _, dw, _ = ours(lyco, layer)
    assert_matches(f"glora-{layer_name}-alpha-ignored", dw, library_delta(lyco) * (4 / 1), layer.weight)


def test_glora_a1111_layout(layers) -> None:
    """A1111's own tensor layout (LyCORIS < 2): ``ΔW = b2 @ b1 + (W @ a2) @ a1``, straight from the reference."""
    layer = layers["linear"]
    out_dim, in_dim = layer.weight.shape
    gen = torch.Generator().manual_seed(8)
    w = {"a1.weight": torch.randn(3, in_dim, generator=gen) * 0.2, "a2.weight": torch.randn(in_dim, 3, generator=gen),
         "b1.weight": torch.randn(3, in_dim, generator=gen) * 0.2, "b2.weight": torch.randn(out_dim, 3, generator=gen),
         "alpha": torch.tensor(1.0)}
    _, dw, _ = ours(w, layer)
    weight = layer.weight.detach()
    expected = w["b2.weight"] @ w["b1.weight"] + (weight @ w["a2.weight"]) @ w["a1.weight"]
    assert_matches("glora-a1111-layout", dw, expected, weight)


def dora_a1111(weight: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """The reference's DoRA: ``M = W + ΔW·scale``, norm over all dims but dim 1, ``M·(dora_scale/norm) − W``."""
    merged = weight + delta
    norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
    norm = norm.reshape(1, -1, *[1] * (merged.dim() - 2))
    return merged * (dora_scale / norm) - weight


@pytest.mark.parametrize("layer_name", ["linear", "conv3"])
def test_dora_per_output_magnitude_follows_a1111(layers, layer_name) -> None:
    """lycoris-lora 4.1.3 by default (``wd_on_out=True``) saves a per-output magnitude ``(out, 1…)``, normalises rows.

    A1111 still divides by the per-input norm and broadcasts the stored magnitude against it, so such a file
    gives a different weight in A1111 than in the library; we reproduce A1111.
    """
    layer = layers[layer_name]
    lyco = randomize(lm.LoConModule("t", copy.deepcopy(layer), 1.0, lora_dim=4, alpha=2, weight_decompose=True,
                                    wd_on_out=True), seed=9)
    sd = lyco.state_dict()
    assert sd["dora_scale"].shape[0] == layer.weight.shape[0] and sd["dora_scale"].shape[1] == 1
    _, dw, _ = ours(sd, layer)
    weight = layer.weight.detach()
    plain = ours({k: v for k, v in sd.items() if k != "dora_scale"}, layer)[1]
    assert_matches(f"dora-{layer_name}-per-output-a1111", dw, dora_a1111(weight, plain, sd["dora_scale"]), weight)
    assert (dw - library_delta(lyco)).abs().max() > 1e-3  # the library's per-row DoRA really is different


def test_dora_multiplier_is_linear_like_a1111(layers) -> None:
    """A1111 multiplies the final DoRA delta by m; LyCORIS interpolates the magnitude ratio instead (non-linear).

    At m = 1 both agree (tested above); here ours must be exactly m × the m = 1 delta.
    """
    layer = layers["linear"]
    lyco = randomize(lm.LoConModule("t", copy.deepcopy(layer), 1.0, lora_dim=4, alpha=2, weight_decompose=True,
                                    wd_on_out=False), seed=10)
    _, full, _ = ours(lyco, layer)
    _, half, _ = ours(lyco, layer, multiplier=0.5)
    assert torch.equal(half, 0.5 * full)
    lyco.multiplier = 0.5
    assert (half - library_delta(lyco)).abs().max() > 1e-5


def test_boft_multiplier_is_linear_like_a1111(layers) -> None:
    """A1111 scales BOFT's ΔW by m; LyCORIS moves each butterfly stage toward identity — they differ for m ≠ 1."""
    layer = layers["linear"]
    lyco = randomize(lm.ButterflyOFTModule("t", copy.deepcopy(layer), 0.5, lora_dim=4), seed=11)
    _, half, _ = ours(lyco, layer, multiplier=0.5)
    assert (half - library_delta(lyco)).abs().max() > 1e-5


@pytest.mark.parametrize("layer_name", ["linear", "conv3"])
def test_dylora_full_rank_and_dyn(layers, layer_name) -> None:
    """DyLoRA saves plain ``lora_up``/``lora_down``; A1111 slices to ``dyn`` ranks and keeps ``alpha / full rank``.

    The library's own ``get_diff_weight(rank=r)`` uses ``ceil(r/block)+1`` blocks scaled by ``alpha / blocks used``
    (its training-time rule), so it is compared after undoing that scale; the full-rank file is checked against
    the plain LoRA formula.
    """
    layer = layers[layer_name]
    rank, block, alpha = 8, 2, 4.0
    lyco = randomize(lm.DyLoraModule("t", copy.deepcopy(layer), 1.0, lora_dim=rank, block_size=block, alpha=alpha),
                     seed=12)
    sd = lyco.state_dict()
    up, down = sd["lora_up.weight"], sd["lora_down.weight"]
    weight = layer.weight.detach()
    module, dw, _ = ours(sd, layer)
    assert isinstance(module, network_lora.NetworkModuleLora) and module.dim == rank
    assert_matches(f"dylora-{layer_name}-full", dw, (up @ down.reshape(rank, -1)).reshape(weight.shape) * alpha / rank,
                   weight)
    asked = 4  # library: blocks ceil(4/2)+1 = 3 → ranks 0..5, scale alpha/3
    used_blocks = math.ceil(asked / block) + 1
    lib_dw, _ = lyco.get_diff_weight(rank=asked)
    _, dw_dyn, _ = ours(sd, layer, dyn=used_blocks * block)
    assert_matches(f"dylora-{layer_name}-dyn", dw_dyn, lib_dw * used_blocks / rank, weight)


@pytest.mark.parametrize("case,layer_name,build,class_name", CASES, ids=[c[0] for c in CASES])
def test_every_file_tensor_goes_through_the_patchers_stage(layers, case, layer_name, build, class_name) -> None:
    """``calc_staged`` reaches each of the file's tensors through ``stage`` (on a GPU: the copy kept between
    switches), none by a direct host→device ``.to``, and computes what ``calc`` computes."""
    layer = layers[layer_name]
    lyco = randomize(build(copy.deepcopy(layer)), seed=len(case))
    module = network_types.create_module(weights_for(lyco.state_dict(), layer))
    staged: list[torch.Tensor] = []

    def stage(tensor: torch.Tensor) -> torch.Tensor:
        staged.append(tensor)
        return tensor.clone()

    weight = layer.weight.detach().float().clone()
    expected, _ = module.calc(weight, None)
    got, _ = module.calc_staged(weight, None, stage)
    assert torch.equal(got, expected)
    used = {id(t) for t in staged}
    unstaged = sorted(k for k, t in module.weights.w.items() if t.numel() > 1 and id(t) not in used)
    assert not unstaged, f"{case}: tensors used without staging: {unstaged}"


@pytest.mark.parametrize(("case", "fast"), [
    ("locon-linear", True), ("locon-conv3", True), ("locon-conv1", True),
    ("locon-conv3-tucker", False), ("locon-dora-linear", False),
])
def test_plain_lora_pairs_take_the_patchers_fast_path(layers, case, fast) -> None:
    """A plain up/down pair is added with one addmm_ (``add_to``; checked against ``calc`` and so against the
    library by ``ours``); a Tucker core or DoRA goes through ``calc``. Also with a DyLoRA rank limit."""
    _, layer_name, build, _ = next(c for c in CASES if c[0] == case)
    layer = layers[layer_name]
    lyco = randomize(build(copy.deepcopy(layer)), seed=len(case))
    module, dw, _ = ours(lyco, layer, multiplier=0.7)
    working = layer.weight.detach().float().clone().contiguous()
    assert module.add_to(working, 0.7, lambda t: t) is fast
    if fast:
        torch.testing.assert_close(working - layer.weight.detach().float(), dw, atol=1e-6, rtol=0)
        module.dyn = 2
        _, dw_dyn, _ = ours(lyco, layer, multiplier=0.7, dyn=2)
        working = layer.weight.detach().float().clone().contiguous()
        assert module.add_to(working, 0.7, lambda t: t)
        torch.testing.assert_close(working - layer.weight.detach().float(), dw_dyn, atol=1e-6, rtol=0)
        assert (dw_dyn - dw).abs().max() > 1e-3  # the rank limit matters
    else:
        assert torch.equal(working, layer.weight.detach().float())  # untouched when declined


# ---------------------------------------------------------------------------------------------------------------
# Formula tests: kohya OFT, old LyCORIS OFT, LoRA aliases, scale rules
# ---------------------------------------------------------------------------------------------------------------

def cayley_reference(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    q = blocks - blocks.transpose(-1, -2)
    norm = q.norm()
    if constraint and norm > constraint:
        q = q * (constraint / norm)
    eye = torch.eye(blocks.shape[-1])
    return (eye + q) @ torch.linalg.inv(eye - q)


@pytest.mark.parametrize("layer_name,alpha", [("linear", 1e-3), ("linear", None), ("conv3", 1e-3)])
def test_kohya_oft_formula(layers, layer_name, alpha) -> None:
    """kohya OFT (``oft_blocks`` + ``alpha``): ``R = block_diag(Cayley(clamp(B − Bᵀ)))``, ``ΔW = Rᵀ·W − W``.

    ``alpha`` bounds ‖Q‖ by ``alpha · out_dim``; the scale is 1 even when the file has ``scale``.
    """
    layer = layers[layer_name]
    weight = layer.weight.detach()
    out_dim, num_blocks = weight.shape[0], 8
    size = out_dim // num_blocks
    blocks = torch.randn(num_blocks, size, size, generator=torch.Generator().manual_seed(13)) * 0.1
    w = {"oft_blocks": blocks, "scale": torch.tensor(7.0)}
    if alpha is not None:
        w["alpha"] = torch.tensor(alpha)
        assert (blocks - blocks.transpose(1, 2)).norm() > alpha * out_dim  # the clamp is active
    module, dw, _ = ours(w, layer, multiplier=0.6)
    assert isinstance(module, network_oft.NetworkModuleOFT) and module.multiplier_scale() == 1.0
    rotation = torch.block_diag(*cayley_reference(blocks, 0.0 if alpha is None else alpha * out_dim))
    assert torch.allclose(rotation @ rotation.T, torch.eye(out_dim), atol=1e-5)
    expected = 0.6 * ((rotation.T @ weight.reshape(out_dim, -1)).reshape(weight.shape) - weight)
    assert_matches(f"kohya-oft-{layer_name}-alpha{alpha}", dw, expected, weight)


def test_old_lycoris_oft_diag_is_the_rotation(layers) -> None:
    """Old LyCORIS ``oft_diag``: the blocks are R itself (no Cayley, alpha unused); block size = ``shape[1]``."""
    layer = layers["linear"]
    weight = layer.weight.detach()
    gen = torch.Generator().manual_seed(14)
    rotations = torch.linalg.qr(torch.randn(4, 16, 16, generator=gen)).Q  # 4 blocks of 16 → 64 outputs
    _, dw, _ = ours({"oft_diag": rotations, "alpha": torch.tensor(1e-9)}, layer)
    expected = torch.block_diag(*rotations).T @ weight - weight
    assert_matches("oft-diag-old", dw, expected, weight)


def test_lora_aliases_and_scale_rules(layers) -> None:
    """PEFT/diffusers spellings are read as down/up; ``scale`` beats ``alpha/dim``; no alpha means scale 1."""
    layer = layers["linear"]
    gen = torch.Generator().manual_seed(15)
    up, down = torch.randn(64, 4, generator=gen), torch.randn(4, 32, generator=gen)
    base = (up @ down)
    for w in ({"lora_up.weight": up, "lora_down.weight": down}, {"lora_B.weight": up, "lora_A.weight": down},
              {"lora.up.weight": up, "lora.down.weight": down}):
        module, dw, _ = ours(w, layer)
        assert isinstance(module, network_lora.NetworkModuleLora)
        assert_matches("lora-alias", dw, base, layer.weight)
        assert_matches("lora-alpha", ours({**w, "alpha": torch.tensor(2.0)}, layer)[1], base * 0.5, layer.weight)
        assert_matches("lora-scale", ours({**w, "alpha": torch.tensor(2.0), "scale": torch.tensor(0.3)}, layer)[1],
                       base * 0.3, layer.weight)


def test_factorization_matches_lycoris() -> None:
    for dimension in (1, 2, 7, 12, 32, 64, 127, 128, 250, 320, 360, 512, 640, 768, 1024, 1280):
        for factor in (-1, 0, 2, 3, 4, 8, 16, 100):
            assert lyco_helpers.factorization(dimension, factor) == lycoris_factorization(dimension, factor), \
                (dimension, factor)


def test_unknown_suffixes_raise_with_the_module_and_keys(layers) -> None:
    weights = weights_for({"foo.weight": torch.zeros(3), "alpha": torch.tensor(1.0)}, layers["linear"],
                          key="lora_te_text_model_encoder_layers_0_mlp_fc1")
    with pytest.raises(ValueError, match=r"lora_te_text_model_encoder_layers_0_mlp_fc1.*'alpha', 'foo.weight'"):
        network_types.create_module(weights)


def test_type_order_is_a1111s() -> None:
    assert [name for name, _ in network_types.MODULE_TYPES] == \
        ["lora", "hada", "ia3", "lokr", "full", "norm", "glora", "oft"]


# ---------------------------------------------------------------------------------------------------------------
# Stacking: a later network sees the earlier one's result (A1111's sequential merge)
# ---------------------------------------------------------------------------------------------------------------

def test_ia3_after_lora_sees_the_lora_modified_weight(layers) -> None:
    root = nn.Module()
    root.lin = copy.deepcopy(layers["linear"])
    original = root.lin.weight.detach().clone()
    gen = torch.Generator().manual_seed(16)
    lora = network_types.create_module(weights_for(
        {"lora_up.weight": torch.randn(64, 4, generator=gen),
         "lora_down.weight": torch.randn(4, 32, generator=gen) * 0.1, "alpha": torch.tensor(2.0)}, root.lin))
    scales = torch.randn(64, generator=gen)
    ia3 = network_types.create_module(weights_for({"weight": scales, "on_input": torch.tensor(0)}, root.lin))
    assert isinstance(ia3, network_ia3.NetworkModuleIa3)

    patcher = WeightPatcher(root)
    patcher.reconcile([WantedNetwork("lora", 0.8, {"lin": lora}), WantedNetwork("ia3", 0.5, {"lin": ia3})])
    after_lora = original + 0.8 * lora.calc(original, None)[0]
    expected = after_lora + 0.5 * after_lora * scales[:, None]
    independent = original + 0.8 * lora.calc(original, None)[0] + 0.5 * original * scales[:, None]
    assert torch.allclose(root.lin.weight, expected, atol=1e-6)
    assert not torch.allclose(root.lin.weight, independent, atol=1e-3)

    patcher.reconcile([WantedNetwork("ia3", 0.5, {"lin": ia3}), WantedNetwork("lora", 0.8, {"lin": lora})])
    after_ia3 = original + 0.5 * original * scales[:, None]
    assert torch.allclose(root.lin.weight, after_ia3 + 0.8 * lora.calc(after_ia3, None)[0], atol=1e-6)

    patcher.restore_all()
    assert torch.equal(root.lin.weight, original)


# ---------------------------------------------------------------------------------------------------------------
# A real saved LyCORIS file (kohya entry point, explicit preset) over the whole tiny model
# ---------------------------------------------------------------------------------------------------------------

PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
"""


@pytest.mark.parametrize("algo,alpha", [("locon", 2.0), ("loha", 4.0), ("lokr", 4.0)])
def test_saved_lycoris_file_over_the_whole_model(tmp_path: Path, algo: str, alpha: float) -> None:
    """Every group of a saved file is accepted as the right type and matches the library's ``get_diff_weight``.

    (LoHa/LoKr use alpha == rank: their 4.1.3 ``get_diff_weight`` applies ``alpha/rank`` twice, see the module doc.)
    """
    from safetensors.torch import load_file

    unet, _vae, text_encoder = demo_model.build_components(seed=1)
    (tmp_path / "preset.toml").write_text(PRESET)
    net = lycoris.kohya.create_network(1.0, 4, alpha, None, text_encoder, unet, algo=algo, conv_dim=4,
                                       conv_alpha=alpha, factor=4, preset=str(tmp_path / "preset.toml"))
    net.apply_to(text_encoder, unet, True, True)  # registers the modules (and wraps the layers' forward)
    randomize(net, seed=17, std=0.1)
    net.save_weights(str(tmp_path / "net.safetensors"), torch.float32, {})
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(tmp_path / "net.safetensors")).items():
        module_part, _, weight_part = key.partition(".")
        groups.setdefault(module_part, {})[weight_part] = tensor
    assert len(groups) == len(net.loras) > 100
    expected_class = {"locon": "NetworkModuleLora", "loha": "NetworkModuleHada", "lokr": "NetworkModuleLokr"}[algo]
    kinds = set()
    for lyco in net.loras:
        layer = lyco.org_module[0]
        kinds.add(type(layer).__name__)
        module, dw, _ = ours(groups[lyco.lora_name], layer)
        assert type(module).__name__ == expected_class
        with torch.no_grad():
            lib_dw = lyco.get_diff_weight(multiplier=1.0)[0].reshape(layer.weight.shape)
        assert lib_dw.abs().max() > 1e-4
        err = (dw - lib_dw).abs().max().item()
        RESULTS[f"file-{algo}"] = max(RESULTS.get(f"file-{algo}", 0.0), err)
        assert err <= 1e-5 * max(layer.weight.abs().max().item(), lib_dw.abs().max().item()), lyco.lora_name
    assert {"Linear", "Conv2d"} <= kinds


def test_zz_report() -> None:
    """Prints the max |ours − library| per case (visible with ``-s``)."""
    for case, err in sorted(RESULTS.items()):
        print(f"{case:45s} {err:.2e}")
