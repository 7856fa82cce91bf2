"""Norm-layer deltas (LyCORIS ``train_norm``): ``Δweight = w_norm`` and ``Δbias = b_norm`` for GroupNorm/LayerNorm.

Both are plain differences, later multiplied by the user's multiplier; the scale is 1 (no rank).
"""

from __future__ import annotations

import torch

from .network import NetworkModule, NetworkWeights


class NetworkModuleNorm(NetworkModule):
    """One norm layer's affine-parameter differences."""

    def __init__(self, weights: NetworkWeights) -> None:
        super().__init__(weights)
        self.w_norm = weights.w["w_norm"]
        self.b_norm = weights.w.get("b_norm")

    def calc_updown(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b_norm = None if self.b_norm is None else self.on(self.b_norm, weight)
        return self.finalize_updown(self.on(self.w_norm, weight), weight, tuple(self.w_norm.shape), b_norm)


def create_module(weights: NetworkWeights) -> NetworkModuleNorm | None:
    """A norm module when the group holds ``w_norm`` and ``b_norm`` (A1111 requires both), else ``None``."""
    if "w_norm" in weights.w and "b_norm" in weights.w:
        return NetworkModuleNorm(weights)
    return None
