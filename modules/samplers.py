"""A1111's sampler and schedule-type names mapped to diffusers schedulers.

A1111 runs k-diffusion samplers over the model's discrete sigma schedule. The diffusers schedulers below are
configured to follow the same arithmetic where diffusers can express it: the k-diffusion samplers use
``timestep_spacing="linspace"`` (k-diffusion's ``get_sigmas(n)`` spaces the timesteps the same way and starts
from ``sigma_max``), the timestep samplers DDIM and PLMS use A1111's "leading" spacing with offset 1, and each
sampler's default schedule type is A1111's (Karras for DPM++ 2M, Exponential for the 2M/3M SDE ones, ...).

How close each one comes is measured against k-diffusion itself by ``tests/test_samplers_kdiffusion.py`` and
tabled in ``docs/samplers.md``. In short: Euler, Euler a, LMS and Heun reproduce A1111 to float round-off
(Uniform and Karras); DPM++ 2M Karras, DPM++ SDE, the DPM++ 2M SDE samplers, Euler SGM Uniform and DDIM/PLMS at step
counts dividing 1000 are within 1e-3..4e-3 (integer timesteps, float64 sigmas); DPM++ 2M Uniform and DPM2 (a) are
approximate (spacing; A1111's ``discard_next_to_last_sigma``); DPM++ 3M SDE differs (that discard, and the sign of
one term of diffusers' 3rd-order SDE update). :class:`SamplerRun` supplies what the schedulers' configs cannot: A1111's
starting scale for the variance-preserving DPM-Solver and its per-image Brownian-tree SDE noise.

Not available, because diffusers has no scheduler that computes them:

* ``DPM++ 2S a``: diffusers' single-step DPM-Solver has no ancestral (noise-adding) variant.
* ``DPM fast`` / ``DPM adaptive``: adaptive step-size solvers; no diffusers equivalent.
* ``Restart``: the restart sampler has no diffusers scheduler.
* ``DDIM CFG++``: needs the unconditional prediction inside the update step, outside a scheduler's contract.

Schedule types not available: ``Polyexponential``, ``KL Optimal``, ``Simple``, ``Normal``, ``DDIM`` (diffusers'
schedulers cannot take these sigma lists) — each is refused with a message that names the ones that work.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

SCHEDULE_FLAGS: dict[str, dict[str, object]] = {
    # label → scheduler config that selects it (beyond the sampler's own settings)
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}
SCHEDULE_NAMES: dict[str, str] = {  # A1111 scheduler name (API) → label (UI/infotext)
    "automatic": "Automatic", "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform", "beta": "Beta",
}
UNAVAILABLE_SCHEDULES = {
    "polyexponential": "Polyexponential", "kl_optimal": "KL Optimal", "simple": "Simple", "normal": "Normal",
    "ddim": "DDIM", "align_your_steps": "Align Your Steps",
}
UNAVAILABLE_SAMPLERS: dict[str, str] = {
    "DPM++ 2S a": "diffusers has no ancestral single-step DPM-Solver",
    "DPM fast": "diffusers has no adaptive DPM-Solver",
    "DPM adaptive": "diffusers has no adaptive DPM-Solver",
    "Restart": "diffusers has no restart sampler",
    "DDIM CFG++": "CFG++ needs the unconditional prediction inside the scheduler step",
}


@dataclass(frozen=True, slots=True)
class SamplerInfo:
    """One A1111 sampler: the diffusers class that runs it and how it is configured."""

    name: str
    scheduler_class: str
    aliases: tuple[str, ...]
    config: Mapping[str, object] = field(default_factory=dict)
    default_schedule: str = "Uniform"
    schedules: tuple[str, ...] = ("Uniform",)
    uses_ensd: bool = False  # A1111 re-seeds its ancestral noise with "eta noise seed delta"
    brownian: bool = False  # A1111 draws its SDE noise from a per-image Brownian tree
    vp_start: bool = False  # a k-diffusion sampler on a diffusers scheduler that works in variance-preserving form
    second_order: bool = False  # two denoiser calls per step: A1111 counts prompt-editing steps twice

    @property
    def options(self) -> dict[str, str]:
        """A1111's ``options`` dict for /sdapi/v1/samplers."""
        opts: dict[str, str] = {}
        if self.default_schedule != "Uniform":
            opts["scheduler"] = self.default_schedule.lower()
        if self.uses_ensd:
            opts["uses_ensd"] = "True"
        if self.brownian:
            opts["brownian_noise"] = "True"
        if self.second_order:
            opts["second_order"] = "True"
        return opts


LMS_ORDER = 4  # k-diffusion's sample_lms default, which A1111 uses

_K_SCHEDULES = ("Uniform", "Karras", "Exponential", "Beta")
_LINSPACE = {"timestep_spacing": "linspace"}
_DPMPP = {**_LINSPACE, "algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}
_DPMPP_SDE = {**_DPMPP, "algorithm_type": "sde-dpmsolver++"}

SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo("DPM++ 2M", "DPMSolverMultistepScheduler", ("k_dpmpp_2m",), _DPMPP, "Karras", _K_SCHEDULES,
                vp_start=True),
    SamplerInfo("DPM++ SDE", "DPMSolverSDEScheduler", ("k_dpmpp_sde",), _LINSPACE, "Karras", _K_SCHEDULES,
                brownian=True, second_order=True),  # diffusers' own Brownian tree, seeded per image through noise_sampler_seed
    SamplerInfo("DPM++ 2M SDE", "DPMSolverMultistepScheduler", ("k_dpmpp_2m_sde",), _DPMPP_SDE, "Exponential",
                _K_SCHEDULES, brownian=True, vp_start=True),
    SamplerInfo("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler", ("k_dpmpp_2m_sde_heun",),
                {**_DPMPP_SDE, "solver_type": "heun"}, "Exponential", _K_SCHEDULES, brownian=True, vp_start=True),
    # k-diffusion's 3M SDE warms up with a "heun"-type 2nd-order step and keeps 3rd order to the end
    SamplerInfo("DPM++ 3M SDE", "DPMSolverMultistepScheduler", ("k_dpmpp_3m_sde",),
                {**_DPMPP_SDE, "solver_order": 3, "solver_type": "heun", "lower_order_final": False}, "Exponential",
                _K_SCHEDULES, brownian=True, vp_start=True),
    SamplerInfo("Euler a", "EulerAncestralDiscreteScheduler", ("k_euler_a", "k_euler_ancestral"), _LINSPACE,
                "Uniform", ("Uniform", "SGM Uniform"), uses_ensd=True),
    SamplerInfo("Euler", "EulerDiscreteScheduler", ("k_euler",), _LINSPACE, "Uniform", _K_SCHEDULES + ("SGM Uniform",)),
    SamplerInfo("LMS", "LMSDiscreteScheduler", ("k_lms",), _LINSPACE, "Uniform", _K_SCHEDULES + ("SGM Uniform",)),
    SamplerInfo("Heun", "HeunDiscreteScheduler", ("k_heun",), _LINSPACE, "Uniform", _K_SCHEDULES + ("SGM Uniform",),
                second_order=True),
    SamplerInfo("DPM2", "KDPM2DiscreteScheduler", ("k_dpm_2",), _LINSPACE, "Karras", _K_SCHEDULES, second_order=True),
    SamplerInfo("DPM2 a", "KDPM2AncestralDiscreteScheduler", ("k_dpm_2_a",), _LINSPACE, "Karras", _K_SCHEDULES,
                uses_ensd=True, second_order=True),
    SamplerInfo("DDIM", "DDIMScheduler", ("ddim",), {"timestep_spacing": "leading", "steps_offset": 1,
                                                      "set_alpha_to_one": False, "clip_sample": False}),
    SamplerInfo("PLMS", "PNDMScheduler", ("plms",), {"timestep_spacing": "leading", "steps_offset": 1,
                                                      "skip_prk_steps": True}),
    SamplerInfo("UniPC", "UniPCMultistepScheduler", ("unipc",), {"timestep_spacing": "leading", "steps_offset": 1},
                "Uniform", _K_SCHEDULES),
    SamplerInfo("LCM", "LCMScheduler", ("k_lcm",), {"timestep_spacing": "leading", "steps_offset": 1}),
)


class SamplerError(ValueError):
    """An unknown or unavailable sampler or schedule type, with the names that work."""


def find_sampler(name: str) -> SamplerInfo:
    """The sampler called ``name`` (A1111 name or alias, case-insensitive)."""
    wanted = name.strip().lower()
    for info in SAMPLERS:
        if wanted == info.name.lower() or wanted in info.aliases:
            return info
    for missing, reason in UNAVAILABLE_SAMPLERS.items():
        if wanted == missing.lower():
            raise SamplerError(f"sampler {name!r} is not available here ({reason}); "
                               f"use one of: {', '.join(s.name for s in SAMPLERS)}")
    raise SamplerError(f"unknown sampler {name!r}; use one of: {', '.join(s.name for s in SAMPLERS)}")


def split_sampler_and_schedule(sampler_name: str, scheduler: str | None) -> tuple[SamplerInfo, str]:
    """A1111's ``get_sampler_and_scheduler``: ``"DPM++ 2M Karras"`` → (DPM++ 2M, "Karras").

    Returns:
        The sampler and the schedule *label* actually used ("Automatic" resolved to the sampler's default).
    """
    label = schedule_label(scheduler or "Automatic")
    try:
        sampler = find_sampler(sampler_name)
    except SamplerError:
        for suffix in ("Karras", "Exponential"):
            if sampler_name.endswith(" " + suffix):
                sampler = find_sampler(sampler_name[: -len(suffix) - 1])
                label = suffix if label == "Automatic" else label
                break
        else:
            raise
    if label == "Automatic":
        label = sampler.default_schedule
    if label not in sampler.schedules:
        raise SamplerError(f"schedule type {label!r} does not work with sampler {sampler.name!r}; "
                           f"use Automatic or one of: {', '.join(sampler.schedules)}")
    return sampler, label


def schedule_label(value: str) -> str:
    """An A1111 schedule type given by label ("Karras") or name ("karras") → its label."""
    key = value.strip().lower().replace(" ", "_")
    if key in SCHEDULE_NAMES:
        return SCHEDULE_NAMES[key]
    if key in UNAVAILABLE_SCHEDULES:
        raise SamplerError(f"schedule type {UNAVAILABLE_SCHEDULES[key]!r} is not available here; use one of: "
                           f"{', '.join(SCHEDULE_NAMES.values())}")
    raise SamplerError(f"unknown schedule type {value!r}; use one of: {', '.join(SCHEDULE_NAMES.values())}")


def create_scheduler(sampler: SamplerInfo, schedule: str, base_config: Mapping[str, object],
                     seeds: list[int] | None = None):
    """A fresh diffusers scheduler for one batch (schedulers keep per-run state, so they are never shared).

    Args:
        sampler: from :func:`split_sampler_and_schedule`.
        schedule: a label in ``sampler.schedules``.
        base_config: the model's scheduler config (its beta schedule, prediction type).
        seeds: the batch's image seeds; Brownian-tree SDE samplers draw their noise from them, as A1111
            does, so an image does not depend on the others in its batch.
    """
    import diffusers

    cls = getattr(diffusers, sampler.scheduler_class)
    accepted = set(inspect.signature(cls.__init__).parameters)
    wanted = {**{k: v for k, v in base_config.items() if not k.startswith("_")},
              **sampler.config, **SCHEDULE_FLAGS[schedule]}
    if seeds is not None:
        wanted["noise_sampler_seed"] = list(seeds)
    return cls(**{k: v for k, v in wanted.items() if k in accepted})


@dataclass
class SamplerRun:
    """One batch's scheduler with A1111's starting point and noise source.

    * A1111 starts its k-diffusion samplers from ``noise·σmax``. diffusers' Euler-family schedulers do the same;
      DPMSolverMultistep works in variance-preserving form and starts from ``noise``, which is
      ``noise·√(1+σmax²)`` in A1111's terms, so ``vp_start`` samplers start from ``noise·σmax/√(1+σmax²)``.
    * Ancestral noise comes from the per-image generators (A1111 draws it per image, so an image does not
      depend on its batch); the multistep SDE samplers instead get A1111's per-image Brownian-tree noise.
    """

    sampler: SamplerInfo
    scheduler: object
    generators: list[torch.Generator]
    seeds: list[int]
    begin: int = 0  # index of the first timestep run: > 0 when an img2img pass skips the schedule's start
    _tree: object = None
    _step_parameters: frozenset[str] | None = None  # scheduler.step's, read once (inspect costs ~1 ms a step)

    def initial_latents(self, noise: torch.Tensor) -> torch.Tensor:
        """Unit-variance ``noise`` (B, 4, h, w) scaled to the scheduler's first step (call after set_timesteps)."""
        noise = noise.to(torch.float32)
        if self.sampler.vp_start:
            sigma = self.scheduler.sigmas[0].to(device=noise.device, dtype=torch.float32)
            return noise * (sigma / torch.sqrt(sigma * sigma + 1.0))
        return noise * self.scheduler.init_noise_sigma

    def start_from(self, init: torch.Tensor, noise: torch.Tensor, skip: int) -> torch.Tensor:
        """img2img (the hires pass): the run begins at step ``skip`` of the schedule, from ``init`` latents with
        unit-variance ``noise`` added at that step's level (call after set_timesteps).

        This is A1111's ``x + noise·σ`` at the first sigma run, in each scheduler's own form (``add_noise``
        gives the variance-preserving one for DPM-Solver and the timestep samplers). A1111's Brownian tree spans
        the sigmas it runs, so the SDE samplers' trees are made over those, not the whole schedule.
        """
        from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

        scheduler = self.scheduler
        self.begin = skip * scheduler.order  # second-order schedulers list each step's timesteps twice
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(self.begin)
        latents = scheduler.add_noise(init.to(torch.float32), noise.to(torch.float32),
                                      scheduler.timesteps[self.begin:self.begin + 1])
        if self.sampler.brownian and getattr(scheduler, "noise_sampler_seed", None) is not None:
            low, high = self._tree_span(scheduler.sigmas)  # diffusers' DPM++ SDE would span the whole schedule
            scheduler.noise_sampler = BrownianTreeNoiseSampler(latents, low.item(), high.item(),
                                                               scheduler.noise_sampler_seed)
        return latents

    def _tree_span(self, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Brownian tree's (σmin, σmax): those of the sigmas the run goes through (A1111's k-diffusion)."""
        run = sigmas[self.begin:]
        return run[run > 0].min(), run.max()

    def step_kwargs(self, index: int, latents: torch.Tensor) -> dict[str, object]:
        """Extra arguments of ``scheduler.step`` for step ``index`` of the run (its noise)."""
        if self._step_parameters is None:
            self._step_parameters = frozenset(inspect.signature(self.scheduler.step).parameters)
        accepted = self._step_parameters
        if self.sampler.brownian and "variance_noise" in accepted:
            return {"variance_noise": self._brownian_noise(self.begin + index, latents)}
        kwargs: dict[str, object] = {"generator": self.generators} if "generator" in accepted else {}
        if self.begin and "order" in accepted:  # LMS: diffusers caps its order by the schedule index, k-diffusion
            kwargs["order"] = min(index + 1, LMS_ORDER)  # (and A1111) by the steps run: only those have derivatives
        return kwargs

    def _brownian_noise(self, index: int, latents: torch.Tensor) -> torch.Tensor:
        from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

        sigmas = self.scheduler.sigmas.to(device=latents.device, dtype=torch.float32)
        if self._tree is None:
            self._tree = BrownianTreeNoiseSampler(latents, *self._tree_span(sigmas), seed=list(self.seeds))
        sigma, sigma_next = sigmas[index], sigmas[index + 1]
        if sigma_next <= 0:  # the last step adds no noise
            return torch.zeros_like(latents)
        return self._tree(sigma, sigma_next).to(latents.dtype)


def create_run(sampler: SamplerInfo, schedule: str, base_config: Mapping[str, object], seeds: list[int],
               generators: list[torch.Generator]) -> SamplerRun:
    """A :class:`SamplerRun` for one batch: a fresh scheduler plus its noise sources."""
    return SamplerRun(sampler, create_scheduler(sampler, schedule, base_config, seeds), list(generators), list(seeds))


def api_samplers() -> list[dict[str, object]]:
    """/sdapi/v1/samplers: ``[{name, aliases, options}]``."""
    return [{"name": s.name, "aliases": list(s.aliases), "options": s.options} for s in SAMPLERS]


def api_schedulers() -> list[dict[str, object]]:
    """/sdapi/v1/schedulers in A1111's shape."""
    return [{"name": name, "label": label, "aliases": None, "default_rho": 7.0 if name == "karras" else -1,
             "need_inner_model": False} for name, label in SCHEDULE_NAMES.items()]
