"""WeightPatcher invariants on the tiny UNet: exact restore, no work for an unchanged set, pristine after errors."""

from __future__ import annotations

import random

import pytest
import torch

from modules import demo_model
from modules.patching import WantedNetwork, WeightPatcher


class Additive:
    """ΔW = a fixed tensor (a LoRA-like delta)."""

    def __init__(self, delta: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.delta, self.bias = delta, bias

    def calc(self, weight, bias):
        return self.delta, self.bias


class Scaling:
    """ΔW = W·s (an IA3-like delta that depends on the current weight)."""

    def __init__(self, s: float) -> None:
        self.s = s

    def calc(self, weight, bias):
        return weight * self.s, None


class Exploding:
    def calc(self, weight, bias):
        raise RuntimeError("bad tensor")


@pytest.fixture(scope="module")
def unet():
    return demo_model.build_components()[0]


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def identical(module: torch.nn.Module, reference: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, reference[k]) for k, v in module.state_dict().items())


def linear_paths(unet) -> list[str]:
    return [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def random_network(unet, key: str, seed: int, paths: list[str]) -> dict[str, Additive]:
    g = torch.Generator().manual_seed(seed)
    return {p: Additive(torch.randn(unet.get_submodule(p).weight.shape, generator=g) * 0.01,
                        None if unet.get_submodule(p).bias is None else torch.randn(
                            unet.get_submodule(p).bias.shape, generator=g) * 0.01) for p in paths}


def run(unet) -> torch.Tensor:
    torch.manual_seed(0)
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        return unet(x, torch.tensor(500.0), encoder_hidden_states=c).sample


def test_patch_changes_output_and_restores_bitwise(unet) -> None:
    original = snapshot(unet)
    patcher = WeightPatcher(unet)
    before = run(unet)
    paths = linear_paths(unet)[:20]
    assert patcher.reconcile([WantedNetwork("a", 0.8, random_network(unet, "a", 1, paths))]) == 20
    during = run(unet)
    assert (before - during).abs().max() > 1e-4
    assert patcher.reconcile([WantedNetwork("a", 0.8, random_network(unet, "a", 1, paths))]) == 0  # same set
    patcher.restore_all()
    assert torch.equal(before, run(unet)) and identical(unet, original) and not patcher.patched


def test_multiplier_zero_equals_no_network(unet) -> None:
    original = snapshot(unet)
    patcher = WeightPatcher(unet)
    patcher.reconcile([WantedNetwork("a", 0.0, random_network(unet, "a", 2, linear_paths(unet)[:5]))])
    assert identical(unet, original)
    patcher.restore_all()


def test_switching_recomputes_only_what_changed_and_equals_fresh(unet) -> None:
    original = snapshot(unet)
    paths = linear_paths(unet)
    a = WantedNetwork("a", 1.0, random_network(unet, "a", 3, paths[:10]))
    b = WantedNetwork("b", 0.5, random_network(unet, "b", 4, paths[5:15]))
    patcher = WeightPatcher(unet)
    patcher.reconcile([a])
    assert patcher.reconcile([a, b]) == 10  # only b's modules
    combined = snapshot(unet)
    patcher.restore_all()
    fresh = WeightPatcher(unet)
    fresh.reconcile([a, b])
    assert identical(unet, combined)  # A then A+B == A+B loaded fresh
    assert fresh.reconcile([b]) == 10  # a's 5 exclusive modules restored, 5 shared recomputed
    fresh.restore_all()
    assert identical(unet, original)


def test_sequential_order_matters_for_weight_dependent_deltas(unet) -> None:
    path = linear_paths(unet)[3]
    weight = unet.get_submodule(path).weight.detach().clone()
    add = torch.full_like(weight, 0.1)
    patcher = WeightPatcher(unet)
    patcher.reconcile([WantedNetwork("add", 1.0, {path: Additive(add)}), WantedNetwork("ia3", 1.0, {path: Scaling(0.5)})])
    assert torch.allclose(unet.get_submodule(path).weight, (weight + add) * 1.5, atol=1e-6)
    patcher.reconcile([WantedNetwork("ia3", 1.0, {path: Scaling(0.5)}), WantedNetwork("add", 1.0, {path: Additive(add)})])
    assert torch.allclose(unet.get_submodule(path).weight, weight * 1.5 + add, atol=1e-6)
    patcher.restore_all()
    assert torch.equal(unet.get_submodule(path).weight, weight)


def test_failure_half_way_leaves_weights_pristine(unet) -> None:
    original = snapshot(unet)
    paths = linear_paths(unet)
    patcher = WeightPatcher(unet)
    good = WantedNetwork("good", 1.0, random_network(unet, "good", 5, paths[:8]))
    patcher.reconcile([good])
    broken = {**random_network(unet, "bad", 6, paths[8:12]), paths[12]: Exploding()}
    with pytest.raises(RuntimeError, match="bad tensor"):
        patcher.reconcile([good, WantedNetwork("bad", 1.0, broken)])
    # Every module the failed call touched is back to its original; untouched ones keep "good"'s patch.
    for path in paths[8:13]:
        assert torch.equal(unet.get_submodule(path).weight, original[path + ".weight"])
    patcher.restore_all()
    assert identical(unet, original)


def test_random_switch_cycles_end_bit_identical(unet) -> None:
    original = snapshot(unet)
    paths = linear_paths(unet)
    pool = [WantedNetwork(f"n{i}", m, random_network(unet, f"n{i}", 10 + i, random.Random(i).sample(paths, 12)))
            for i, m in enumerate([1.0, 0.7, -0.3, 1.5])]
    pool.append(WantedNetwork("ia3", 1.0, {p: Scaling(0.2) for p in paths[:6]}))
    patcher = WeightPatcher(unet)
    rng = random.Random(0)
    for _ in range(1000):
        patcher.reconcile(rng.sample(pool, rng.randint(0, len(pool))))
    patcher.restore_all()
    assert identical(unet, original)


def test_backups_on_cpu(unet) -> None:
    original = snapshot(unet)
    patcher = WeightPatcher(unet, backup_device="cpu")
    patcher.reconcile([WantedNetwork("a", 1.0, random_network(unet, "a", 7, linear_paths(unet)[:3]))])
    assert all(w.device.type == "cpu" for w, _ in patcher._backup.values())
    patcher.restore_all()
    assert identical(unet, original)


class Recording:
    """ΔW = a fixed tensor; remembers where and in which dtype the weight it was given lives."""

    def __init__(self, delta: torch.Tensor) -> None:
        self.delta, self.seen = delta, []

    def calc(self, weight, bias):
        self.seen.append((weight.device, weight.dtype))
        return self.delta.to(weight.device), None


def test_compute_device_is_where_deltas_see_the_weight(unet) -> None:
    """``compute_device`` (the GPU in the low-memory modes) gets fp32 copies; the result is written back into the
    weights where they live, equal to computing in place; restore is exact. On the CPU both are the CPU; the GPU
    case is ``tests/test_gpu.py``."""
    original = snapshot(unet)
    path = linear_paths(unet)[0]
    delta = torch.randn(unet.get_submodule(path).weight.shape, generator=torch.Generator().manual_seed(1)) * 0.01
    in_place, elsewhere = Recording(delta), Recording(delta)
    plain = WeightPatcher(unet)
    plain.reconcile([WantedNetwork("a", 0.7, {path: in_place})])
    expected = unet.get_submodule(path).weight.detach().clone()
    plain.restore_all()
    patcher = WeightPatcher(unet, backup_device="cpu", compute_device="cpu")
    patcher.reconcile([WantedNetwork("a", 0.7, {path: elsewhere})])
    assert elsewhere.seen == [(torch.device("cpu"), torch.float32)]
    assert torch.equal(unet.get_submodule(path).weight, expected)
    patcher.restore_all()
    assert identical(unet, original)


class Staging:
    """Stages its factor on the ``meta`` device (here the weights and the compute device are the CPU, where
    staging is a no-op) from ``add_to``, then declines so that ``calc`` applies a fixed delta: the patcher's
    keep/drop policy runs inside real reconciles."""

    def __init__(self, delta: torch.Tensor) -> None:
        self.delta, self.factor, self.copies, self.patcher = delta, torch.randn(16, 4), [], None

    def add_to(self, weight, multiplier, stage):
        assert stage(self.factor) is self.factor  # the compute device: nothing to copy
        self.copies.append(self.patcher.stage(self.factor, torch.device("meta")))
        return False

    def calc(self, weight, bias):
        return self.delta, None


def test_staged_network_tensors_kept_for_the_last_two_sets_in_normal_mode(unet) -> None:
    """With ``keep_staged`` (normal mode on a GPU) a set's device copies survive one switch to another set, so
    switching back copies nothing; a third set drops the oldest. Without it every switch copies afresh."""
    original = snapshot(unet)
    path = linear_paths(unet)[0]
    shape = unet.get_submodule(path).weight.shape
    nets = {name: Staging(torch.full(shape, 0.01 * (i + 1))) for i, name in enumerate("abcd")}

    def use(patcher, name):
        nets[name].patcher = patcher
        patcher.reconcile([WantedNetwork(name, 1.0, {path: nets[name]})])
        return nets[name].copies[-1]

    keeping = WeightPatcher(unet, keep_staged=True)
    first_a = use(keeping, "a")
    assert first_a.device.type == "meta" and first_a.shape == nets["a"].factor.shape
    use(keeping, "b")
    assert use(keeping, "a") is first_a  # back to the previous set: the kept copy
    assert keeping.staged_bytes == 2 * first_a.numel() * first_a.element_size()
    use(keeping, "c")
    use(keeping, "d")
    assert use(keeping, "a") is not first_a  # two other sets since: dropped, copied again
    assert keeping.staged_bytes == 2 * first_a.numel() * first_a.element_size()
    keeping.restore_all()
    assert identical(unet, original)

    copying = WeightPatcher(unet)
    once = use(copying, "a")
    use(copying, "b")
    assert use(copying, "a") is not once and copying.staged_bytes == 0
    copying.restore_all()
    assert identical(unet, original)


class Reads:
    """Δbias = the sum of another module's working weight, as that module's delta saw it in this reconcile (taken,
    so a value left from an earlier reconcile is never used)."""

    def __init__(self, seen: dict[str, torch.Tensor], requires: str) -> None:
        self.seen, self.requires = seen, requires

    def calc(self, weight, bias):
        return None, torch.full_like(bias, float(self.seen.pop(self.requires).sum()))


class Records(Scaling):
    """A weight-dependent delta that leaves the weight it saw for a :class:`Reads`."""

    def __init__(self, s: float, seen: dict[str, torch.Tensor], path: str) -> None:
        super().__init__(s)
        self.seen, self.path = seen, path

    def calc(self, weight, bias):
        self.seen[self.path] = weight.clone()
        return super().calc(weight, bias)


def test_a_module_that_reads_another_is_recomputed_with_it_and_after_it(unet) -> None:
    """``requires``: the reading module (to_out) is recomputed after the module it reads (to_v) whenever either
    changes — a change in to_v alone (a LoRA there) changes to_out's signature, a change in to_out alone
    recomputes to_v first — and the result always equals a fresh patch of the same set."""
    attn = next(n for n, m in unet.named_modules() if n.endswith("attn1"))
    to_v, to_out = f"{attn}.to_v", f"{attn}.to_out.0"
    original = snapshot(unet)
    seen: dict[str, torch.Tensor] = {}
    fold = WantedNetwork("fold", 1.0, {to_v: Records(0.5, seen, to_v), to_out: Reads(seen, to_v)})
    lora_v = {s: WantedNetwork(("v", s), 1.0, random_network(unet, "v", s, [to_v])) for s in (1, 2)}
    lora_out = {s: WantedNetwork(("out", s), 1.0, random_network(unet, "o", s, [to_out])) for s in (3, 4)}

    def fresh(*lora: WantedNetwork) -> dict[str, torch.Tensor]:
        other = WeightPatcher(unet)
        other.reconcile(lora)
        other.reconcile([fold], layer=1)
        result = snapshot(unet)
        other.restore_all()
        return result

    expected = {(v, o): fresh(lora_v[v], lora_out[o]) for v in (1, 2) for o in (3, 4)}
    patcher = WeightPatcher(unet)
    patcher.reconcile([fold], layer=1)
    for v, o in [(1, 3), (2, 3), (2, 4), (1, 4)]:  # one of the two LoRAs changes at a time
        patcher.reconcile([lora_v[v], lora_out[o]])
        assert identical(unet, expected[v, o]), (v, o)
    assert len({float(e[f"{to_out}.bias"].sum()) for e in expected.values()}) == 4  # the reads matter
    patcher.restore_all()
    assert identical(unet, original) and patcher.patched == {}
    with pytest.raises(ValueError, match="no network patches"):
        patcher.reconcile([WantedNetwork("alone", 1.0, {to_out: Reads(seen, to_v)})], layer=1)
    assert identical(unet, original)


def _versions(unet, paths: list[str]) -> dict[str, int]:
    """How many times each module's weight has been written in place (``copy_`` bumps the counter)."""
    return {p: unet.get_submodule(p).weight._version for p in paths}


def test_deferred_reconciles_write_each_module_once_and_equal_immediate_ones(unet) -> None:
    """Inside ``deferred()`` two layers changing the same modules cost one write per module, not one per layer,
    and the weights equal what the two immediate reconciles give (layer order kept: the scaling sees the LoRA)."""
    original = snapshot(unet)
    paths = linear_paths(unet)[:10]
    loras = {s: WantedNetwork(("lora", s), 1.0, random_network(unet, "l", s, paths)) for s in (1, 2)}
    scales = {s: WantedNetwork(("scale", s), 1.0, {p: Scaling(s / 10) for p in paths[3:]}) for s in (1, 2)}
    immediate = WeightPatcher(unet)
    immediate.reconcile([scales[2]], layer=1)
    immediate.reconcile([loras[2]])
    expected = snapshot(unet)
    immediate.restore_all()

    patcher = WeightPatcher(unet)
    with patcher.deferred():
        patcher.reconcile([scales[1]], layer=1)
        patcher.reconcile([loras[1]])
    before = _versions(unet, paths)
    with patcher.deferred():
        assert patcher.reconcile([scales[2]], layer=1) == 0  # recorded, nothing written yet
        assert _versions(unet, paths) == before
        patcher.reconcile([loras[2]])
    assert {p: v - before[p] for p, v in _versions(unet, paths).items()} == {p: 1 for p in paths}
    assert identical(unet, expected)
    # The same switch without deferral writes the modules both layers touch twice.
    patcher.reconcile([scales[1]], layer=1)
    patcher.reconcile([loras[1]])
    before = _versions(unet, paths)
    patcher.reconcile([scales[2]], layer=1)
    patcher.reconcile([loras[2]])
    assert [v - before[p] for p, v in _versions(unet, paths).items()] == [1] * 3 + [2] * 7
    assert identical(unet, expected)
    patcher.restore_all()
    assert identical(unet, original)


def test_deferred_block_that_raises_applies_nothing_and_forgets_its_layers(unet) -> None:
    """An error inside the block (a network failing to activate) leaves the weights and the wanted layers as
    before it: a later reconcile of one layer does not apply what the failed block recorded for another."""
    original = snapshot(unet)
    paths = linear_paths(unet)[:6]
    lora = WantedNetwork("lora", 1.0, random_network(unet, "l", 7, paths))
    patcher = WeightPatcher(unet)
    patcher.reconcile([lora])
    patched = snapshot(unet)
    with pytest.raises(KeyError), patcher.deferred():
        patcher.reconcile([WantedNetwork("scale", 1.0, {p: Scaling(0.5) for p in paths})], layer=1)
        raise KeyError("activation failed")
    assert identical(unet, patched)
    patcher.reconcile([])  # layer 0 emptied; layer 1 must still be empty, not the abandoned scaling
    assert identical(unet, original) and patcher.patched == {}


def test_deferred_reconcile_that_fails_leaves_touched_modules_pristine(unet) -> None:
    """The block's single reconcile fails like an immediate one: the error comes out of the ``with``, every module
    it touched is original, and the layers it was applying are no longer wanted (the next reconcile mends)."""
    original = snapshot(unet)
    paths = linear_paths(unet)
    patcher = WeightPatcher(unet)
    good = WantedNetwork("good", 1.0, random_network(unet, "good", 8, paths[:8]))
    with patcher.deferred():
        patcher.reconcile([good])
    with pytest.raises(RuntimeError, match="bad tensor"), patcher.deferred():
        patcher.reconcile([good])
        patcher.reconcile([WantedNetwork("bad", 1.0, {**random_network(unet, "b", 9, paths[8:12]),
                                                      paths[12]: Exploding()})], layer=1)
        with patcher.deferred():  # nested: the outer block does the work
            patcher.reconcile([WantedNetwork("scale", 1.0, {p: Scaling(0.5) for p in paths[:8]})], layer=2)
    for path in paths[:13]:
        assert torch.equal(unet.get_submodule(path).weight, original[path + ".weight"]), path
    patcher.reconcile([good])  # layers 1 and 2 were dropped: only "good" comes back
    assert set(patcher.patched) == set(paths[:8])
    patcher.restore_all()
    assert identical(unet, original)



def test_staged_copies_are_dropped_when_the_weights_are_elsewhere() -> None:
    """A model parked in RAM must not keep its staged networks in VRAM: :meth:`WeightPatcher.follow_weights` drops
    staged copies that are not where the weights are (here ``meta`` plays the GPU the model left) and keeps the
    ones that are; backups stay put while the weights do, and the restore is still exact. The backups moving with
    the weights (CPU ↔ GPU) is ``tests/test_gpu.py``."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    original = snapshot(layer)
    patcher = WeightPatcher(layer, keep_staged=True)
    patcher.reconcile([WantedNetwork("a", 1.0, {"": Additive(torch.full((3, 4), 0.5), torch.ones(3))})])
    backup = patcher._backup[""]
    source = torch.ones(8)
    assert patcher.stage(source, torch.device("cpu")) is source  # on the weights' device: nothing to copy
    patcher.stage(source, torch.device("meta"))
    assert patcher.staged_bytes == 32
    patcher.follow_weights()
    assert patcher.staged_bytes == 0 and patcher._backup[""] is backup
    patcher.restore_all()
    assert identical(layer, original)
