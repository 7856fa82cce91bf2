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

Affine hypernetworks (A1111's default) do not come here in generation: they are merged into the attention
weights (``folding.py``). These processors serve hypernetworks with activations or layer norms, whose MLPs run at
every self-attention call, and training, whose MLPs must stay in the graph.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F

from modules.hypernetworks.hypernetwork import Hypernetwork, apply_hypernetworks

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


def _on_device(entries: Entries, device: torch.device) -> Entries:
    """``entries`` with their MLPs moved to ``device`` (the UNet may run elsewhere than where its weights were at
    install: offload)."""
    for hn, _ in entries:
        if hn.device != device:
            hn.to(device)
    return entries


class HypernetworkAttnProcessor:
    """Wraps one ``Attention`` module's original processor; transforms the K/V context with ``entries``."""

    def __init__(self, inner: object, entries: Entries, cache: ContextCache) -> None:
        self.inner = inner
        self.entries = entries
        self.dims = frozenset().union(*(hn.dims for hn, _ in entries))
        self.cache = cache

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
                 matched_dims: frozenset[int], cache: ContextCache) -> None:
        self._unet: torch.nn.Module | None = unet
        self._original = original
        self.wrapped = wrapped  # processor keys that got a hypernetwork processor
        self.matched_dims = matched_dims  # context widths of the hypernetworks that this UNet has
        self.cache = cache

    @property
    def active(self) -> bool:
        return self._unet is not None

    def restore(self) -> None:
        """Put the saved processor objects back (a second call does nothing)."""
        unet, self._unet = self._unet, None
        if unet is not None:
            unet.set_attn_processor(dict(self._original))  # set_attn_processor pops from the dict it is given
        self.cache.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def install(unet: torch.nn.Module, hypernetworks: Sequence[tuple[Hypernetwork, float]],
            skip: Collection[int] = ()) -> InstalledHypernetworks:
    """Apply ``(hypernetwork, multiplier)`` pairs, in that order, to ``unet``'s attention K/V contexts.

    Attention modules whose context width is in ``skip`` get no processor: generation passes the widths that
    :func:`~modules.hypernetworks.folding.fold` merged into the weights. The hypernetworks' MLPs are moved to the UNet's device (they stay float32). Raises
    ``RuntimeError`` if hypernetwork processors are already installed on this UNet (restore those first).
    """
    entries: Entries = tuple((hn, float(multiplier)) for hn, multiplier in hypernetworks)
    original = unet.attn_processors
    if any(isinstance(p, HypernetworkAttnProcessor) for p in original.values()):
        raise RuntimeError("hypernetwork attention processors are already installed on this UNet; restore() them first")
    dims = frozenset().union(*(hn.dims for hn, _ in entries)) - frozenset(skip)
    cache = ContextCache()
    wanted: dict[str, object] = {}
    wrapped: list[str] = []
    matched: set[int] = set()
    for key, processor in original.items():
        width = getattr(getattr(unet.get_submodule(key.removesuffix(".processor")), "to_k", None), "in_features", None)
        if width in dims:
            wanted[key] = HypernetworkAttnProcessor(processor, entries, cache)
            wrapped.append(key)
            matched.add(width)
        else:
            wanted[key] = processor
    if wrapped:
        _on_device(entries, next(unet.parameters()).device)
        unet.set_attn_processor(dict(wanted))
    return InstalledHypernetworks(unet, original, tuple(wrapped), frozenset(matched), cache)
