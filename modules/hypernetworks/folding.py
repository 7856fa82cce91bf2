"""Affine hypernetworks merged into the attention weights: a weight patch instead of attention processors.

A1111's default hypernetwork ([1, 2, 1], ``linear`` activation, no layer norm) maps a K or V context affinely,
``x ↦ x·M + t``; so does a chain of such ``<hypernet:…>`` tags (:func:`_compose`, in tag order). Where that holds
at an attention module's context width, its projections absorb the map exactly:

* ``to_k(x·M + t) = x·(W_k·Mᵀ)ᵀ + W_k·t``. The constant ``W_k·t`` moves every key by the same vector, which adds
  ``q·(W_k·t)`` to all of one query's scores, and softmax ignores that: it is left out (hence no module that
  normalises the keys, ``norm_k``).
* ``to_v(x·M + t) = x·(W_v·Mᵀ)ᵀ + W_v·t``. Every value moves by ``c = W_v·t``; attention weights sum to one, so
  the attention output moves by ``c`` and ``to_out[0]`` turns that into ``W_out·c``: added to its bias.

Both hold for self-attention (context: the block's normed hidden states, 320/640/1280 in SD1) and cross-attention
(the text conditioning, 768). The result is one network for the UNet's :class:`~modules.patching.WeightPatcher`,
in a layer after the LoRAs (the hypernetwork transforms what the LoRA-patched projection reads): the UNet keeps
its own attention processors, so a step costs what it costs without the hypernetwork, in every memory mode, and a
compiled UNet (``--opt-compile``) sees only weights changed in place. Widths where a hypernetwork has an
activation or a layer norm are not affine; they keep the attention processors (``processor.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from modules.hypernetworks.hypernetwork import Hypernetwork, is_affine
from modules.patching import WantedNetwork

#: The patcher layer of folded hypernetworks: after the LoRAs' (layer 0).
LAYER = 1

Entries = Sequence[tuple[Hypernetwork, float]]
Stage = Callable[[torch.Tensor], torch.Tensor]


class _Maps:
    """The composed K and V maps ``(M, t)`` of a chain at one width, computed on first use on the device where the
    patcher computes (the GPU as a rule), in float32, and kept for the life of the fold."""

    def __init__(self, entries: Entries, width: int) -> None:
        self.entries, self.width = entries, width
        self._by_device: dict[torch.device, tuple[tuple[torch.Tensor, torch.Tensor], ...]] = {}

    def get(self, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        if device not in self._by_device:
            self._by_device[device] = tuple(_compose(self.entries, self.width, index, device) for index in (0, 1))
        return self._by_device[device]


def _compose(entries: Entries, width: int, index: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, t)`` with the chain's K (``index`` 0) or V (1) transform equal to ``x @ M + t``: each hypernetwork maps
    ``x ↦ x + m·(x·A + a)`` where ``x·A + a`` is its MLP (Linears only), and the maps compose in tag order."""
    matrix = torch.eye(width, device=device)
    offset = torch.zeros(width, device=device)
    for hn, multiplier in entries:
        if width not in hn.layers:
            continue
        a, bias = None, torch.zeros(width, device=device)
        for layer in hn.layers[width][index]:
            if isinstance(layer, torch.nn.Linear):  # Dropout/Identity in eval mode do nothing
                weight = layer.weight.detach().to(device, torch.float32).T
                a = weight if a is None else a @ weight
                bias = bias @ weight + (0 if layer.bias is None else layer.bias.detach().to(device, torch.float32))
        step = torch.eye(width, device=device) + multiplier * a
        matrix, offset = matrix @ step, offset @ step + multiplier * bias
    return matrix, offset


class _Projection:
    """``to_k`` (``index`` 0) or ``to_v`` (1) of one attention module: ``W ← W·Mᵀ``; for ``to_v`` it also leaves
    ``W·t`` (from the weight as the earlier layers left it) in ``offsets`` for the ``to_out`` bias."""

    def __init__(self, maps: _Maps, index: int, offsets: dict[str, torch.Tensor] | None = None,
                 path: str = "") -> None:
        self.maps, self.index, self.offsets, self.path = maps, index, offsets, path

    def calc(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        return self._folded(weight) - weight, None

    def add_to(self, w: torch.Tensor, multiplier: float, stage: Stage) -> bool:
        w.copy_(self._folded(w))  # not additive: the map multiplies the weight as the LoRAs left it
        return True

    def _folded(self, weight: torch.Tensor) -> torch.Tensor:
        matrix, offset = self.maps.get(weight.device)[self.index]
        if self.offsets is not None:
            self.offsets[self.path] = weight @ offset
        return weight @ matrix.T


class _OutputBias:
    """``to_out[0]`` of one attention module: its bias gains ``W_out·(W_v·t)``, with ``W_v·t`` left by ``to_v``."""

    def __init__(self, offsets: dict[str, torch.Tensor], to_v: str) -> None:
        self.offsets, self.requires = offsets, to_v  # the patcher recomputes to_v first

    def calc(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[None, torch.Tensor]:
        return None, weight @ self.offsets[self.requires].to(weight.device)


def foldable(attn: torch.nn.Module) -> bool:
    """Whether the folding above is exact for this diffusers ``Attention``: plain Linear ``to_k``/``to_v``, a
    ``to_out[0]`` with a bias, nothing that normalises keys, no extra K/V projections."""
    to_out = getattr(attn, "to_out", None)
    return (all(type(getattr(attn, name, None)) is torch.nn.Linear for name in ("to_k", "to_v"))
            and to_out is not None and type(to_out[0]) is torch.nn.Linear and to_out[0].bias is not None
            and getattr(attn, "norm_k", None) is None and getattr(attn, "add_k_proj", None) is None)


def attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The UNet's attention modules (anything with ``to_k``, ``to_v`` and ``to_out``) by path."""
    return {path: module for path, module in unet.named_modules()
            if all(hasattr(module, name) for name in ("to_k", "to_v", "to_out"))}


def fold(unet: torch.nn.Module, entries: Entries) -> tuple[WantedNetwork | None, frozenset[int]]:
    """The weight patch of ``entries`` (``(hypernetwork, multiplier)`` in tag order) for ``unet``, and the context
    widths it covers. A width is covered when every hypernetwork that has it is affine there, none of its MLPs is
    being trained, and every attention module of that width is :func:`foldable`; the other widths need the
    attention processors. ``(None, frozenset())`` when nothing can be folded."""
    if not entries or any(p.requires_grad for hn, _ in entries for pair in hn.layers.values() for mlp in pair
                          for p in mlp.parameters()):
        return None, frozenset()
    modules = attention_modules(unet)
    by_width: dict[int, list[str]] = {}
    for path, attn in modules.items():
        by_width.setdefault(attn.to_k.in_features, []).append(path)
    wanted = frozenset().union(*(hn.dims for hn, _ in entries))
    deltas: dict[str, object] = {}
    covered: set[int] = set()
    offsets: dict[str, torch.Tensor] = {}  # to_v path → W_v·t, from the reconcile that is running
    for width in sorted(wanted & by_width.keys()):
        if not all(foldable(modules[path]) for path in by_width[width]):
            continue
        if not all(is_affine(mlp) for hn, _ in entries if width in hn.layers for mlp in hn.layers[width]):
            continue
        maps = _Maps(entries, width)
        for path in by_width[width]:
            to_v = f"{path}.to_v"
            deltas[f"{path}.to_k"] = _Projection(maps, 0)
            deltas[to_v] = _Projection(maps, 1, offsets, to_v)
            deltas[f"{path}.to_out.0"] = _OutputBias(offsets, to_v)
        covered.add(width)
    if not deltas:
        return None, frozenset()
    key = ("hypernetwork fold", tuple((hn, float(m), _versions(hn)) for hn, m in entries), tuple(sorted(covered)))
    return WantedNetwork(key, 1.0, deltas), frozenset(covered)


def _versions(hn: Hypernetwork) -> tuple[int, ...]:
    """The in-place version counters of the MLP parameters: a hypernetwork changed in place (trained) folds anew."""
    return tuple(p._version for pair in hn.layers.values() for mlp in pair for p in mlp.parameters())
