"""What every network type shares: the tensors of one module read from a file, and the module base class.

A network file is grouped per target module (see ``lora_keys``): ``NetworkWeights.w`` holds that module's tensors
under A1111's suffix names (``lora_up.weight``, ``hada_w1_a``, ``alpha``, ``dora_scale``, ...). Each type's file
(``network_lora.py``, ``network_hada.py``, ...) offers ``create_module(weights) -> NetworkModule | None`` and
accepts the group only if it holds that type's keys. A module computes its ``(ΔW, Δbias)`` for the current fp32
weight; ``modules.patching.WeightPatcher`` multiplies by the user's multiplier and applies it.

A1111's ``finalize_updown`` order is kept: an optional ``bias`` in the file is folded into ΔW's rows, ΔW is
reshaped to the weight's shape, scaled by ``alpha/dim`` (or ``scale``; 1 when unknown), then DoRA is applied when
the file has ``dora_scale``. The multiplier applies last (in the patcher).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class NetworkWeights:
    """The tensors one network file holds for one live module."""

    network_key: str  # the module part of the file's keys, e.g. "lora_unet_down_blocks_0_attentions_0_proj_in"
    module_path: str  # the live diffusers/transformers path, e.g. "down_blocks.0.attentions.0.proj_in"
    component: str  # "unet" or "text_encoder"
    w: dict[str, torch.Tensor]  # suffix → tensor, e.g. {"lora_up.weight": ..., "lora_down.weight": ..., "alpha": ...}
    weight_shape: tuple[int, ...]  # the live module's weight shape
    module_type: str  # "Linear", "Conv2d", "GroupNorm", "LayerNorm", ...


@dataclass
class NetworkModule:
    """Base of all network types; subclasses implement :meth:`calc_updown`."""

    weights: NetworkWeights
    dim: int | None = None  # rank, where the type has one (for alpha/dim)
    dyn: int | None = field(default=None)  # DyLoRA rank limit, set per activation (LoRA only)
    _scale: float | None = field(default=None, init=False, repr=False)
    _stage: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, init=False, repr=False)

    @property
    def alpha(self) -> float | None:
        alpha = self.weights.w.get("alpha")
        return float(alpha.item()) if alpha is not None else None

    def multiplier_scale(self) -> float:
        """A1111's ``calc_scale``: ``scale`` key, else ``alpha/dim``, else 1 (read once: the tensors never change)."""
        if self._scale is None:
            if "scale" in self.weights.w:
                self._scale = float(self.weights.w["scale"].item())
            elif self.alpha is not None and self.dim:
                self._scale = self.alpha / self.dim
            else:
                self._scale = 1.0
        return self._scale

    def calc_updown(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(ΔW, Δbias)`` before the user's multiplier, ΔW shaped like ``weight`` (fp32)."""
        raise NotImplementedError

    def calc(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The ``modules.patching.Delta`` protocol."""
        return self.calc_updown(weight)

    def calc_staged(self, weight: torch.Tensor, bias: torch.Tensor | None,
                    stage: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """:meth:`calc` with the file's tensors put on the compute device by the patcher's ``stage`` (which keeps
        the copies in normal mode on a GPU, so a switch back copies nothing from host memory)."""
        self._stage = stage
        try:
            return self.calc_updown(weight)
        finally:
            self._stage = None

    def add_to(self, weight: torch.Tensor, multiplier: float, stage: Callable[[torch.Tensor], torch.Tensor]) -> bool:
        """The patcher's in-place fast path (see ``modules.patching``); only a plain LoRA pair takes it, every
        other type declines and is computed by :meth:`calc_staged`."""
        return False

    def on(self, tensor: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """One of the file's tensors on ``weight``'s device and in its dtype (staged first when patching)."""
        if self._stage is not None:
            tensor = self._stage(tensor)
        return tensor.to(weight)

    def finalize_updown(self, updown: torch.Tensor, weight: torch.Tensor, output_shape: tuple[int, ...] | torch.Size,
                        ex_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A1111's common tail: file bias, reshape, alpha scale, DoRA (the multiplier comes later)."""
        bias = self.weights.w.get("bias")
        if bias is not None:
            updown = (updown.reshape(bias.shape) + self.on(bias, updown)).reshape(output_shape)
        if len(output_shape) == 4:
            updown = updown.reshape(output_shape)
        if updown.numel() != weight.numel():  # e.g. a file for another model: name the module, not a reshape error
            raise ValueError(f"{self.weights.network_key}: the network's delta has shape {tuple(updown.shape)}, "
                             f"the weight {tuple(weight.shape)}")
        updown = updown.reshape(weight.shape) * self.multiplier_scale()
        dora_scale = self.weights.w.get("dora_scale")
        if dora_scale is not None:
            updown = self.apply_dora(updown, weight, self.on(dora_scale, weight))
        return updown, ex_bias

    @staticmethod
    def apply_dora(updown: torch.Tensor, weight: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
        """A1111's DoRA: ``M = W + ΔW``; ``ΔW' = M · (dora_scale / ‖M‖) − W``, the norm over every dim except dim 1.

        ``‖M‖`` has shape ``(1, in, 1…)`` (LyCORIS's original, per-input-channel convention). ``dora_scale`` is used
        with the shape the file stores, broadcasting against that norm exactly as A1111 does: a per-input
        ``(1, in, 1…)`` magnitude (LyCORIS ``wd_on_out=False``) gives true DoRA; a per-output ``(out, 1, 1…)``
        one (lycoris-lora 4.1.3's default, ``wd_on_out=True``) is *not* renormalised per row — A1111 mixes the two
        axes and so do we, since the goal is A1111's output. A bare 1-D magnitude is taken per input channel.
        """
        merged = weight + updown
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, merged.shape[1], *[1] * (merged.dim() - 2))
        if dora_scale.dim() != merged.dim():
            if dora_scale.numel() != merged.shape[1]:
                raise ValueError(f"dora_scale of shape {tuple(dora_scale.shape)} fits neither the weight's rank "
                                 f"nor its {merged.shape[1]} input channels")
            dora_scale = dora_scale.reshape(norm.shape)
        return merged * (dora_scale / norm) - weight
