"""LoKr (LyCORIS ``lokr``): ``ΔW = w1 ⊗ w2`` (Kronecker product).

Each side is stored whole (``lokr_w1``, ``lokr_w2``) or as a low-rank pair (``_a @ _b``); the larger side of a conv
may instead be a Tucker rebuild ``make_weight_cp(lokr_t2, lokr_w2_a, lokr_w2_b)`` that carries the kernel. For a
conv whose ``w2`` is 4-D, ``w1`` gets two unit spatial axes so the product is ``(out, in, kh, kw)``; otherwise the
2-D product is reshaped to the weight's shape. The rank for ``alpha / dim`` is that of a decomposed side
(``w2_b`` first, then ``w1_b``); when both sides are whole there is no rank and the scale is 1, as in A1111.
"""

from __future__ import annotations

import torch

from . import lyco_helpers
from .network import NetworkModule, NetworkWeights


def _has_side(w: dict[str, torch.Tensor], side: str) -> bool:
    return f"lokr_{side}" in w or (f"lokr_{side}_a" in w and f"lokr_{side}_b" in w)


class NetworkModuleLokr(NetworkModule):
    """One module's LoKr factors."""

    def __init__(self, weights: NetworkWeights) -> None:
        w = weights.w
        rank_factor = w.get("lokr_w2_b", w.get("lokr_w1_b"))
        super().__init__(weights, dim=None if rank_factor is None else int(rank_factor.shape[0]))
        self.w1 = w.get("lokr_w1")
        self.w1a, self.w1b = w.get("lokr_w1_a"), w.get("lokr_w1_b")
        self.w2 = w.get("lokr_w2")
        self.w2a, self.w2b = w.get("lokr_w2_a"), w.get("lokr_w2_b")
        self.t2 = w.get("lokr_t2")

    def _side(self, whole: torch.Tensor | None, a: torch.Tensor | None, b: torch.Tensor | None,
              core: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if whole is not None:
            return self.on(whole, like)
        if a is None or b is None:
            raise ValueError(f"{self.weights.network_key}: a LoKr side has neither a whole matrix nor an _a/_b pair")
        if core is not None:
            return lyco_helpers.make_weight_cp(self.on(core, like), self.on(a, like), self.on(b, like))
        return self.on(a, like) @ self.on(b, like)

    def calc_updown(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        w1 = self._side(self.w1, self.w1a, self.w1b, None, weight)
        w2 = self._side(self.w2, self.w2a, self.w2b, self.t2, weight)
        if weight.dim() == 4:
            output_shape = tuple(weight.shape)
        else:
            output_shape = (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1])
        if w2.dim() == 4:
            w1 = w1.reshape(*w1.shape[:2], 1, 1)
        updown = torch.kron(w1, w2.contiguous()).reshape(output_shape)
        return self.finalize_updown(updown, weight, output_shape)


def create_module(weights: NetworkWeights) -> NetworkModuleLokr | None:
    """A LoKr module when the group holds both Kronecker sides (whole or as an ``_a``/``_b`` pair), else ``None``."""
    if _has_side(weights.w, "w1") and _has_side(weights.w, "w2"):
        return NetworkModuleLokr(weights)
    return None
