"""Initial noise with A1111's seed rules, so an infotext's seed gives the same starting latents.

* One generator per image, seeded with that image's seed; the noise of shape ``(4, H/8, W/8)`` is drawn per
  image and stacked. The generators are then handed to the sampler, which keeps drawing its ancestral noise
  from them, so image ``i`` of a batch equals the same seed run alone.
* Source "GPU" (A1111's default) draws on the model's device; "CPU" always on the CPU.
* Variation seeds: with strength ``s`` ≠ 0 the noise is A1111's ``slerp(s, noise(seed), noise(subseed))``,
  whose norms run over dimension 1 of the ``(C, H, W)`` tensor (the H axis), and which falls back to a
  linear mix with *swapped* weights when the two are nearly parallel — both quirks kept on purpose.
* Seed resize ("Resize seed from width/height"): the seed's noise is drawn at the size it was first used at and
  centred in the new size (cropped when that is smaller); the rest is the seed's noise at the new size. So a seed
  found at 512x512 keeps its composition at 512x768. As in A1111, the image's own generator draws the full-size
  noise (the sampler continues from there), the resized noise comes from a fresh generator with the same seed.
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
                  device: torch.device, source: str = "GPU", ensd: int = 0,
                  seed_resize: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, list[torch.Generator]]:
    """The batch's starting noise (unit variance, fp32, on ``device``) and the per-image generators.

    Args:
        shape: one image's latent shape ``(4, H/8, W/8)``.
        seeds, subseeds: one per image (see :func:`seeds_for`).
        subseed_strength: variation strength in [0, 1].
        device: where the model runs.
        source: "GPU" (the model's device) or "CPU".
        ensd: A1111's "eta noise seed delta": when ≠ 0 the generators the sampler continues with are re-seeded
            with ``seed + ensd`` after the initial noise (pass it only for samplers that use it).
        seed_resize: ``(width, height)`` in pixels the seeds were first used at; off unless both are positive.

    Returns:
        ``(noise (B, 4, H/8, W/8), generators)``; the sampler continues drawing from ``generators``.
    """
    shape = tuple(shape)
    width, height = seed_resize
    drawn = shape if width <= 0 or height <= 0 else (shape[0], height // 8, width // 8)
    generators = [create_generator(s, device, source) for s in seeds]
    noises = []
    for seed, generator, subseed in zip(seeds, generators, subseeds, strict=True):
        own = generator if drawn == shape else create_generator(seed, device, source)
        noise = torch.randn(drawn, generator=own, device=own.device, dtype=torch.float32)
        if subseed_strength:
            sub_generator = create_generator(subseed, device, source)
            subnoise = torch.randn(drawn, generator=sub_generator, device=sub_generator.device)
            noise = slerp(subseed_strength, noise, subnoise)
        if drawn != shape:
            noise = _centred(noise, torch.randn(shape, generator=generator, device=generator.device))
        noises.append(noise.to(device))
    if ensd:
        generators = [create_generator(s + ensd, device, source) for s in seeds]
    return torch.stack(noises), generators


def _centred(small: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` with ``small`` pasted at its centre (``small`` cropped to its own centre where it is larger).
    A1111's arithmetic, quirk included: offsets round down, and a crop takes ``2·offset`` off, so when ``small`` is
    larger by an odd amount the last row or column stays ``full``'s."""
    out = full.clone()
    spans = []
    for axis in (1, 2):  # H, then W of (C, H, W)
        offset = (full.shape[axis] - small.shape[axis]) // 2
        length = small.shape[axis] if offset >= 0 else small.shape[axis] + 2 * offset
        spans.append((max(offset, 0), max(-offset, 0), length))
    (ty, sy, h), (tx, sx, w) = spans
    out[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return out
