"""LoRA and LoCon: ``ΔW = up @ down`` (Linear and conv), optionally with a Tucker core ``lora_mid``, and DyLoRA.

Covers kohya LoRA/LoCon, LyCORIS ``locon`` (with ``use_tucker``), and DyLoRA files (plain LoRA tensors whose rank
prefixes are each usable: ``dyn`` keeps the first ``dyn`` ranks while the scale stays ``alpha / full rank``, as in
A1111). diffusers/PEFT spell the pair ``lora_A``/``lora_B`` or ``lora.down``/``lora.up``; those are read as
down/up here too, so a group renamed or not by the key mapper is accepted either way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import lyco_helpers
from .network import NetworkModule, NetworkWeights

#: (down, up) suffix pairs, A1111's own first.
KEY_PAIRS: tuple[tuple[str, str], ...] = (
    ("lora_down.weight", "lora_up.weight"),
    ("lora_A.weight", "lora_B.weight"),
    ("lora.down.weight", "lora.up.weight"),
)
MID_KEY = "lora_mid.weight"


class NetworkModuleLora(NetworkModule):
    """One module's LoRA/LoCon factors."""

    def __init__(self, weights: NetworkWeights, up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None) -> None:
        super().__init__(weights, dim=int(down.shape[0]))
        self.up = up
        self.down = down
        self.mid = mid

    def calc_updown(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        up = self.on(self.up, weight)
        down = self.on(self.down, weight)
        output_shape: list[int] = [up.shape[0], down.shape[1]]
        if self.mid is not None:  # Tucker: the spatial kernel lives in the core; DyLoRA never has one
            mid = self.on(self.mid, weight)
            updown = lyco_helpers.rebuild_cp_decomposition(up, down, mid)
            output_shape += list(mid.shape[2:])
        else:
            if down.dim() == 4:
                output_shape += list(down.shape[2:])
            updown = lyco_helpers.rebuild_conventional(up, down, output_shape, self.dyn)
        return self.finalize_updown(updown, weight, tuple(output_shape))

    def add_to(self, weight: torch.Tensor, multiplier: float, stage: Callable[[torch.Tensor], torch.Tensor]) -> bool:
        """The patcher's fast path: ``weight += multiplier · scale · up @ down`` as one ``addmm_`` on the fp32
        working copy (a 2-D view: a conv kernel is flattened after dim 0, as ``calc_updown`` does).

        Only for a plain pair: a Tucker core, a ``bias`` or ``dora_scale`` key, or shapes that do not line up go to
        :meth:`calc_updown` (which also words the shape error). ``stage`` puts the factors on the weight's device.
        """
        if self.mid is not None or "bias" in self.weights.w or "dora_scale" in self.weights.w:
            return False
        up, down = lyco_helpers.as_matrix(stage(self.up)), lyco_helpers.as_matrix(stage(self.down))
        target = weight.view(weight.shape[0], -1)
        if up.shape[0] != target.shape[0] or down.shape[1] != target.shape[1] or up.shape[1] != down.shape[0]:
            return False
        if self.dyn is not None:
            up, down = up[:, :self.dyn], down[:self.dyn]
        target.addmm_(up.to(weight.dtype), down.to(weight.dtype), alpha=multiplier * self.multiplier_scale())
        return True


def create_module(weights: NetworkWeights) -> NetworkModuleLora | None:
    """A LoRA module when the group holds a down/up pair (any accepted spelling), else ``None``."""
    for down_key, up_key in KEY_PAIRS:
        if down_key in weights.w and up_key in weights.w:
            w = weights.w
            return NetworkModuleLora(weights, up=w[up_key], down=w[down_key], mid=w.get(MID_KEY))
    return None
