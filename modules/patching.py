"""Weight patching kept apart from the weights: one :class:`WeightPatcher` per model component.

Invariant: every patched parameter equals its backup with the deltas of the networks currently wanted applied in
order (``W ← W + m·ΔW(W)``, in fp32, cast once at the end), and a parameter no network touches holds exactly its
original bits. :meth:`WeightPatcher.reconcile` compares, per module, the ordered list of (network, multiplier)
wanted with what is applied now and recomputes only the modules whose list changed, so an unchanged set costs
nothing and switching one LoRA touches only its modules. If anything fails half way (a bad tensor, out of memory,
an interrupt), every module touched by that call is restored before the error propagates: the model is never left
half-patched.

Nothing here knows a file format: a delta is anything with :meth:`Delta.calc`. A delta may also offer
``add_to(w, multiplier, stage)``, which changes the fp32 working copy in place — a plain LoRA adds
``multiplier·up @ down`` with one ``addmm_``, a folded hypernetwork multiplies it — and returns ``True``, or returns
``False`` to fall back to ``calc`` (or to ``calc_staged(w, b, stage)``: the same, with the network's tensors staged). A switch
costs a few operations per module that way, which is what bounds it on a GPU (kernel launches, not FLOPs).
``stage`` puts a network's tensor on the compute device: in normal mode the copies of the networks of the last two
reconciles are kept (:meth:`WeightPatcher.stage`), so switching back and forth moves nothing from host memory, and
VRAM holds at most two sets of network files beside the model.

A delta may also name, as ``requires``, another module (a path) whose working copy it reads during the same
reconcile (a folded hypernetwork's ``to_out`` bias reads what its ``to_v`` computed): that module is then
recomputed first whenever this one is, and a change there changes this module's signature.

Networks come in layers (:meth:`WeightPatcher.reconcile`'s ``layer``), applied in layer order whatever order
they are reconciled in: LoRAs in layer 0, folded hypernetworks after them (they transform what the
LoRA-patched projections read). Inside :meth:`WeightPatcher.deferred` a reconcile only records its layer and the
block's end reconciles once: a job that changes both layers computes each module once, not once per layer.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch

logger = logging.getLogger(__name__)


class Delta(Protocol):
    """One network's change to one module."""

    def calc(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(ΔW, Δbias)`` for the module's current fp32 ``weight``/``bias`` (before the multiplier).

        Either may be ``None``. ``ΔW`` has the weight's shape.
        """


@dataclass(frozen=True, slots=True)
class WantedNetwork:
    """A network to apply: its identity (file, mtime, dyn...), multiplier for this component, and deltas by module."""

    key: Hashable
    multiplier: float
    deltas: Mapping[str, Delta]


Signature = tuple[tuple[Hashable, float], ...]


class WeightPatcher:
    """Owns every change to one module tree's weights (the UNet or the text encoder)."""

    def __init__(self, root: torch.nn.Module, backup_device: torch.device | str | None = None,
                 compute_device: torch.device | str | None = None, keep_staged: bool = False) -> None:
        """Args:
            root: the component.
            backup_device: where original weights are kept (``None``: beside the weight, the fastest restore;
                ``"cpu"`` saves GPU memory in the low-memory modes).
            compute_device: where a patched weight is computed (``None``: where the weight is). In the low-memory
                modes the master weights live in CPU memory; computing their deltas on the GPU and copying the
                result back makes a LoRA switch there as fast as in normal mode instead of CPU-bound.
            keep_staged: keep the device copies of network tensors (:meth:`stage`) used by the last two
                reconciles; normal mode on a GPU, where VRAM is not being saved.
        """
        self.root = root
        self.backup_device = backup_device
        self.compute_device = None if compute_device is None else torch.device(compute_device)
        self.keep_staged = keep_staged
        self._staged: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # id(source) → (source, copy, use)
        self._reconciles = 0
        self._params_by_path: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._backup: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._applied: dict[str, Signature] = {}
        self._layers: dict[int, tuple[WantedNetwork, ...]] = {}
        self._deferred: set[int] | None = None  # inside deferred(): the layers reconciled so far
        self.revision = 0  # bumped whenever any weight changes
        self.state_key: Hashable = ()  # the (network, multiplier) list now applied; caches of outputs key on it

    @property
    def patched(self) -> dict[str, Signature]:
        """Modules that currently differ from the original, with what is applied to them."""
        return dict(self._applied)

    def reconcile(self, wanted: Sequence[WantedNetwork], layer: int = 0) -> int:
        """Make ``layer``'s networks ``wanted``, and the weights equal the original plus the deltas of every layer's
        networks, lower layers first, each in order; returns the number of modules recomputed (0 inside
        :meth:`deferred`, whose end does the work)."""
        self._layers[layer] = tuple(wanted)
        if self._deferred is not None:
            self._deferred.add(layer)
            return 0
        return self._reconcile_layers((layer,))

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Reconciles inside the block record their layer; one reconcile when the block ends applies them all.

        If the block raises, nothing is applied and the layers are as before it. If the final reconcile fails,
        its error propagates from the ``with`` statement, as it would have from :meth:`reconcile`. Nested blocks
        leave the work to the outermost.
        """
        if self._deferred is not None:
            yield
            return
        before, self._deferred = dict(self._layers), set()
        try:
            yield
        except BaseException:
            self._layers = before
            raise
        finally:
            layers, self._deferred = self._deferred, None
        self._reconcile_layers(tuple(layers))

    def _reconcile_layers(self, layers: Sequence[int]) -> int:
        try:
            return self._reconcile([n for _, networks in sorted(self._layers.items()) for n in networks])
        except BaseException:
            for layer in layers:  # not applied (touched modules were restored): the next reconcile mends the rest
                self._layers[layer] = ()
            raise

    def _reconcile(self, wanted: Sequence[WantedNetwork]) -> int:
        target: dict[str, list[tuple[WantedNetwork, Delta]]] = {}
        for network in wanted:
            for path, delta in network.deltas.items():
                target.setdefault(path, []).append((network, delta))
        signatures = {path: tuple((n.key, n.multiplier) for n, _ in entries) for path, entries in target.items()}
        reads = {path: sorted({r for _, d in entries if (r := getattr(d, "requires", None)) is not None})
                 for path, entries in target.items()}
        for path, required in reads.items():
            for other in required:
                if other not in target:
                    raise ValueError(f"{path}: a network reads module {other!r}, which no network patches")
                signatures[path] += (("requires", other, signatures[other]),)
        changed = [p for p in target if self._applied.get(p) != signatures[p]]
        first = [r for p in changed for r in reads[p]]  # read by a changed module: recomputed before it
        changed = list(dict.fromkeys(first + [p for p in changed if p not in first]))
        stale = [p for p in self._applied if p not in target]
        if not changed and not stale:
            self.state_key = tuple((network.key, network.multiplier) for network in wanted)
            return 0
        self._reconciles += 1
        done: list[str] = []
        try:
            with torch.no_grad():
                for path in stale:
                    done.append(path)
                    self._restore(path)
                for path in changed:
                    done.append(path)
                    self._apply(path, target[path], signatures[path])
        except BaseException:
            logger.error("Weight patching failed; restoring the %d modules it touched", len(done))
            with torch.no_grad():
                for path in done:
                    self._restore(path)
            self.revision += 1
            self.state_key = ("partial", self.revision)  # some modules may still carry the previous set
            raise
        finally:
            self._forget_staged()
        self.revision += 1
        self.state_key = tuple((network.key, network.multiplier) for network in wanted)
        return len(changed) + len(stale)

    def restore_all(self) -> None:
        """Back to the exact original weights (every layer emptied)."""
        self._layers.clear()
        self._reconcile(())

    def follow_weights(self) -> None:
        """After the component moved (a model parked in RAM, or back on the GPU): backups kept "beside the weight"
        move with their weights, and the staged network copies are dropped when the weights left their device.
        Without this a model parked in RAM would keep its backups and staged networks in VRAM."""
        for path, (original_w, original_b) in self._backup.items():
            weight, bias = self._params(path)
            if self.backup_device is None and original_w.device != weight.device:
                self._backup[path] = (original_w.to(weight.device),
                                      None if original_b is None or bias is None else original_b.to(bias.device))
        device = next((w.device for w, _ in self._params_by_path.values()), None)
        if any(copy.device != device for _, copy, _ in self._staged.values()):
            self._staged.clear()

    def stage(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``tensor`` (a network's, in host memory) on ``device``, in its own dtype. With ``keep_staged`` the copy
        is kept until two reconciles have not used it, so switching back to a recent set copies nothing."""
        if tensor.device == device:
            return tensor
        if not self.keep_staged:
            return tensor.to(device)
        entry = self._staged.get(id(tensor))
        copy = entry[1] if entry is not None and entry[0] is tensor and entry[1].device == device else tensor.to(device)
        self._staged[id(tensor)] = (tensor, copy, self._reconciles)
        return copy

    @property
    def staged_bytes(self) -> int:
        """Bytes of network tensors kept on the compute device."""
        return sum(copy.numel() * copy.element_size() for _, copy, _ in self._staged.values())

    def _forget_staged(self) -> None:
        """Drop the copies that neither this reconcile nor the one before used."""
        oldest = self._reconciles - 1
        for key in [k for k, (_, _, used) in self._staged.items() if used < oldest]:
            del self._staged[key]

    def _params(self, path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        params = self._params_by_path.get(path)  # the Parameter objects stay; offload swaps only their .data
        if params is None:
            module = self.root.get_submodule(path)
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise ValueError(f"module {path!r} has no weight to patch")
            bias = getattr(module, "bias", None)
            params = self._params_by_path[path] = (weight, bias if isinstance(bias, torch.Tensor) else None)
        return params

    def _apply(self, path: str, entries: list[tuple[WantedNetwork, Delta]], signature: Signature) -> None:
        weight, bias = self._params(path)
        if path not in self._backup:
            device = self.backup_device or weight.device
            self._backup[path] = (weight.detach().to(device, copy=True),
                                  None if bias is None else bias.detach().to(device, copy=True))
        original_w, original_b = self._backup[path]
        device = self.compute_device or weight.device
        # A fresh, contiguous fp32 working copy: add_to writes into it (never into the backup) through a 2-D view.
        w = original_w.to(device=device, dtype=torch.float32, copy=True, memory_format=torch.contiguous_format)
        b = None if original_b is None else original_b.to(device=device, dtype=torch.float32)
        stage = partial(self.stage, device=device)
        for network, delta in entries:  # sequential: a later network sees the earlier ones' result (A1111)
            add_to = getattr(delta, "add_to", None)
            if add_to is not None and add_to(w, network.multiplier, stage):
                continue
            calc_staged = getattr(delta, "calc_staged", None)
            dw, db = delta.calc(w, b) if calc_staged is None else calc_staged(w, b, stage)
            if dw is not None:
                w = w + network.multiplier * dw.to(w.device, torch.float32).reshape(w.shape)
            if db is not None:
                if b is None:
                    raise ValueError(f"{path}: the network changes a bias this module does not have")
                b = b + network.multiplier * db.to(b.device, torch.float32).reshape(b.shape)
        self._applied.pop(path, None)  # mark unknown while writing: a failure below restores it
        weight.copy_(w if weight.device == w.device else w.to(weight.dtype))  # cast first when crossing devices
        if bias is not None and b is not None:
            bias.copy_(b.to(bias.dtype))
        self._applied[path] = signature

    def _restore(self, path: str) -> None:
        if path not in self._backup:
            return
        weight, bias = self._params(path)
        original_w, original_b = self._backup.pop(path)
        weight.copy_(original_w)
        if bias is not None and original_b is not None:
            bias.copy_(original_b)
        self._applied.pop(path, None)
