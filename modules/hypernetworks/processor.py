"""Hypernetworks in a diffusers UNet: attention processors that feed ``to_k``/``to_v`` the transformed context.

Where A1111 applies them (its ``CrossAttention.forward`` does ``context = default(context, x)`` first):

* self-attention (``attn1``): the context is the block's normed hidden states, width 320/640/1280 in SD1;
* cross-attention (``attn2``): the context is the text conditioning, width 768.

Only K and V change; Q, the attention itself and the output projection do not. :func:`install` saves
``unet.attn_processors``, wraps the processor of every ``Attention`` whose ``to_k`` input width one of the
hypernetworks has, leaves the others untouched, and ``restore()`` puts the saved processor objects back.

A wrapped module computes attention as diffusers' ``AttnProcessor2_0`` does (spatial/group/cross norms, mask,
``scaled_dot_product_attention``) with ``key = to_k(k_context)``, ``value = to_v(v_context)``. Calls whose
context width no hypernetwork has go to the wrapped original unchanged.

The text conditioning is the same tensor for every step and every ``attn2``, so its transformed K/V contexts are
computed once per conditioning tensor and reused (:class:`ContextCache`).

Self-attention contexts change on every call, so there the MLPs would run at every step: with one hypernetwork of
all four SD1 widths that is 13 % more FLOPs per step at 512² (1.81 instead of 1.61 TFLOP, counted by
``torch.utils.flop_counter``). A1111's default hypernetwork is affine (``linear`` activation, no layer norm), and
then ``to_k(x·M + t)`` is a single linear map of ``x``: :class:`SelfAttentionFolds` computes the folded projection
``W_k Mᵀ`` and its bias ``W_k t`` once per installation, from the weights ``to_k``/``to_v`` have at the first call
(LoRAs already merged; in ``--lowvram`` the streamed copy), and self-attention then costs exactly what it costs
without a hypernetwork. Hypernetworks with activations or layer norms run their MLPs as before.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F

from modules.hypernetworks.hypernetwork import Hypernetwork, apply_hypernetworks, composed_affine

logger = logging.getLogger(__name__)

Entries = tuple[tuple[Hypernetwork, float], ...]
KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(slots=True)
class _Cached:
    source: weakref.ref
    version: int | None
    shape: torch.Size
    kv: KV


class ContextCache:
    """Transformed K/V contexts by source tensor: identity (the same live object), shape and in-place version.

    Holds only weak references to the sources, so a conditioning that is dropped also drops its entry; at most
    ``max_entries`` are kept (least recently used goes first).
    """

    def __init__(self, max_entries: int = 16) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[int, _Cached] = OrderedDict()

    def get(self, context: torch.Tensor, compute: Callable[[torch.Tensor], KV]) -> KV:
        key, version = id(context), _version(context)
        entry = self._entries.get(key)
        if (entry is not None and entry.source() is context and entry.version == version
                and entry.shape == context.shape):
            self._entries.move_to_end(key)
            return entry.kv
        kv = compute(context)
        entries = self._entries  # the callback must not keep the cache alive

        def forget(_ref: weakref.ref, key: int = key) -> None:
            current = entries.get(key)
            if current is not None and current.source is _ref:
                del entries[key]

        self._entries[key] = _Cached(weakref.ref(context, forget), version, context.shape, kv)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return kv

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # inference-mode tensors keep no version counter
        return None


Projections = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]


def _on_device(entries: Entries, device: torch.device) -> Entries:
    """``entries`` with their MLPs moved to ``device`` (the UNet may run elsewhere than where its weights were at
    install: offload)."""
    for hn, _ in entries:
        if hn.device != device:
            hn.to(device)
    return entries


class SelfAttentionFolds:
    """Self-attention K/V projections with affine hypernetworks folded in, per ``Attention`` module, for one install.

    For a context transform ``x ↦ x·M + t`` (:func:`composed_affine`), ``to_k`` of the transformed context is
    ``F.linear(x, W_k Mᵀ, W_k t + b_k)``. Folding happens in float32 and is stored in the weight's dtype. The
    folded tensors are computed from the weights at a module's first call and kept until :meth:`clear`: an
    installation lasts one job, and weights change (LoRA switches) only between jobs.
    """

    def __init__(self, entries: Entries) -> None:
        self.entries = entries
        self._maps: dict[tuple[int, torch.device], tuple | None] = {}
        self._projections: dict[int, Projections | None] = {}

    def projections(self, attn: torch.nn.Module, hidden_states: torch.Tensor) -> Projections | None:
        """``attn``'s folded (W_k, b_k, W_v, b_v), or ``None`` where the hypernetworks at this width are not affine
        (or the projections are not plain Linears on the hidden states' device)."""
        key = id(attn)
        if key not in self._projections:
            self._projections[key] = self._fold(attn, hidden_states.shape[-1], hidden_states.device)
        return self._projections[key]

    def _fold(self, attn: torch.nn.Module, width: int, device: torch.device) -> Projections | None:
        to_k, to_v = attn.to_k, attn.to_v
        if not all(type(lin) is torch.nn.Linear and lin.weight.device == device for lin in (to_k, to_v)):
            return None
        maps = self._maps.get((width, device), ...)
        if maps is ...:
            trained = any(p.requires_grad for hn, _ in self.entries for pair in hn.layers.values() for mlp in pair
                          for p in mlp.parameters())  # then the MLPs must stay in the graph
            maps = self._maps[(width, device)] = (
                None if trained else composed_affine(_on_device(self.entries, device), width, device))
        if maps is None:
            return None
        folded: list[torch.Tensor | None] = []
        with torch.no_grad():
            for lin, (matrix, offset) in zip((to_k, to_v), maps):
                weight = lin.weight.float()
                bias = F.linear(offset, weight, None if lin.bias is None else lin.bias.float())
                folded += [(weight @ matrix.T).to(lin.weight.dtype), bias.to(lin.weight.dtype)]
        return tuple(folded)

    def clear(self) -> None:
        self._maps.clear()
        self._projections.clear()


class HypernetworkAttnProcessor:
    """Wraps one ``Attention`` module's original processor; transforms the K/V context with ``entries``."""

    def __init__(self, inner: object, entries: Entries, cache: ContextCache,
                 folds: SelfAttentionFolds | None = None) -> None:
        self.inner = inner
        self.entries = entries
        self.dims = frozenset().union(*(hn.dims for hn, _ in entries))
        self.cache = cache
        self.folds = folds

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        width = (encoder_hidden_states.shape[-1] if encoder_hidden_states is not None
                 else hidden_states.shape[1] if hidden_states.ndim == 4 else hidden_states.shape[-1])
        if width not in self.dims:
            if temb is not None:  # passed on only when given: not every processor takes it
                kwargs["temb"] = temb
            return self.inner(attn, hidden_states, *args, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **kwargs)
        return self._attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def _transform(self, context: torch.Tensor) -> KV:
        return apply_hypernetworks(_on_device(self.entries, context.device), context)

    def _attention(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                   attention_mask: torch.Tensor | None, temb: torch.Tensor | None) -> torch.Tensor:
        """diffusers' ``AttnProcessor2_0`` with the hypernetwork K/V contexts."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.shape if hidden_states.ndim == 4 else None
        if spatial is not None:
            hidden_states = hidden_states.view(spatial[0], spatial[1], -1).transpose(1, 2)
        batch, length = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        folded = None
        if encoder_hidden_states is None and self.folds is not None:
            folded = self.folds.projections(attn, hidden_states)
        if folded is not None:  # self-attention, affine hypernetworks: their maps are in the projections
            w_k, b_k, w_v, b_v = folded
            key, value = F.linear(hidden_states, w_k, b_k), F.linear(hidden_states, w_v, b_v)
        else:
            if encoder_hidden_states is None:  # self-attention: the context is the (normed) hidden states
                context_k, context_v = self._transform(hidden_states)
            elif attn.norm_cross:  # a fresh tensor on every call: nothing to cache
                context_k, context_v = self._transform(attn.norm_encoder_hidden_states(encoder_hidden_states))
            else:
                context_k, context_v = self.cache.get(encoder_hidden_states, self._transform)
            key, value = attn.to_k(context_k), attn.to_v(context_v)

        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                             is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))

        if spatial is not None:
            out = out.transpose(-1, -2).reshape(spatial)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class InstalledHypernetworks:
    """What :func:`install` did to one UNet; ``restore()`` (or leaving the ``with`` block) undoes it exactly."""

    def __init__(self, unet: torch.nn.Module, original: dict[str, object], wrapped: tuple[str, ...],
                 matched_dims: frozenset[int], cache: ContextCache, folds: SelfAttentionFolds | None = None) -> None:
        self._unet: torch.nn.Module | None = unet
        self._original = original
        self.wrapped = wrapped  # processor keys that got a hypernetwork processor
        self.matched_dims = matched_dims  # context widths of the hypernetworks that this UNet has
        self.cache = cache
        self.folds = folds

    @property
    def active(self) -> bool:
        return self._unet is not None

    def restore(self) -> None:
        """Put the saved processor objects back (a second call does nothing)."""
        unet, self._unet = self._unet, None
        if unet is not None:
            unet.set_attn_processor(dict(self._original))  # set_attn_processor pops from the dict it is given
        self.cache.clear()
        if self.folds is not None:
            self.folds.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def install(unet: torch.nn.Module, hypernetworks: Sequence[tuple[Hypernetwork, float]],
            fold: bool = True) -> InstalledHypernetworks:
    """Apply ``(hypernetwork, multiplier)`` pairs, in that order, to ``unet``'s attention K/V contexts.

    The hypernetworks' MLPs are moved to the UNet's device (they stay float32). With ``fold`` (for generation:
    install per job, after the job's LoRAs are patched), affine hypernetworks are folded into the self-attention
    projections (:class:`SelfAttentionFolds`); training passes ``False`` (its MLPs change at every step). Raises
    ``RuntimeError`` if hypernetwork processors are already installed on this UNet (restore those first).
    """
    entries: Entries = tuple((hn, float(multiplier)) for hn, multiplier in hypernetworks)
    original = unet.attn_processors
    if any(isinstance(p, HypernetworkAttnProcessor) for p in original.values()):
        raise RuntimeError("hypernetwork attention processors are already installed on this UNet; restore() them first")
    device = next(unet.parameters()).device
    for hn, _ in entries:
        hn.to(device)
    dims = frozenset().union(*(hn.dims for hn, _ in entries))
    cache = ContextCache()
    folds = SelfAttentionFolds(entries) if fold else None
    wanted: dict[str, object] = {}
    wrapped: list[str] = []
    matched: set[int] = set()
    for key, processor in original.items():
        width = getattr(getattr(unet.get_submodule(key.removesuffix(".processor")), "to_k", None), "in_features", None)
        if width in dims:
            wanted[key] = HypernetworkAttnProcessor(processor, entries, cache, folds)
            wrapped.append(key)
            matched.add(width)
        else:
            wanted[key] = processor
    if wrapped:
        unet.set_attn_processor(dict(wanted))
    return InstalledHypernetworks(unet, original, tuple(wrapped), frozenset(matched), cache, folds)
