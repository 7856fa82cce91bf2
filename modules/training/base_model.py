"""Train the tiny SD1.5-layout demo checkpoint from scratch on synthetic coloured shapes, on a CPU.

Two stages, as Stable Diffusion itself was built:

1. **VAE.** A KL autoencoder with SD's 8x downscale learns to reconstruct rendered scenes (L1 + MSE, a tiny KL
   term), its encoder started with a narrow posterior (:func:`_start_with_narrow_posterior`). Most steps see
   random 32x32 crops (a quarter of the cost; the network is convolutional), the last ones whole 64x64 images so
   the mid-block attention sees full latents. Its latent scale factor (SD's 0.18215) is
   measured afterwards as ``1 / std`` of the dataset's latents and written to the sidecar ``.yaml``.
2. **UNet + CLIP text encoder**, trained together with SD1.5's objective: the scaled-linear noise schedule
   (betas 0.00085..0.012, 1000 steps) and epsilon prediction, with Min-SNR-5 loss weights
   (:func:`min_snr_weights`), on latents of a fixed set of scenes encoded once.
   Captions are tokenised by the real CLIP tokenizer through the web UI's own :class:`PromptEncoder`, so the
   token layout (BOS, words, EOS padding to 77) is exactly what generation feeds the model later; one caption in
   ten is empty, which is what classifier-free guidance's unconditional branch ("" negative prompt) encodes.

Everything is seeded; the result is written with :func:`modules.demo_model.save_components`, the same writer as
the random-weight test fixture, in fp16, with a ``.sha256`` file beside it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from modules import demo_model, hashes
from modules.training import shapes

logger = logging.getLogger(__name__)

#: Shapes of the shipped demo model: UNet ~4.6 M parameters, VAE ~1.0 M, CLIP text encoder ~3.3 M (of which
#: 3.2 M are the 49408x64 token embeddings of the real CLIP vocabulary). The UNet's first level has 64 channels,
#: not 32: its output GroupNorm has 32 groups (LDM's layout), and with one channel per group it normalises every
#: channel's spatial mean away, so the UNet cannot predict the mean of the noise, which on 8x8 latents is what
#: carries the background colour. Two channels per group let the level through (training loss -35 % at equal
#: steps, object colour 36 % -> 65 % in a 1000-step comparison; docs/demo_model.md).
DEMO_SPEC = demo_model.TinySpec(
    unet_channels=(64, 64, 128), unet_attention_levels=(1, 2), unet_heads=2, layers_per_block=1,
    vae_channels=(32, 32, 64, 64), vae_layers_per_block=1,
    text_hidden=64, text_intermediate=128, text_heads=2, text_layers=3,
)
NUM_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything that decides the trained weights (with the torch version and thread count)."""

    seed: int = 1234
    side: int = 64
    spec: demo_model.TinySpec = DEMO_SPEC
    threads: int = 2  # the 2-core budget of the issue; on a busy machine use 1 (docs/demo_model.md)
    vae_steps: int = 1200
    vae_full_steps: int = 150  # the last steps train on whole images instead of crops
    vae_batch: int = 16
    vae_crop: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    vae_logvar_init: float | None = -8.0  # see _start_with_narrow_posterior; None = diffusers' default init
    scenes: int = 6000
    steps: int = 4000
    batch: int = 48
    lr: float = 1.5e-3
    warmup: int = 40
    uncond_prob: float = 0.1
    offset_noise: float = 0.2  # std of a per-image, per-channel constant added to the noise (see _diffusion_batch)
    snr_gamma: float = 5.0  # Min-SNR-gamma loss weighting (Hang et al. 2023); 0 = plain MSE, as SD 1.5 was trained
    log_every: int = 25


#: A few dozen steps on a few dozen scenes: for the tests and a smoke run (``--quick``), not a usable model.
QUICK = TrainConfig(vae_steps=24, vae_full_steps=2, vae_batch=8, scenes=96, steps=24, batch=16, warmup=3,
                    log_every=5)


@dataclass
class TrainReport:
    """What a run did: steps, seconds, and losses on fixed probe batches before and after training."""

    config: TrainConfig
    vae_losses: list[float] = field(default_factory=list)
    vae_probe: tuple[float, float] = (math.nan, math.nan)  # (before, after)
    diffusion_losses: list[float] = field(default_factory=list)
    diffusion_probe: tuple[float, float] = (math.nan, math.nan)
    scale_factor: float = 0.18215
    seconds: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    sha256: str = ""


def noise_schedule() -> torch.Tensor:
    """SD1.5's ``alphas_cumprod``: scaled-linear betas (linear in sqrt) from 0.00085 to 0.012 over 1000 steps."""
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, NUM_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def add_noise(latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The forward process q(x_t | x_0) = sqrt(a_t) x_0 + sqrt(1 - a_t) eps."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def to_tensor(images: list) -> torch.Tensor:
    """PIL RGB images → ``(B, 3, H, W)`` in [-1, 1], the VAE's input range."""
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _log_progress(stage: str, step: int, total: int, loss: float, started: float) -> None:
    elapsed = time.perf_counter() - started
    eta = elapsed / (step + 1) * (total - step - 1)
    logger.info("%s step %d/%d loss %.4f elapsed %.0fs ETA %.0fs", stage, step + 1, total, loss, elapsed, eta)


# -- stage 1: the VAE --------------------------------------------------------------------------------------------

def _vae_loss(vae: torch.nn.Module, x: torch.Tensor, kl_weight: float, generator: torch.Generator) -> torch.Tensor:
    posterior = vae.encode(x).latent_dist
    reconstruction = vae.decode(posterior.sample(generator=generator)).sample
    error = reconstruction - x
    return error.abs().mean() + error.pow(2).mean() + kl_weight * posterior.kl().mean()


def _vae_batch(rng: random.Random, cfg: TrainConfig, full: bool) -> torch.Tensor:
    count = max(1, cfg.vae_batch // 2) if full else cfg.vae_batch
    x = to_tensor([shapes.render(shapes.random_scene(rng), cfg.side) for _ in range(count)])
    if full:
        return x
    crops = []
    for image in x:
        top, left = rng.randrange(cfg.side - cfg.vae_crop + 1), rng.randrange(cfg.side - cfg.vae_crop + 1)
        crops.append(image[:, top:top + cfg.vae_crop, left:left + cfg.vae_crop])
    return torch.stack(crops)


def _start_with_narrow_posterior(vae: torch.nn.Module, logvar: float) -> None:
    """Make the untrained encoder's posterior narrow: ``log σ² ≈ logvar`` instead of ≈ 0.

    Why: a fresh encoder predicts σ ≈ 1, so the decoder first sees latents drowned in sampling noise, and with a
    tiny KL weight only the reconstruction gradient shrinks σ, a bias step of about the learning rate per step:
    thousands of steps before reconstructions get sharp. Starting narrow (the log-variance half of
    ``quant_conv``'s output set to a constant) lets the decoder learn from clean latents from the first step.
    """
    conv = vae.quant_conv
    channels = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[channels:].zero_()
        conv.bias[channels:].fill_(logvar)


def train_vae(vae: torch.nn.Module, cfg: TrainConfig, report: TrainReport) -> None:
    """Stage 1 (see the module docstring). Fills ``report.vae_losses`` and ``report.vae_probe``."""
    rng = random.Random(cfg.seed + 1)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    probe = to_tensor([shapes.render(shapes.random_scene(random.Random(cfg.seed + 99)), cfg.side) for _ in range(8)])

    def probe_loss() -> float:
        vae.eval()
        with torch.no_grad():
            value = _vae_loss(vae, probe, 0.0, torch.Generator().manual_seed(0)).item()
        vae.train()
        return value

    if cfg.vae_logvar_init is not None:
        _start_with_narrow_posterior(vae, cfg.vae_logvar_init)
    before = probe_loss()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.vae_steps, cfg.warmup))
    started = time.perf_counter()
    for step in range(cfg.vae_steps):
        x = _vae_batch(rng, cfg, full=step >= cfg.vae_steps - cfg.vae_full_steps)
        loss = _vae_loss(vae, x, cfg.kl_weight, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        report.vae_losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.vae_steps:
            _log_progress("VAE", step, cfg.vae_steps, float(np.mean(report.vae_losses[-cfg.log_every:])), started)
    vae.eval()
    report.vae_probe = (before, probe_loss())


@torch.no_grad()
def encode_scenes(vae: torch.nn.Module, scenes: list[shapes.Scene], side: int,
                  chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every scene's latent, ``(N, 4, side/8, side/8)`` each."""
    means, stds = [], []
    for start in range(0, len(scenes), chunk):
        x = to_tensor([shapes.render(s, side) for s in scenes[start:start + chunk]])
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


# -- stage 2: UNet + text encoder ----------------------------------------------------------------------------------

class CaptionTokens:
    """Token ids (77 per caption) exactly as generation lays them out, via the web UI's own prompt encoder."""

    def __init__(self, text_encoder: torch.nn.Module) -> None:
        from modules.model_loading import load_tokenizer
        from modules.prompt_encoder import PromptEncoder

        self._encoder = PromptEncoder(text_encoder, load_tokenizer())
        self._cache: dict[str, list[int]] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        rows = []
        for text in captions:
            if text not in self._cache:
                chunks, _ = self._encoder.tokenize_line(text)
                self._cache[text] = chunks[0].tokens
            rows.append(self._cache[text])
        return torch.tensor(rows)


@dataclass(frozen=True, slots=True)
class _Batch:
    ids: torch.Tensor
    noisy: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor


def _diffusion_batch(index: list[int], captions: list[str], data: tuple[torch.Tensor, torch.Tensor], scale: float,
                     tokens: CaptionTokens, alphas: torch.Tensor, generator: torch.Generator,
                     offset_noise: float) -> _Batch:
    """A training batch. ``offset_noise`` adds a random constant per image and channel to the noise.

    Why: on 8x8 latents the mean of pure noise varies (std 1/8) more than the image's mean survives at t=999
    (sqrt(alpha_bar) = 0.07), and a model trained on plain noise reads the background colour from the noise's
    mean instead of from the prompt. With the offset the noise's mean is plainly unreliable, so the model learns
    to take the background from the text ("offset noise").
    """
    mean, std = data
    idx = torch.tensor(index)
    latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)) * scale
    noise = torch.randn(latents.shape, generator=generator)
    noise = noise + offset_noise * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    t = torch.randint(0, NUM_TIMESTEPS, (len(index),), generator=generator)
    return _Batch(tokens(captions), add_noise(latents, noise, t, alphas), t, noise)


def _diffusion_loss(unet: torch.nn.Module, text_encoder: torch.nn.Module, batch: _Batch,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Epsilon-prediction MSE; ``weights`` (one per timestep) reweights the samples of the batch."""
    context = text_encoder(input_ids=batch.ids).last_hidden_state
    prediction = unet(batch.noisy, batch.t, context).sample
    if weights is None:
        return torch.nn.functional.mse_loss(prediction, batch.noise)
    per_sample = (prediction - batch.noise).pow(2).mean(dim=(1, 2, 3))
    return (per_sample * weights[batch.t]).mean()


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-timestep loss weights ``min(SNR, gamma) / SNR`` for epsilon prediction (Min-SNR-gamma).

    Why: with plain MSE the nearly clean timesteps, which only sharpen texture, pull as hard as the noisy ones
    that decide colour and layout; capping their weight makes a small model learn the prompt-following part
    several times sooner (the paper reports ~3x faster convergence).
    """
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / snr


def train_diffusion(unet: torch.nn.Module, text_encoder: torch.nn.Module, scenes: list[shapes.Scene],
                    data: tuple[torch.Tensor, torch.Tensor], scale: float, cfg: TrainConfig,
                    report: TrainReport) -> None:
    """Stage 2 (see the module docstring). Fills ``report.diffusion_losses`` and ``report.diffusion_probe``."""
    rng = random.Random(cfg.seed + 2)
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    alphas = noise_schedule()
    tokens = CaptionTokens(text_encoder)
    probe_rng = random.Random(cfg.seed + 98)
    probe_index = [probe_rng.randrange(len(scenes)) for _ in range(16)]
    probe = _diffusion_batch(probe_index, [shapes.caption(scenes[i]) for i in probe_index], data, scale, tokens,
                             alphas, torch.Generator().manual_seed(cfg.seed + 98), cfg.offset_noise)
    modules = (unet, text_encoder)

    def probe_loss() -> float:
        for m in modules:
            m.eval()
        with torch.no_grad():
            value = _diffusion_loss(unet, text_encoder, probe).item()
        for m in modules:
            m.train()
        return value

    before = probe_loss()
    parameters = [p for m in modules for p in m.parameters()]
    weights = min_snr_weights(alphas, cfg.snr_gamma) if cfg.snr_gamma > 0 else None
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.steps, cfg.warmup))
    started = time.perf_counter()
    for step in range(cfg.steps):
        index = [rng.randrange(len(scenes)) for _ in range(cfg.batch)]
        captions = ["" if rng.random() < cfg.uncond_prob else shapes.random_caption(scenes[i], rng) for i in index]
        batch = _diffusion_batch(index, captions, data, scale, tokens, alphas, generator, cfg.offset_noise)
        loss = _diffusion_loss(unet, text_encoder, batch, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        report.diffusion_losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            _log_progress("UNet+CLIP", step, cfg.steps, float(np.mean(report.diffusion_losses[-cfg.log_every:])),
                          started)
    for m in modules:
        m.eval()
    report.diffusion_probe = (before, probe_loss())


# -- the whole run -------------------------------------------------------------------------------------------------



def write_checksum(path: Path) -> str:
    """Write ``<path>.sha256`` in ``sha256sum`` format (``<hex>  <name>``) and return the hex digest."""
    digest = hashes.sha256_of_file(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    return digest


def train(cfg: TrainConfig = TrainConfig(), out_path: Path | None = None,
          dtype: torch.dtype = torch.float16) -> tuple[TrainReport, tuple[torch.nn.Module, ...]]:
    """Run both stages; write the checkpoint (+ ``.yaml`` + ``.sha256``) to ``out_path`` when given.

    Returns:
        The report and the trained ``(unet, vae, text_encoder)`` (fp32, in eval mode).
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    report = TrainReport(config=cfg)
    unet, vae, text_encoder = demo_model.build_components(cfg.spec, seed=cfg.seed)
    total = time.perf_counter()

    started = time.perf_counter()
    vae.train()
    train_vae(vae, cfg, report)
    report.seconds["vae"] = time.perf_counter() - started

    started = time.perf_counter()
    scene_rng = random.Random(cfg.seed + 3)
    scenes = [shapes.random_scene(scene_rng) for _ in range(cfg.scenes)]
    mean, std = encode_scenes(vae, scenes, cfg.side)
    report.scale_factor = float(f"{1.0 / mean.std().item():.5g}")
    report.seconds["encode"] = time.perf_counter() - started
    logger.info("Encoded %d scenes; latent scale factor %.5g", len(scenes), report.scale_factor)

    started = time.perf_counter()
    unet.train()
    text_encoder.train()
    train_diffusion(unet, text_encoder, scenes, (mean, std), report.scale_factor, cfg, report)
    report.seconds["diffusion"] = time.perf_counter() - started
    report.seconds["total"] = time.perf_counter() - total

    if out_path is not None:
        demo_model.save_components(out_path, (unet, vae, text_encoder), cfg.spec, dtype, report.scale_factor)
        report.path = out_path
        report.sha256 = write_checksum(out_path)
        logger.info("Wrote %s (%.1f MB, sha256 %s)", out_path, out_path.stat().st_size / 1e6, report.sha256[:10])
    return report, (unet, vae, text_encoder)


def quick_config(**changes: object) -> TrainConfig:
    """:data:`QUICK` with some fields changed."""
    return replace(QUICK, **changes)
