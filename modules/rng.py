"""Initial noise with A1111's seed rules, so an infotext's seed gives the same starting latents.

* One generator per image, seeded with that image's seed; the noise of shape ``(4, H/8, W/8)`` is drawn per
  image and stacked. The generators are then handed to the sampler, which keeps drawing its ancestral noise
  from them, so image ``i`` of a batch equals the same seed run alone.
* Source "GPU" (A1111's default) draws on the model's device; "CPU" always on the CPU.
* Variation seeds: with strength ``s`` ≠ 0 the noise is A1111's ``slerp(s, noise(seed), noise(subseed))``,
  whose norms run over dimension 1 of the ``(C, H, W)`` tensor (the H axis), and which falls back to a
  linear mix with *swapped* weights when the two are nearly parallel — both quirks kept on purpose.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

MAX_SEED = 4294967294


def fix_seed(seed: int | None) -> int:
    """A1111's ``get_fixed_seed``: -1 (or None) means a random seed."""
    if seed is None or seed == -1:
        return random.randrange(MAX_SEED)
    return int(seed)


def seeds_for(seed: int, subseed: int, subseed_strength: float, count: int) -> tuple[list[int], list[int]]:
    """Per-image seeds and subseeds: ``seed + i``; with a variation strength, one seed and ``subseed + i``."""
    if subseed_strength:
        return [seed] * count, [subseed + i for i in range(count)]
    return [seed + i for i in range(count)], [subseed] * count


def create_generator(seed: int, device: torch.device, source: str = "GPU") -> torch.Generator:
    """A generator seeded like A1111's ``create_generator`` for the given source."""
    where = device if source == "GPU" else torch.device("cpu")
    return torch.Generator(where).manual_seed(int(seed))


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation between two noise tensors of shape ``(C, H, W)``."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)  # (C, W)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def initial_noise(shape: Sequence[int], seeds: Sequence[int], subseeds: Sequence[int], subseed_strength: float,
                  device: torch.device, source: str = "GPU",
                  ensd: int = 0) -> tuple[torch.Tensor, list[torch.Generator]]:
    """The batch's starting noise (unit variance, fp32, on ``device``) and the per-image generators.

    Args:
        shape: one image's latent shape ``(4, H/8, W/8)``.
        seeds, subseeds: one per image (see :func:`seeds_for`).
        subseed_strength: variation strength in [0, 1].
        device: where the model runs.
        source: "GPU" (the model's device) or "CPU".
        ensd: A1111's "eta noise seed delta": when ≠ 0 the generators the sampler continues with are re-seeded
            with ``seed + ensd`` after the initial noise (pass it only for samplers that use it).

    Returns:
        ``(noise (B, 4, H/8, W/8), generators)``; the sampler continues drawing from ``generators``.
    """
    generators = [create_generator(s, device, source) for s in seeds]
    noises = []
    for generator, subseed in zip(generators, subseeds, strict=True):
        noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
        if subseed_strength:
            sub_generator = create_generator(subseed, device, source)
            subnoise = torch.randn(tuple(shape), generator=sub_generator, device=sub_generator.device)
            noise = slerp(subseed_strength, noise, subnoise)
        noises.append(noise.to(device))
    if ensd:
        generators = [create_generator(s + ensd, device, source) for s in seeds]
    return torch.stack(noises), generators
