"""GLoRA (LyCORIS ``glora``): ``ΔW = B + W·A`` with a low-rank output term ``B`` and a low-rank input map ``A``.

Two tensor layouts exist under the same names:

* **A1111's** (LyCORIS before 2.x): ``a1`` ``(r, in)``, ``a2`` ``(in, r)``, ``b1`` ``(r, in)``, ``b2`` ``(out, r)``;
  A1111 computes ``ΔW = b2 @ b1 + (W @ a2) @ a1``.
* **current LyCORIS** (2.x – 4.x): ``a1`` ``(in, r)``, ``a2`` ``(r, in)``, ``b1`` ``(out, r)``,
  ``b2`` ``(r, in[, k, k])``;
  LyCORIS computes ``ΔW = b1 @ b2 + W @ a1 @ a2``. A1111's formula cannot multiply these shapes and errors out.

The layout is told apart by the shapes (A1111's wins when both fit, e.g. all dimensions equal). For conv weights
``W·A`` acts on the input-channel axis of the kernel. As in A1111, ``alpha`` is ignored (GLoRA has no ``dim``), so
the scale is 1 unless the file has ``scale``; LyCORIS itself scales by ``alpha / rank``, so the two agree only for
files saved with ``alpha == rank``.
"""

from __future__ import annotations

import math

import torch

from . import lyco_helpers
from .network import NetworkModule, NetworkWeights

REQUIRED = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")


def _matrix(t: torch.Tensor) -> tuple[int, int]:
    return int(t.shape[0]), int(math.prod(t.shape[1:]))


class NetworkModuleGLora(NetworkModule):
    """One module's GLoRA factors, normalised to ``B = b_up @ b_down`` and ``A = a_left @ a_right``."""

    def __init__(self, weights: NetworkWeights, a_left: torch.Tensor, a_right: torch.Tensor,
                 b_up: torch.Tensor, b_down: torch.Tensor, b_mid: torch.Tensor | None) -> None:
        super().__init__(weights)  # dim stays None: alpha is ignored (A1111)
        self.a_left, self.a_right = a_left, a_right
        self.b_up, self.b_down, self.b_mid = b_up, b_down, b_mid

    def calc_updown(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        a = lyco_helpers.as_matrix(self.on(self.a_left, weight)) @ lyco_helpers.as_matrix(self.on(self.a_right, weight))  # (in, in)
        if self.b_mid is not None:
            b = lyco_helpers.rebuild_cp_decomposition(self.on(self.b_up, weight), self.on(self.b_down, weight),
                                                      self.on(self.b_mid, weight))
        else:
            b = lyco_helpers.as_matrix(self.on(self.b_up, weight)) @ lyco_helpers.as_matrix(self.on(self.b_down, weight))
        updown = b.reshape(weight.shape) + torch.einsum("o i ..., i j -> o j ...", weight, a)
        return self.finalize_updown(updown, weight, tuple(weight.shape))


def create_module(weights: NetworkWeights) -> NetworkModuleGLora | None:
    """A GLoRA module when the group holds ``a1``, ``a2``, ``b1`` and ``b2``, else ``None``.

    Raises ``ValueError`` when the tensors fit neither layout for this module's weight shape.
    """
    w = weights.w
    if not all(k in w for k in REQUIRED):
        return None
    a1, a2, b1, b2 = (w[k] for k in REQUIRED)
    out_dim, in_dim = weights.weight_shape[0], weights.weight_shape[1]
    in_flat = int(math.prod(weights.weight_shape[1:]))
    (a1r, a1c), (a2r, a2c), (b1r, b1c), (b2r, b2c) = (_matrix(t) for t in (a1, a2, b1, b2))
    bm = w.get("bm.weight")
    if bm is None and (a2r, a1c) == (in_dim, in_dim) and a2c == a1r and (b2r, b1c) == (out_dim, in_flat) and b2c == b1r:
        return NetworkModuleGLora(weights, a_left=a2, a_right=a1, b_up=b2, b_down=b1, b_mid=None)
    b_fits = (b1r, b2c) == (out_dim, in_flat) and b1c == b2r
    if bm is not None:  # Tucker B: b2 is (r, in, 1, 1), the kernel lives in bm (r, r, k, k)
        b_fits = b1r == out_dim and b2c == in_dim and tuple(bm.shape[2:]) == tuple(weights.weight_shape[2:])
    if (a1r, a2c) == (in_dim, in_dim) and a1c == a2r and b_fits:
        return NetworkModuleGLora(weights, a_left=a1, a_right=a2, b_up=b1, b_down=b2, b_mid=bm)
    raise ValueError(f"{weights.network_key}: GLoRA tensors a1 {tuple(a1.shape)}, a2 {tuple(a2.shape)}, "
                     f"b1 {tuple(b1.shape)}, b2 {tuple(b2.shape)} fit neither known layout for a weight shaped "
                     f"{tuple(weights.weight_shape)}")
