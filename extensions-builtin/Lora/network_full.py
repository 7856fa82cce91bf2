"""Full fine-tune deltas (LyCORIS ``full``): the file stores ``diff = W_trained − W`` and optionally ``diff_b``.

``ΔW = diff`` and ``Δbias = diff_b``; both are later multiplied by the user's multiplier. ``alpha`` has no rank to
divide, so the scale is 1 unless the file has ``scale`` (which, as in A1111, scales ΔW but not the bias).
"""

from __future__ import annotations

import torch

from .network import NetworkModule, NetworkWeights


class NetworkModuleFull(NetworkModule):
    """One module's full weight (and bias) difference."""

    def __init__(self, weights: NetworkWeights) -> None:
        super().__init__(weights)
        self.diff = weights.w["diff"]
        self.diff_b = weights.w.get("diff_b")

    def calc_updown(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        diff_b = None if self.diff_b is None else self.on(self.diff_b, weight)
        return self.finalize_updown(self.on(self.diff, weight), weight, tuple(self.diff.shape), diff_b)


def create_module(weights: NetworkWeights) -> NetworkModuleFull | None:
    """A full-delta module when the group holds ``diff``, else ``None``."""
    if "diff" in weights.w:
        return NetworkModuleFull(weights)
    return None
