"""OFT family: the weight's output channels are rotated by a learned orthogonal matrix, ``ΔW = R·W − W``.

Three file flavours, told apart as A1111 does:

* ``oft_blocks`` 3-D ``(blocks, b, b)`` — kohya OFT and LyCORIS ``diag-oft``. The stored block is made
  skew-symmetric (``Q = B − Bᵀ``); if ``alpha`` is non-zero the Frobenius norm of all of ``Q`` is clamped to
  ``alpha · out_dim``; then each block becomes the Cayley rotation ``R = (I + Q)(I − Q)⁻¹``. Output channel group ``k``
  becomes ``R_kᵀ · W_k`` (A1111's contraction over the block's first index).
* ``oft_blocks`` 4-D ``(m, blocks, b, b)`` — LyCORIS BOFT: ``m`` butterfly stages, each a block-diagonal rotation
  (built as above, the norm clamp over all stages) applied after a stride-``2ⁱ·b/2`` channel shuffle, and the
  shuffle undone.
* ``oft_diag`` 3-D — old LyCORIS OFT: the stored blocks *are* ``R`` (no Cayley, no constraint); the block size is
  the tensor's second dimension.

An optional ``rescale`` (one factor per output channel) multiplies the rotated weight. The scale is always 1
(A1111 ignores both ``alpha / dim`` and ``scale`` here), and the user's multiplier scales ``ΔW`` linearly — not the
rotation angle — as in A1111. LyCORIS interpolates each butterfly stage toward identity instead, so for BOFT the two
agree only at multiplier 1.
"""

from __future__ import annotations

import torch

from .network import NetworkModule, NetworkWeights


def cayley(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    """Orthogonal blocks from free ones: skew-symmetrise, clamp ``‖Q‖`` to ``constraint`` (0: none), Cayley map."""
    q = blocks - blocks.transpose(-1, -2)
    if constraint != 0:
        norm = torch.linalg.vector_norm(q)
        q = q * ((torch.clamp(norm, max=constraint) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(blocks.shape[-1], dtype=blocks.dtype, device=blocks.device)
    # (I + Q)(I − Q)⁻¹ == (I − Q)⁻¹(I + Q): both are functions of Q and commute, so one solve gives R
    return torch.linalg.solve(eye - q, eye + q)


def rotate_blocks(weight: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Output channel group ``k`` of ``weight`` (groups of ``rotations.shape[-1]`` rows) → ``rotations[k]ᵀ @ group``."""
    num_blocks, size = rotations.shape[0], rotations.shape[-1]
    grouped = weight.reshape(num_blocks, size, *weight.shape[1:])
    return torch.einsum("k n m, k n ... -> k m ...", rotations, grouped).reshape(weight.shape)


def butterfly(weight: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """BOFT: for each stage ``i``, shuffle rows at stride ``2ⁱ·b/2``, apply the stage's block rotations, unshuffle."""
    stages, _, size, _ = rotations.shape
    half = size // 2
    x = weight
    for i in range(stages):
        stride = (2 ** i) * half
        # rows (c, 2, stride) → (c, stride, 2): pairs rows `stride` apart so that one block mixes them
        x = x.unflatten(0, (-1, 2, stride)).transpose(1, 2).flatten(0, 2)
        x = torch.einsum("d i j, d j ... -> d i ...", rotations[i], x.unflatten(0, (-1, size))).flatten(0, 1)
        x = x.unflatten(0, (-1, stride, 2)).transpose(1, 2).flatten(0, 2)
    return x


class NetworkModuleOFT(NetworkModule):
    """One module's orthogonal fine-tuning blocks."""

    def __init__(self, weights: NetworkWeights) -> None:
        w = weights.w
        self.is_r = "oft_blocks" not in w  # old LyCORIS: oft_diag holds R itself
        self.blocks = w["oft_blocks"] if not self.is_r else w["oft_diag"]
        self.is_boft = not self.is_r and self.blocks.dim() == 4
        super().__init__(weights, dim=int(self.blocks.shape[1] if self.is_r else self.blocks.shape[0]))
        out_dim = weights.weight_shape[0]
        alpha = None if self.is_r else w.get("alpha")
        self.constraint = 0.0 if alpha is None else float(alpha.item()) * out_dim
        self.rescale = w.get("rescale")
        size = self.blocks.shape[-1]
        if self.is_boft:
            if size % 2 or out_dim % (self.blocks.shape[1] * size):
                raise ValueError(f"{weights.network_key}: BOFT blocks {tuple(self.blocks.shape)} do not tile "
                                 f"{out_dim} output channels")
        elif out_dim % size:
            raise ValueError(f"{weights.network_key}: OFT blocks of {size} do not divide {out_dim} output channels")

    def multiplier_scale(self) -> float:
        """OFT has no rank scale: A1111 forces it to 1 (``alpha`` is the rotation constraint)."""
        return 1.0

    def calc_updown(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        blocks = self.on(self.blocks, weight)
        rotations = blocks if self.is_r else cayley(blocks, self.constraint)
        merged = butterfly(weight, rotations) if self.is_boft else rotate_blocks(weight, rotations)
        if self.rescale is not None:
            merged = merged * self.on(self.rescale, weight).reshape(-1, *[1] * (weight.dim() - 1))
        return self.finalize_updown(merged - weight, weight, tuple(weight.shape))


def create_module(weights: NetworkWeights) -> NetworkModuleOFT | None:
    """An OFT module when the group holds ``oft_blocks`` or ``oft_diag``, else ``None``."""
    if "oft_blocks" in weights.w or "oft_diag" in weights.w:
        return NetworkModuleOFT(weights)
    return None
