"""A1111 hypernetworks: file format, K/V attention processors, the ``<hypernet:...>`` extra network, the library.

The UNet is the tiny demo model with cross-attention on both levels and a text width of 48, so its context widths
are 32 and 64 (self-attention) and 48 (cross-attention) — SD1's 320/640/1280 and 768 in miniature; a second
one keeps the demo's default, where self- and cross-attention share the width 32.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shlex
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from modules import demo_model
from modules.extra_networks import ActivationContext, ExtraNetworkParams, ExtraNetworkRegistry
from modules.hashes import HashCache
from modules.hypernetworks.extra_network import ExtraNetworkHypernet
from modules.hypernetworks.hypernetwork import ACTIVATIONS, Hypernetwork, HypernetworkSpec, apply_hypernetworks
from modules.hypernetworks.library import HypernetworkLibrary
from modules.hypernetworks.processor import ContextCache, HypernetworkAttnProcessor, install
from modules.model_loading import ModelFileError
from modules.patching import WeightPatcher

SELF_A, SELF_B, CROSS = 32, 64, 48
BROKEN_ACTIVATIONS = {"glu", "threshold", "multiheadattention"}  # A1111 cannot run files with these either
RUNNABLE_ACTIVATIONS = sorted(set(ACTIVATIONS) - BROKEN_ACTIVATIONS)


# ----------------------------------------------------------------------------------------------- fixtures, helpers

@pytest.fixture(scope="module")
def unet() -> nn.Module:
    spec = demo_model.TinySpec(unet_attention_levels=(0, 1), text_hidden=CROSS)
    return demo_model.build_components(spec)[0]


@pytest.fixture(scope="module")
def unet_shared_width() -> nn.Module:
    return demo_model.build_components()[0]  # self- and cross-attention both 32 wide


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, CROSS, generator=g)


def forward(unet: nn.Module, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, 10, encoder_hidden_states=context, return_dict=False)[0]


def linear_layers(dim: int, seed: int, scale: float = 1.0) -> tuple[dict, tuple[torch.Tensor, ...]]:
    """A ``[1, 1]`` structure's K and V state dicts as A1111 writes them, and the tensors (A_k, b_k, A_v, b_v)."""
    g = torch.Generator().manual_seed(seed)
    a_k, a_v = (scale * 0.5 * torch.randn(dim, dim, generator=g) / dim ** 0.5 for _ in range(2))
    b_k, b_v = (scale * 0.3 * torch.randn(dim, generator=g) for _ in range(2))
    pair = (OrderedDict([("linear.0.weight", a_k), ("linear.0.bias", b_k)]),
            OrderedDict([("linear.0.weight", a_v), ("linear.0.bias", b_v)]))
    return pair, (a_k, b_k, a_v, b_v)


def write_linear_file(path: Path, dims: list[int], seed: int, **meta: object) -> dict[int, tuple[torch.Tensor, ...]]:
    """An A1111 ``.pt`` whose modules are one Linear each (no activation, no LayerNorm); returns the tensors."""
    data: dict[object, object] = {"layer_structure": [1.0, 1.0], "activation_func": "linear", "is_layer_norm": False,
                                  "use_dropout": False, "activate_output": False, "name": path.stem, "step": 0, **meta}
    tensors = {}
    for i, dim in enumerate(dims):
        data[dim], tensors[dim] = linear_layers(dim, seed + i)
    torch.save(data, path)
    return tensors


def write_relu_file(path: Path, dims: list[int], seed: int) -> None:
    """An A1111 ``.pt`` with a relu activation: not affine, so generation applies it through attention processors."""
    torch.manual_seed(seed)
    Hypernetwork.create(path.stem, dims, HypernetworkSpec((1, 2, 1), "relu", weight_initialization="XavierNormal")
                        ).save(path)


def affine(tensors: tuple[torch.Tensor, ...], m: float) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """``c ↦ c + (A c + b)·m`` as (M, t) with M = I + m·A, t = m·b, for K and for V (float64)."""
    a_k, b_k, a_v, b_v = (t.double() for t in tensors)
    eye = torch.eye(a_k.shape[0], dtype=torch.float64)
    return (eye + m * a_k, m * b_k), (eye + m * a_v, m * b_v)


def compose(first, second):
    """Affine maps applied one after the other: c ↦ M2 (M1 c + t1) + t2."""
    (m1, t1), (m2, t2) = first, second
    return m2 @ m1, m2 @ t1 + t2


def merged_unet(unet: nn.Module, maps: dict[int, tuple]) -> nn.Module:
    """A copy of ``unet`` (original processors) whose to_k/to_v weights absorb the affine K/V maps by width:
    to_k(M c + t) = (W_k M) c + W_k t, as new Linears with a bias."""
    from diffusers.models.attention_processor import Attention

    merged = copy.deepcopy(unet)
    for module in merged.modules():
        if isinstance(module, Attention) and module.to_k.in_features in maps:
            for attr, (m, t) in zip(("to_k", "to_v"), maps[module.to_k.in_features]):
                old = getattr(module, attr)
                new = nn.Linear(old.in_features, old.out_features, bias=True)
                with torch.no_grad():
                    w = old.weight.double()
                    new.weight.copy_(w @ m)
                    new.bias.copy_(w @ t + (old.bias.double() if old.bias is not None else 0))
                setattr(module, attr, new)
    return merged


_PATCHERS: dict[int, tuple[nn.Module, WeightPatcher]] = {}  # one per UNet, as a loaded model has


def context(unet: nn.Module) -> ActivationContext:
    """A job's context on a model that is just ``unet`` and its weight patcher (folded hypernetworks use it)."""
    patcher = _PATCHERS.setdefault(id(unet), (unet, WeightPatcher(unet)))[1]
    return ActivationContext(model=SimpleNamespace(pipe=SimpleNamespace(unet=unet), patchers={"unet": patcher},
                                                   extras={}), opts={})


@pytest.fixture(autouse=True)
def _original_weights() -> Iterator[None]:
    """Folded hypernetworks stay merged after a job (as LoRAs do): the shared UNets get their weights back."""
    yield
    for _, patcher in _PATCHERS.values():
        patcher.restore_all()


def tag(*items: str) -> ExtraNetworkParams:
    return ExtraNetworkParams(tuple(items))


@pytest.fixture
def library(tmp_path: Path) -> HypernetworkLibrary:
    return HypernetworkLibrary(tmp_path / "hypernetworks", HashCache(None))


# ------------------------------------------------------------------------------------- (a) the math, independently

@pytest.mark.parametrize("dims", [[SELF_A, SELF_B, CROSS], [CROSS], [SELF_B]])
def test_linear_hypernetwork_equals_merged_kv_weights(unet, inputs, tmp_path, dims) -> None:
    """K' = to_k(c + (A c + b)·m) = (W_k (I + m A)) c + m W_k b, in every attention whose context width the file
    has; V likewise."""
    tensors = write_linear_file(tmp_path / "lin.pt", dims, seed=10)
    hn, m = Hypernetwork.load(tmp_path / "lin.pt"), 0.7
    x, c = inputs
    base = forward(unet, x, c)
    with install(unet, [(hn, m)]):
        ours = forward(unet, x, c)
    expected = forward(merged_unet(unet, {d: affine(tensors[d], m) for d in dims}), x, c)
    assert (ours - base).abs().max() > 1e-3  # the hypernetwork does something
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_shared_width_applies_to_self_and_cross_attention(unet_shared_width, tmp_path) -> None:
    """In the demo model both attn1 and attn2 read 32-wide contexts: A1111 picks layers by width, so both change."""
    tensors = write_linear_file(tmp_path / "lin32.pt", [32], seed=3)
    hn = Hypernetwork.load(tmp_path / "lin32.pt")
    g = torch.Generator().manual_seed(2)
    x, c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    with install(unet_shared_width, [(hn, 1.5)]) as handle:
        ours = forward(unet_shared_width, x, c)
    assert {k.rsplit(".", 2)[-2] for k in handle.wrapped} == {"attn1", "attn2"}
    expected = forward(merged_unet(unet_shared_width, {32: affine(tensors[32], 1.5)}), x, c)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_module_is_residual_with_multiplier(tmp_path) -> None:
    tensors = write_linear_file(tmp_path / "r.pt", [CROSS], seed=4)
    hn = Hypernetwork.load(tmp_path / "r.pt")
    a_k, b_k, a_v, b_v = tensors[CROSS]
    c = torch.randn(3, 5, CROSS)
    k, v = apply_hypernetworks([(hn, 0.25)], c)
    torch.testing.assert_close(k, c + (c @ a_k.T + b_k) * 0.25)
    torch.testing.assert_close(v, c + (c @ a_v.T + b_v) * 0.25)
    k0, v0 = apply_hypernetworks([(hn, 0.25)], torch.randn(3, 5, SELF_A))  # a width it does not have
    assert k0 is v0


# --------------------------------------------------------------------- (b) structures, activations, A1111's layout

def _a1111_module(seq: nn.Sequential) -> nn.Module:
    holder = nn.Module()
    holder.linear = seq  # A1111's HypernetworkModule keeps its Sequential as `linear`
    return holder


LAYOUTS = [  # (spec, module types in order) — worked out by hand from A1111's HypernetworkModule.__init__
    (HypernetworkSpec((1, 2, 1), "relu"), "Linear ReLU Linear"),
    (HypernetworkSpec((1, 2, 1), "relu", activate_output=True), "Linear ReLU Linear ReLU"),
    (HypernetworkSpec((1, 2, 1), "linear", add_layer_norm=True), "Linear LayerNorm Linear LayerNorm"),
    (HypernetworkSpec((1, 2, 1), None, use_dropout=True, last_layer_dropout=True), "Linear Dropout Linear"),
    (HypernetworkSpec((1, 2, 1), None, use_dropout=True), "Linear Linear"),
    (HypernetworkSpec((1, 2, 2, 1), "relu", add_layer_norm=True, use_dropout=True),
     "Linear ReLU LayerNorm Dropout Linear ReLU LayerNorm Linear LayerNorm"),
    (HypernetworkSpec((1, 2, 2, 1), "relu", add_layer_norm=True, use_dropout=True, last_layer_dropout=True),
     "Linear ReLU LayerNorm Dropout Linear ReLU LayerNorm Dropout Linear LayerNorm"),
    (HypernetworkSpec((1, 2, 1), "swish"), "Linear Hardswish Linear"),
    (HypernetworkSpec((1, 1.5, 1), "prelu", dropout_structure=(0, 0.1, 0)), "Linear PReLU Dropout Linear"),
]


@pytest.mark.parametrize(("spec", "types"), LAYOUTS)
def test_sequential_indices_count_every_module(tmp_path, spec, types) -> None:
    hn = Hypernetwork.create("h", [SELF_A], spec)
    mlp = hn.layers[SELF_A][0]
    assert " ".join(type(m).__name__ for m in mlp) == types
    expected = {f"linear.{i}.{p}" for i, mod in enumerate(mlp) for p, _ in mod.named_parameters()}
    hn.save(tmp_path / "h.pt")
    saved = torch.load(tmp_path / "h.pt", weights_only=True)
    assert set(saved[SELF_A][0]) == set(saved[SELF_A][1]) == expected
    assert set(saved[SELF_A][0]) == set(_a1111_module(mlp).state_dict())  # the keys A1111's module would have


def test_dropout_structure_derivation_and_examples() -> None:
    assert HypernetworkSpec((1, 2, 1)).dropout_structure == (0, 0, 0)
    assert HypernetworkSpec((1, 2, 2, 1), use_dropout=True).dropout_structure == (0, 0.3, 0, 0)
    assert HypernetworkSpec((1, 2, 2, 1), use_dropout=True, last_layer_dropout=True).dropout_structure == (0, .3, .3, 0)
    assert HypernetworkSpec((1, 2, 1), dropout_structure=(0, 0.2, 0)).use_dropout  # forced on
    # HypernetworkSpec.from_file: A1111's *loading* defaults (activation after the output layer, no last dropout)
    spec = HypernetworkSpec.from_file({"activation_func": "relu", "use_dropout": True, "layer_structure": [1, 2, 2, 1]})
    assert spec.activate_output and spec.dropout_structure == (0, 0.3, 0, 0)


@pytest.mark.parametrize("bad", [
    {"layer_structure": (2, 1)}, {"layer_structure": (1, 2)}, {"activation_func": "nope"},
    {"activation_func": ["relu"]}, {"dropout_structure": (0, 1.0, 0)}, {"dropout_structure": (0, 0.1)},
])
def test_invalid_structures_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        HypernetworkSpec(**bad)


def test_activation_table_matches_a1111() -> None:
    assert ACTIVATIONS["swish"] is nn.Hardswish and ACTIVATIONS["linear"] is nn.Identity
    for name, cls in {"relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "tanh": nn.Tanh,
                      "sigmoid": nn.Sigmoid, "celu": nn.CELU, "gelu": nn.GELU, "glu": nn.GLU,
                      "hardshrink": nn.Hardshrink, "mish": nn.Mish, "silu": nn.SiLU, "softsign": nn.Softsign,
                      "hardswish": nn.Hardswish, "prelu": nn.PReLU, "rrelu": nn.RReLU}.items():
        assert ACTIVATIONS[name] is cls


OPTIONS = [{},
           {"add_layer_norm": True, "activate_output": True, "use_dropout": True, "last_layer_dropout": True,
            "layer_structure": (1, 2, 1.5, 1), "weight_initialization": "XavierUniform"},
           {"add_layer_norm": True, "use_dropout": True, "layer_structure": (1, 0.5, 1),
            "weight_initialization": "KaimingNormal"}]


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
@pytest.mark.parametrize("activation", RUNNABLE_ACTIVATIONS + [None])
def test_every_activation_and_option_loads_and_runs(unet, inputs, tmp_path, activation) -> None:
    x, c = inputs
    for i, options in enumerate(OPTIONS):
        torch.manual_seed(i)
        spec = HypernetworkSpec(activation_func=activation, **options)
        created = Hypernetwork.create("h", [SELF_A, SELF_B, CROSS], spec)
        created.save(tmp_path / f"h{i}.pt")
        loaded = Hypernetwork.load(tmp_path / f"h{i}.pt")
        assert loaded.spec == created.spec and loaded.dims == {SELF_A, SELF_B, CROSS}
        probe = torch.randn(2, 3, CROSS)
        for a, b in zip(apply_hypernetworks([(created, 1.3)], probe), apply_hypernetworks([(loaded, 1.3)], probe)):
            assert torch.equal(a, b)
    with install(unet, [(loaded, 1.0)]):
        out = forward(unet, x, c)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("activation", sorted(BROKEN_ACTIVATIONS))
def test_activations_that_cannot_run_are_refused_with_the_reason(tmp_path, activation) -> None:
    dim = CROSS
    glu_like = {"linear.0.weight": torch.zeros(2 * dim, dim), "linear.0.bias": torch.zeros(2 * dim),
                "linear.2.weight": torch.zeros(dim, 2 * dim), "linear.2.bias": torch.zeros(dim)}
    torch.save({dim: (glu_like, glu_like), "activation_func": activation, "activate_output": False}, tmp_path / "b.pt")
    with pytest.raises(ModelFileError, match=rf"b\.pt is not a usable hypernetwork: .*({activation}|cannot run)"):
        Hypernetwork.load(tmp_path / "b.pt")


def test_a1111_file_with_module_state_dicts_and_defaults(tmp_path) -> None:
    """A file as A1111 writes it (``HypernetworkModule.state_dict()``, with ``_metadata``); missing keys take
    A1111's loading defaults; the internal name overrides the file stem."""
    torch.manual_seed(5)
    seq = nn.Sequential(nn.Linear(SELF_B, 128), nn.ReLU(), nn.Linear(128, SELF_B), nn.ReLU())
    sd = _a1111_module(seq).state_dict()
    assert hasattr(sd, "_metadata")
    torch.save({SELF_B: (sd, sd), "activation_func": "relu", "name": "internal", "step": 1200,
                "sd_checkpoint": "abcdef0123", "sd_checkpoint_name": "v1-5", "optional_info": "hi"},
               tmp_path / "stem.pt")
    hn = Hypernetwork.load(tmp_path / "stem.pt")
    assert (hn.name, hn.step, hn.sd_checkpoint, hn.sd_checkpoint_name, hn.optional_info) == (
        "internal", 1200, "abcdef0123", "v1-5", "hi")
    assert hn.spec.layer_structure == (1, 2, 1) and hn.spec.activate_output  # defaults when loading
    c = torch.randn(2, 4, SELF_B)
    torch.testing.assert_close(apply_hypernetworks([(hn, 0.5)], c)[0], c + seq(c) * 0.5)


def test_old_novelai_keys(tmp_path) -> None:
    g = torch.Generator().manual_seed(6)
    w1, b1 = torch.randn(2 * CROSS, CROSS, generator=g) * 0.1, torch.randn(2 * CROSS, generator=g)
    w2, b2 = torch.randn(CROSS, 2 * CROSS, generator=g) * 0.1, torch.randn(CROSS, generator=g)
    old = {"linear1.weight": w1, "linear1.bias": b1, "linear2.weight": w2, "linear2.bias": b2}
    torch.save({CROSS: (old, dict(old))}, tmp_path / "nai.pt")
    hn = Hypernetwork.load(tmp_path / "nai.pt")
    assert hn.name == "nai" and hn.spec.activation_func is None
    c = torch.randn(1, 3, CROSS)
    expected = c + ((c @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(apply_hypernetworks([(hn, 1.0)], c)[1], expected, atol=1e-5, rtol=0)


def test_save_writes_a1111_keys(tmp_path) -> None:
    hn = Hypernetwork.create("n", [CROSS, SELF_A], HypernetworkSpec((1, 2, 2, 1), "elu", use_dropout=True))
    hn.step, hn.sd_checkpoint = 42, "0123456789"
    hn.save(tmp_path / "n.pt")
    data = torch.load(tmp_path / "n.pt", weights_only=True)
    assert set(data) == {CROSS, SELF_A, "step", "name", "layer_structure", "activation_func", "is_layer_norm",
                         "weight_initialization", "sd_checkpoint", "sd_checkpoint_name", "activate_output",
                         "use_dropout", "dropout_structure", "last_layer_dropout", "optional_info"}
    assert (data["step"], data["layer_structure"], data["dropout_structure"], data["last_layer_dropout"]) == (
        42, [1, 2, 2, 1], [0, 0.3, 0, 0], False)
    assert isinstance(data[CROSS], tuple) and all(k.startswith("linear.") for k in data[CROSS][0])


# ------------------------------------------------------------------ (c) install / restore through the extra network

def test_processors_restored_exactly_and_output_unchanged(unet, inputs, tmp_path, library) -> None:
    library.folder.mkdir()
    write_relu_file(library.folder / "h.pt", [SELF_A, CROSS], seed=7)
    registry = ExtraNetworkRegistry()
    registry.register(ExtraNetworkHypernet(library))
    x, c = inputs
    before_procs = unet.attn_processors
    before = forward(unet, x, c)
    ctx = context(unet)
    with registry.activated(ctx, {"hypernet": [tag("h", "0.8")]}):
        during_procs = unet.attn_processors
        during = forward(unet, x, c)
    wrapped = {k for k, p in during_procs.items() if isinstance(p, HypernetworkAttnProcessor)}
    widths = {k: unet.get_submodule(k.removesuffix(".processor")).to_k.in_features for k in before_procs}
    assert wrapped == {k for k, w in widths.items() if w in (SELF_A, CROSS)}
    assert all(during_procs[k].inner is before_procs[k] and during_procs[k].entries[0][1] == 0.8 for k in wrapped)
    assert all(during_procs[k] is before_procs[k] for k in set(before_procs) - wrapped)
    after_procs = unet.attn_processors
    assert all(after_procs[k] is before_procs[k] for k in before_procs) and len(after_procs) == len(before_procs)
    assert (during - before).abs().max() > 1e-3
    assert torch.equal(forward(unet, x, c), before)
    assert ctx.infotext == {} and ctx.comments == []  # A1111 writes nothing for <hypernet:...>

    with pytest.raises(RuntimeError, match="boom"), registry.activated(context(unet), {"hypernet": [tag("h")]}):
        assert any(isinstance(p, HypernetworkAttnProcessor) for p in unet.attn_processors.values())
        raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is p for k, p in before_procs.items())


def test_failed_activation_of_another_network_still_restores(unet, library) -> None:
    library.folder.mkdir()
    write_linear_file(library.folder / "h.pt", [CROSS], seed=8)
    registry = ExtraNetworkRegistry()
    network = ExtraNetworkHypernet(library)
    registry.register(network)

    class Failing:
        name = "zzz"

        def activate(self, ctx, params):
            raise ValueError("fails after hypernet")

        def deactivate(self, ctx):
            pass

    registry.register(Failing())
    before = unet.attn_processors
    with pytest.raises(ValueError, match="fails after hypernet"), \
            registry.activated(context(unet), {"hypernet": [tag("h")]}):
        pass
    assert all(unet.attn_processors[k] is p for k, p in before.items())
    network.deactivate(context(unet))  # a second deactivate is harmless


def test_activate_replaces_previous_and_multiplier_rules(unet, inputs, library) -> None:
    library.folder.mkdir()
    write_relu_file(library.folder / "a.pt", [CROSS], seed=9)
    write_relu_file(library.folder / "b.pt", [SELF_B], seed=10)
    network, ctx = ExtraNetworkHypernet(library), context(unet)
    original = unet.attn_processors
    x, c = inputs
    base = forward(unet, x, c)
    try:
        network.activate(ctx, [tag("a")])
        network.activate(ctx, [tag("b", "0.5", "ignored")])  # replaces a; items after the multiplier are unused
        procs = unet.attn_processors
        wrapped = [p for p in procs.values() if isinstance(p, HypernetworkAttnProcessor)]
        assert wrapped and all(p.inner is original[k] for k, p in procs.items() if p in wrapped)
        assert all(p.entries[0][0].name == "b" and p.entries[0][1] == 0.5 for p in wrapped)
        network.activate(ctx, [tag("a", "0")])  # multiplier 0 is no hypernetwork at all
        assert torch.equal(forward(unet, x, c), base)
        network.activate(ctx, [tag("a", "te=1")])  # named arguments are not supported
        assert ctx.comments == ["Hypernetwork a: the multiplier 'te=1' is not a number"]
        assert all(unet.attn_processors[k] is p for k, p in original.items())
    finally:
        network.deactivate(ctx)
    assert all(unet.attn_processors[k] is p for k, p in original.items())


# ------------------------------------------------------------------ (d) cross-attention context computed once

def _count_calls(module: nn.Module, counter: dict, key: str) -> None:
    counter.setdefault(key, 0)
    module.register_forward_hook(lambda *_: counter.__setitem__(key, counter[key] + 1))


def test_cross_attention_context_transformed_once_per_conditioning(unet, inputs, tmp_path) -> None:
    torch.manual_seed(11)
    spec = HypernetworkSpec((1, 2, 1), "relu", weight_initialization="XavierNormal")
    hn = Hypernetwork.create("c", [SELF_A, CROSS], spec)
    calls: dict[str, int] = {}
    _count_calls(hn.layers[CROSS][0], calls, "cross_k")
    _count_calls(hn.layers[CROSS][1], calls, "cross_v")
    _count_calls(hn.layers[SELF_A][0], calls, "self_k")
    x, c = inputs
    attn1_32 = sum(1 for k in unet.attn_processors if k.endswith("attn1.processor")
                   and unet.get_submodule(k.removesuffix(".processor")).to_k.in_features == SELF_A)
    with install(unet, [(hn, 1.0)]) as handle:
        outs = [forward(unet, x * (1 + step / 10), c) for step in range(4)]  # 4 "steps", one conditioning
        assert calls == {"cross_k": 1, "cross_v": 1, "self_k": 4 * attn1_32}  # self-attention: every call
        assert len(handle.cache) == 1
        c2 = c.clone()
        forward(unet, x, c2)  # a new conditioning tensor
        assert calls["cross_k"] == 2
        c2.mul_(2)  # changed in place: computed again, never a stale context
        again = forward(unet, x, c2)
        assert calls["cross_k"] == 3
        del c2
        assert len(handle.cache) == 1  # a dropped conditioning drops its entry
    assert not torch.equal(outs[0], outs[1]) and torch.isfinite(again).all()


def test_cached_context_gives_the_same_output_as_recomputing(unet, inputs, tmp_path) -> None:
    write_linear_file(tmp_path / "h.pt", [SELF_B, CROSS], seed=12)
    hn = Hypernetwork.load(tmp_path / "h.pt")
    x, c = inputs
    with install(unet, [(hn, 1.0)]):
        first = forward(unet, x, c)  # computes and caches
        second = forward(unet, x, c)  # from the cache
        fresh = forward(unet, x, c.clone())  # a new tensor: recomputed
    assert torch.equal(first, second) and torch.equal(first, fresh)


def test_real_sampling_loop_transforms_the_conditioning_once(unet, tmp_path) -> None:
    from modules import rng, samplers, sampling
    from modules.model_loading import SD15_CONFIG_DIR

    torch.manual_seed(13)
    hn = Hypernetwork.create("c", [CROSS], HypernetworkSpec((1, 2, 1), "relu"))
    calls: dict[str, int] = {}
    _count_calls(hn.layers[CROSS][0], calls, "cross_k")
    config = json.loads((SD15_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())
    sampler, schedule = samplers.split_sampler_and_schedule("Euler", None)
    noise, generators = rng.initial_noise((4, 8, 8), [1, 2], [1, 2], 0.0, torch.device("cpu"))
    run = samplers.create_run(sampler, schedule, config, [1, 2], generators)
    cond, uncond = torch.randn(2, 7, CROSS), torch.randn(2, 7, CROSS)
    with install(unet, [(hn, 1.0)]):
        sampling.denoise(unet, run, noise, sampling.Guidance.fixed(cond, uncond, 7.0), 5)
    assert calls["cross_k"] == 1  # 5 steps, 11 cross-attention modules, one cond+uncond batch: once


# ----------------------------------------------------------------------- (e) missing, corrupt, unsafe, foreign

class _Payload:
    """Pickles as a call to os.system that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_missing_corrupt_unsafe_and_foreign_files_are_reported(unet, tmp_path, library) -> None:
    folder = library.folder
    folder.mkdir()
    write_relu_file(folder / "good.pt", [CROSS], seed=14)
    (folder / "corrupt.pt").write_bytes((folder / "good.pt").read_bytes()[:300])
    marker = tmp_path / "marker"
    torch.save({CROSS: linear_layers(CROSS, 1)[0], "name": _Payload(marker)}, folder / "unsafe.pt")
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(1, CROSS)}}, folder / "ti.pt")
    torch.save({"lora_unet_down.weight": torch.zeros(2, 2)}, folder / "foreign.pt")
    torch.save(torch.zeros(3), folder / "tensor.pt")
    torch.save({CROSS: linear_layers(SELF_A, 1)[0]}, folder / "shapes.pt")

    for name, problem in [("corrupt", "corrupt"), ("unsafe", "Nothing in it was executed"),
                          ("ti", "textual-inversion embedding"), ("foreign", "no layers"),
                          ("tensor", "holds a Tensor"), ("shapes", "do not match layer_structure")]:
        with pytest.raises(ModelFileError, match=rf"{name}\.pt.*{problem}"):
            library.load(name)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))  # the payload is real: plain pickle runs it
    assert (tmp_path / "proof").exists()
    with pytest.raises(KeyError):
        library.load("nope")

    network, ctx = ExtraNetworkHypernet(library), context(unet)
    before = unet.attn_processors
    network.activate(ctx, [tag("nope", "1"), tag("unsafe"), tag("good", "0.5"), tag("also-missing")])
    try:
        assert ctx.comments[0].startswith("Error loading hypernetwork unsafe: Refused to load unsafe.pt")
        assert ctx.comments[1] == "Hypernetwork not found: nope, also-missing"
        wrapped = [p for p in unet.attn_processors.values() if isinstance(p, HypernetworkAttnProcessor)]
        assert [e[0].name for e in wrapped[0].entries] == ["good"]  # the job goes on with what loaded
    finally:
        network.deactivate(ctx)
    assert all(unet.attn_processors[k] is p for k, p in before.items())
    assert not marker.exists()


def test_hypernetwork_for_other_widths_is_reported_and_changes_nothing(unet, library) -> None:
    library.folder.mkdir()
    write_linear_file(library.folder / "sd2.pt", [1024], seed=15)
    network, ctx = ExtraNetworkHypernet(library), context(unet)
    before = unet.attn_processors
    network.activate(ctx, [tag("sd2")])
    assert all(unet.attn_processors[k] is p for k, p in before.items())
    assert ctx.comments == ["Hypernetwork sd2 does nothing on this model: it has layers for context widths 1024 only"]
    network.deactivate(ctx)


# --------------------------------------------------------------------------------- (f) several hypernetworks

def test_two_hypernetworks_apply_in_sequence(unet, inputs, library) -> None:
    library.folder.mkdir()
    first = write_linear_file(library.folder / "one.pt", [CROSS, SELF_A], seed=16)
    second = write_linear_file(library.folder / "two.pt", [CROSS], seed=17)
    x, c = inputs
    one, two = affine(first[CROSS], 0.6), affine(second[CROSS], 1.2)
    in_order = {CROSS: tuple(compose(a, b) for a, b in zip(one, two)), SELF_A: affine(first[SELF_A], 0.6)}
    reversed_order = {**in_order, CROSS: tuple(compose(b, a) for a, b in zip(one, two))}
    expected, wrong = (forward(merged_unet(unet, maps), x, c) for maps in (in_order, reversed_order))
    network, ctx = ExtraNetworkHypernet(library), context(unet)
    network.activate(ctx, [tag("one", "0.6"), tag("two", "1.2")])  # affine: folded into the weights
    try:
        ours = forward(unet, x, c)
    finally:
        network.deactivate(ctx)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert (ours - wrong).abs().max() > 1e-4  # order matters


@pytest.mark.parametrize("kind", ["spatial_group_norm_residual", "cross_norm_with_mask"])
def test_wrapped_attention_reproduces_attn_processor_2_0(kind) -> None:
    """Paths SD1's UNet does not take (4-D input, group norm, residual, output rescale, cross norm, mask): with a
    multiplier of 0 the wrapper computes what diffusers' own AttnProcessor2_0 computes."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(22)
    if kind == "spatial_group_norm_residual":
        attn = Attention(SELF_A, heads=2, dim_head=16, norm_num_groups=8, residual_connection=True,
                         rescale_output_factor=2.0, bias=True).eval()
        args, width = (torch.randn(2, SELF_A, 4, 4),), SELF_A
        kwargs = {}
    else:
        attn = Attention(SELF_A, cross_attention_dim=CROSS, heads=2, dim_head=16,
                         cross_attention_norm="layer_norm").eval()
        mask = torch.ones(2, 7, dtype=torch.bool)
        mask[1, 5:] = False
        args, width = (torch.randn(2, 9, SELF_A),), CROSS
        kwargs = {"encoder_hidden_states": torch.randn(2, 7, CROSS), "attention_mask": mask}
    hn = Hypernetwork.create("h", [width], HypernetworkSpec((1, 2, 1), "relu", weight_initialization="XavierNormal"))
    wrapper = HypernetworkAttnProcessor(AttnProcessor2_0(), ((hn, 0.0),), ContextCache())
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, *args, **kwargs)
        torch.testing.assert_close(wrapper(attn, *args, **kwargs), expected, atol=1e-6, rtol=0)
        changed = HypernetworkAttnProcessor(AttnProcessor2_0(), ((hn, 1.0),), ContextCache())(attn, *args, **kwargs)
    assert (changed - expected).abs().max() > 1e-4


def test_wrapper_passes_other_widths_to_the_original_processor() -> None:
    calls = []

    def original(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        calls.append((encoder_hidden_states, attention_mask, kwargs))
        return hidden_states

    hn = Hypernetwork.create("h", [CROSS])
    wrapper = HypernetworkAttnProcessor(original, ((hn, 1.0),), ContextCache())
    hidden, text = torch.randn(1, 4, SELF_A), torch.randn(1, 3, SELF_B)
    assert wrapper(None, hidden, text) is hidden
    assert calls == [(text, None, {})]


def test_install_twice_is_refused(unet, tmp_path) -> None:
    write_linear_file(tmp_path / "h.pt", [CROSS], seed=18)
    hn = Hypernetwork.load(tmp_path / "h.pt")
    with install(unet, [(hn, 1.0)]), pytest.raises(RuntimeError, match="already installed"):
        install(unet, [(hn, 1.0)])
    assert not any(isinstance(p, HypernetworkAttnProcessor) for p in unet.attn_processors.values())


# ------------------------------------------------------ (g) affine hypernetworks folded into the attention weights

def _flops(unet: nn.Module, x: torch.Tensor, c: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        forward(unet, x, c)
    return counter.get_total_flops()


def _weights(unet: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in unet.state_dict().items()}


def _with_biases(hn: Hypernetwork, seed: int) -> Hypernetwork:
    """A1111 creates zero biases; trained files have others, and they are what the offsets of the fold carry."""
    g = torch.Generator().manual_seed(seed)
    for pair in hn.layers.values():
        for mlp in pair:
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    layer.bias.data = 0.3 * torch.randn(layer.bias.shape, generator=g)
    return hn


def test_affine_hypernetwork_is_folded_into_the_weights_and_costs_no_flops(unet, inputs, library) -> None:
    """A1111's default structure ([1, 2, 1], linear, no layer norm) through the extra network: no processor, no
    MLP call, a step's FLOPs exactly those of a step without it; the output is the processors' (which run the
    MLPs on the context), and the next job without it gets the original weights bit for bit."""
    torch.manual_seed(31)
    hn = _with_biases(Hypernetwork.create("lin", [SELF_A, SELF_B, CROSS],
                                          HypernetworkSpec(weight_initialization="XavierNormal")), 1)
    library.folder.mkdir()
    hn.save(library.folder / "lin.pt")
    x, c = inputs
    base, base_flops, original = forward(unet, x, c), _flops(unet, x, c), _weights(unet)
    with install(unet, [(Hypernetwork.load(library.folder / "lin.pt"), 0.9)]):
        unfolded, unfolded_flops = forward(unet, x, c), _flops(unet, x, c)
    network, ctx = ExtraNetworkHypernet(library), context(unet)
    processors = unet.attn_processors
    network.activate(ctx, [tag("lin", "0.9")])
    calls: dict[str, int] = {}
    loaded = library.load("lin")
    for width in (SELF_A, SELF_B, CROSS):
        _count_calls(loaded.layers[width][0], calls, f"k{width}")
    try:
        assert all(unet.attn_processors[k] is p for k, p in processors.items())
        folded, folded_flops = forward(unet, x, c), _flops(unet, x, c)
    finally:
        network.deactivate(ctx)
    assert set(calls.values()) == {0}
    assert (unfolded - base).abs().max() > 1e-2
    torch.testing.assert_close(folded, unfolded, atol=2e-5, rtol=1e-5)
    assert folded_flops == base_flops < unfolded_flops
    assert torch.equal(forward(unet, x, c), folded)  # merged until the next job, as a LoRA
    network.activate(ctx, [])
    assert all(torch.equal(v, original[k]) for k, v in unet.state_dict().items())


@pytest.mark.parametrize("spec", [
    HypernetworkSpec((1, 2, 1), "relu", weight_initialization="XavierNormal"),
    HypernetworkSpec((1, 2, 1), "linear", add_layer_norm=True, weight_initialization="XavierNormal"),
], ids=["relu", "layer_norm"])
def test_non_affine_hypernetwork_runs_its_mlps_every_step(unet, inputs, library, spec) -> None:
    torch.manual_seed(32)
    library.folder.mkdir()
    Hypernetwork.create("nl", [SELF_A], spec).save(library.folder / "nl.pt")
    x, c = inputs
    original = _weights(unet)
    with install(unet, [(Hypernetwork.load(library.folder / "nl.pt"), 1.0)]):
        reference = forward(unet, x, c)
    network, ctx = ExtraNetworkHypernet(library), context(unet)
    network.activate(ctx, [tag("nl")])
    calls: dict[str, int] = {}
    _count_calls(library.load("nl").layers[SELF_A][0], calls, "k")
    try:
        outs = [forward(unet, x, c) for _ in range(3)]
        assert all(torch.equal(v, original[k]) for k, v in unet.state_dict().items())  # nothing folded
    finally:
        network.deactivate(ctx)
    self_attention = sum(1 for k in unet.attn_processors if k.endswith("attn1.processor")
                         and unet.get_submodule(k.removesuffix(".processor")).to_k.in_features == SELF_A)
    assert calls["k"] == 3 * self_attention
    assert all(torch.equal(out, reference) for out in outs)


def test_a_chain_folds_where_it_is_affine_and_keeps_processors_elsewhere(unet, inputs, library) -> None:
    """Three hypernetworks in order: where every one that has a width is affine (SELF_B, CROSS) the chain is folded;
    where one has an activation (SELF_A) that width gets processors. Together: the all-processors result."""
    torch.manual_seed(33)
    library.folder.mkdir()
    files = {"lin": ([SELF_A, SELF_B, CROSS], HypernetworkSpec(weight_initialization="XavierNormal")),
             "relu": ([SELF_A], HypernetworkSpec((1, 2, 1), "relu", weight_initialization="XavierNormal")),
             "lin2": ([SELF_B], HypernetworkSpec((1, 1.5, 1), weight_initialization="XavierNormal"))}
    for i, (name, (dims, spec)) in enumerate(files.items()):
        _with_biases(Hypernetwork.create(name, dims, spec), i).save(library.folder / f"{name}.pt")
    tags = [tag("lin", "0.7"), tag("relu", "1.1"), tag("lin2", "-0.4")]
    x, c = inputs
    with install(unet, [(Hypernetwork.load(library.folder / f"{t.items[0]}.pt"), float(t.items[1])) for t in tags]):
        unfolded = forward(unet, x, c)
    network, ctx = ExtraNetworkHypernet(library), context(unet)
    network.activate(ctx, tags)
    try:
        folded = forward(unet, x, c)
        wrapped = {unet.get_submodule(k.removesuffix(".processor")).to_k.in_features
                   for k, p in unet.attn_processors.items() if isinstance(p, HypernetworkAttnProcessor)}
        patched = {path.rsplit(".", 1)[-1] if not path.endswith("to_out.0") else "to_out.0"
                   for path in ctx.model.patchers["unet"].patched}
        widths = {unet.get_submodule(path.rsplit(".to_", 1)[0]).to_k.in_features
                  for path in ctx.model.patchers["unet"].patched}
    finally:
        network.deactivate(ctx)
        network.activate(ctx, [])
    assert wrapped == {SELF_A} and widths == {SELF_B, CROSS} and patched == {"to_k", "to_v", "to_out.0"}
    torch.testing.assert_close(folded, unfolded, atol=2e-5, rtol=1e-5)


def test_the_fold_comes_after_the_loras_whatever_the_order(unet, inputs) -> None:
    """The registry activates hypernetworks before LoRAs when their tag comes first. The fold is the patcher's
    later layer: ``to_k``/``to_v`` are patched by the LoRA (layer 0) first and then mapped, whichever order the
    two reconcile in — the processors' result on the LoRA-patched weights."""
    from modules.hypernetworks import folding
    from modules.patching import WantedNetwork

    torch.manual_seed(34)
    hn = _with_biases(Hypernetwork.create("lin", [SELF_A], HypernetworkSpec(weight_initialization="XavierNormal")), 2)
    x, c = inputs
    paths = [f"{name}.{proj}" for name, m in unet.named_modules() if name.endswith("attn1")
             and m.to_k.in_features == SELF_A for proj in ("to_k", "to_v", "to_out.0")]

    class Scale:  # "a LoRA": ΔW = W·(s − 1)
        def __init__(self, s: float) -> None:
            self.s = s

        def calc(self, weight, bias):
            return weight * (self.s - 1), None

    lora = WantedNetwork("scale", 1.0, {p: Scale(1.5) for p in paths})
    patcher = WeightPatcher(unet)
    try:
        patcher.reconcile([lora])
        with install(unet, [(hn, 1.0)]):
            expected = forward(unet, x, c)
        patcher.restore_all()
        fold, _ = folding.fold(unet, [(hn, 1.0)])
        patcher.reconcile([fold], layer=folding.LAYER)  # the hypernetwork first ...
        patcher.reconcile([lora])  # ... then the LoRA: the fold is recomputed on top of it
        ours = forward(unet, x, c)
        patcher.reconcile([WantedNetwork("scale 0.5", 1.0, {p: Scale(0.5) for p in paths})])
        other = forward(unet, x, c)
    finally:
        patcher.restore_all()
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)
    assert (ours - other).abs().max() > 1e-3


def test_nothing_is_folded_while_the_mlps_are_trained(unet, inputs) -> None:
    """With trainable MLPs a fold would cut them out of the graph: fold() declines, and the processors (what
    training installs) give them gradients."""
    from modules.hypernetworks import folding

    torch.manual_seed(35)
    hn = Hypernetwork.create("lin", [SELF_A], HypernetworkSpec(weight_initialization="XavierNormal"))
    assert folding.fold(unet, [(hn, 1.0)])[0] is not None
    for mlp in hn.layers[SELF_A]:
        mlp.requires_grad_(True)
    assert folding.fold(unet, [(hn, 1.0)]) == (None, frozenset())
    x, c = inputs
    with install(unet, [(hn, 1.0)]):
        unet(x, 10, encoder_hidden_states=c, return_dict=False)[0].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for mlp in hn.layers[SELF_A] for p in mlp.parameters())
    unet.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------------- library

def test_library_discovery_names_cache_and_api(tmp_path) -> None:
    folder = tmp_path / "hn"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for rel in ["b.pt", "A.pt", "sub/c.pt", "sub/deeper/b.pt", "None.pt", ".hidden/h.pt", "notes.txt"]:
        write_linear_file(folder / rel, [CROSS], seed=19) if rel.endswith(".pt") else (folder / rel).write_text("x")
    library = HypernetworkLibrary(folder, HashCache(None))
    assert library.names == ["A", "b", "c"]  # sorted by lower-cased path; None.pt and hidden folders skipped
    assert library.find("b") == folder / "sub" / "deeper" / "b.pt"  # the later path with the same stem wins
    listed = [("A", folder / "A.pt"), ("b", folder / "sub/deeper/b.pt"), ("c", folder / "sub/c.pt")]
    assert library.api_list() == [{"name": n, "path": str(p)} for n, p in listed]
    assert library.find("a") is None  # names are case-sensitive, as in A1111

    first = library.load("A")
    assert library.load("A") is first  # cached by (path, mtime, size)
    write_linear_file(folder / "A.pt", [CROSS, SELF_A], seed=20, name="renamed")
    os.utime(folder / "A.pt", ns=(1, 2_000_000_000_000_000_000))
    reloaded = library.load("A")
    assert reloaded is not first and reloaded.name == "renamed" and reloaded.dims == {CROSS, SELF_A}

    write_linear_file(folder / "new.pt", [CROSS], seed=21)
    assert library.load("new").name == "new"  # an unknown name rescans once
    assert len(library.sha256("new")) == 64
