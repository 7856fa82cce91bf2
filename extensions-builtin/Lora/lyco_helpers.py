"""Tensor rebuilds shared by the network types: low-rank products, Tucker (CP) cores, and LyCORIS's factorization.

These are the exact contractions A1111 uses (they define what a file *means*), written once so that LoRA, LoHa and
LoKr agree on axis conventions. Every function works for Linear (2-D) and ConvNd (``(out, in, *kernel)``) shapes.
"""

from __future__ import annotations

import torch


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` viewed as ``(rows, everything else)``: a Linear weight, or a conv kernel flattened after dim 0."""
    return tensor.reshape(tensor.shape[0], -1)


def make_weight_cp(core: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Tucker rebuild ``core ×₁ waᵀ ×₂ wbᵀ``: ``core`` ``(r₁, r₂, *k)``, ``wa`` ``(r₁, out)``, ``wb`` ``(r₂, in)``.

    Returns ``(out, in, *k)``. This is LyCORIS's layout for ``hada_t1``/``hada_t2`` and ``lokr_t2``: both factor
    matrices are stored rank-first.
    """
    return torch.einsum("i j ..., i p, j q -> p q ...", core, wa, wb)


def rebuild_conventional(up: torch.Tensor, down: torch.Tensor, shape: tuple[int, ...] | list[int] | torch.Size,
                         dyn: int | None = None) -> torch.Tensor:
    """``up @ down`` with both flattened to matrices, reshaped to ``shape``.

    ``dyn`` keeps only the first ``dyn`` ranks (DyLoRA files are trained so that every prefix of the rank is usable).
    """
    up2d, down2d = as_matrix(up), as_matrix(down)
    if dyn is not None:
        up2d, down2d = up2d[:, :dyn], down2d[:dyn, :]
    return (up2d @ down2d).reshape(shape)


def rebuild_cp_decomposition(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """LoCon with a Tucker middle (``lora_mid``): ``up`` ``(out, r[,1,1])``, ``down`` ``(r, in[,1,1])``,
    ``mid`` ``(r, r, *k)`` (a conv from rank to rank). Returns ``(out, in, *k)``."""
    return torch.einsum("m n ..., i m, n j -> i j ...", mid, as_matrix(up), as_matrix(down))


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)`` with ``m * n == dimension`` and ``m <= n``, as LyCORIS does.

    With ``factor > 0`` dividing ``dimension`` the split is ``(factor, dimension // factor)`` (sorted). Otherwise
    divisors ``m`` are tried in increasing order and kept while ``m + dimension/m`` does not grow and ``m`` stays
    within ``factor`` (``factor < 0``: no limit), so the result is the most balanced split allowed. LoKr and OFT
    files are shaped by this rule; we need it only to interpret old files whose block layout is not in the tensors.
    """
    if factor > 0 and dimension % factor == 0:
        a, b = factor, dimension // factor
        return (a, b) if a <= b else (b, a)
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    for candidate in range(2, dimension + 1):
        if m >= n:
            break
        if dimension % candidate:
            continue
        other = dimension // candidate
        if candidate + other > m + n or candidate > limit:
            break
        m, n = candidate, other
    return (m, n) if m <= n else (n, m)
