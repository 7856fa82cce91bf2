"""LoHa (LyCORIS ``loha``): ``ΔW = (w1a @ w1b) ⊙ (w2a @ w2b)``, each factor optionally a Tucker rebuild.

The Hadamard product of two rank-r products reaches rank r² with 2r parameters per side. On a conv with
``use_tucker`` each half is ``make_weight_cp(t, wa, wb)`` and the factor matrices are stored rank-first
(``hada_w1_a`` is ``(r, out)``), which is why the output shape is read from different axes in that case.
The rank used for ``alpha / dim`` is ``hada_w1_b.shape[0]``.
"""

from __future__ import annotations

import torch

from . import lyco_helpers
from .network import NetworkModule, NetworkWeights

REQUIRED = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class NetworkModuleHada(NetworkModule):
    """One module's LoHa factors."""

    def __init__(self, weights: NetworkWeights) -> None:
        w = weights.w
        super().__init__(weights, dim=int(w["hada_w1_b"].shape[0]))
        self.w1a, self.w1b, self.w2a, self.w2b = (w[k] for k in REQUIRED)
        self.t1 = w.get("hada_t1")
        self.t2 = w.get("hada_t2")

    def calc_updown(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        w1a, w1b, w2a, w2b = (self.on(t, weight) for t in (self.w1a, self.w1b, self.w2a, self.w2b))
        if self.t1 is not None:
            t1 = self.on(self.t1, weight)
            output_shape = [w1a.shape[1], w1b.shape[1], *t1.shape[2:]]
            first = lyco_helpers.make_weight_cp(t1, w1a, w1b)
        else:
            output_shape = [w1a.shape[0], w1b.shape[1], *(w1b.shape[2:] if w1b.dim() == 4 else ())]
            first = lyco_helpers.rebuild_conventional(w1a, w1b, output_shape)
        if self.t2 is not None:
            second = lyco_helpers.make_weight_cp(self.on(self.t2, weight), w2a, w2b)
        else:
            second = lyco_helpers.rebuild_conventional(w2a, w2b, output_shape)
        return self.finalize_updown(first * second, weight, tuple(output_shape))


def create_module(weights: NetworkWeights) -> NetworkModuleHada | None:
    """A LoHa module when the group holds all four ``hada_w*`` factors, else ``None``."""
    if all(k in weights.w for k in REQUIRED):
        return NetworkModuleHada(weights)
    return None
