"""LoRA and hypernetwork costs: our network engine against diffusers' own LoRA path on the same files.

Both sides run in one process, on separate copies of the same weights (ours: the loaded model's UNet and text
encoder, patched by ``WeightPatcher``; diffusers: deep copies of them in a ``StableDiffusionPipeline``, patched by
PEFT), interleaved so that machine load hits both alike. Measured:

1. **switch** between two sets of 3 rank-32 kohya LoRAs, parsed files cached. Ours: the networks' activation of a
   job (``state.networks.activated``: ``WeightPatcher.reconcile`` of set B after set A, and back). Diffusers, two
   ways: reloading the 3 files (``unfuse_lora``, ``unload_lora_weights``, ``load_lora_weights`` x3,
   ``set_adapters``, ``fuse_lora``) and switching between 6 adapters already loaded (``unfuse_lora``,
   ``set_adapters``, ``fuse_lora``). Ratio = diffusers / ours per pair (the speed-up).
2. **first load** of a big LoRA (rank 128: 144 MiB in fp16 on SD1.5, a real "big" Civitai file). Ours: library
   load + grouping + module objects + reconcile; diffusers: ``load_lora_weights``, then ``fuse_lora``.
3. **per step** (UNet + CFG, one denoise step at batch 1): 3 LoRAs active (ours: merged; diffusers: unfused PEFT
   adapters), 1 hypernetwork active, against the same step with no network.
4. **parity**: ours and diffusers' merged weights for the switch target set, max |difference|.

Models: the tiny demo model, and a full-size SD1.5 with random weights (generated, not downloaded; fp16 file,
loaded in fp32 on the CPU with 8x8 latents, in fp16 at 512² on CUDA). Usage::

    python benchmarks/networks.py --threads 1 --write-docs      # CPU: tiny + full-size SD1.5 (short runs)
    python benchmarks/networks.py --device cuda --write-docs    # GPU: tiny + SD1.5 fp16 at 512²
    python benchmarks/networks.py --quick                       # smoke run (tiny model only)
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import dataclasses
import gc
import logging
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from modules.extra_networks import ActivationContext
    from modules.state import AppState

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``benchmarks`` and ``modules`` importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    append_to_docs,
    count_at_least,
    cuda_unavailable,
    load_average,
    setup,
)

DOCS_HEADING = "## LoRA and hypernetwork costs (`benchmarks/networks.py`)"
SWITCH_RANK = 32
SWITCH_ALPHA = 16.0  # kohya's common alpha = rank/2: exercises the alpha/rank scale on both sides
BIG_RANK = 128  # Σ(in+out) over the targeted SD1.5 modules is 589 824 per rank: 128 ranks in fp16 = 144 MiB
SET_A = (("a1", 0.8), ("a2", 0.6), ("a3", 0.5))
SET_B = (("b1", 0.8), ("b2", 0.6), ("b3", 0.5))
BIG = "big"
HYPERNET = "hn"
HYPERNET_RELU = "hn-relu"  # an activation: cannot be folded, its MLPs run at every step
CFG_SCALE = 7.0
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
COMPONENTS = ["unet", "text_encoder"]
GOAL_SWITCH_S = 0.050
GOAL_SPEEDUP = 20.0
GOAL_HYPERNET = 1.03

logger = logging.getLogger("benchmarks.networks")

RatioKind = Literal["speedup", "overhead", "none"]


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure for one model on one device."""

    model: str  # "tiny" or "sd15"
    size: int  # image side in pixels (latents are size/8)
    switches: int  # timed switch pairs per diffusers variant
    loads: int  # timed first loads per side
    rounds: int  # per-step rounds (every configuration once per round)
    steps: int  # UNet steps per per-step sample
    warmup: int


@dataclass(slots=True)
class Samples:
    """Wall and process-CPU seconds of repeated runs of one thing."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float, scale: float = 1.0) -> None:
        self.wall.append(wall * scale)
        self.cpu.append(cpu * scale)


@dataclass(slots=True)
class Row:
    """One line of the table: what, which side, its samples and its per-pair ratios against a baseline."""

    model: str
    measurement: str
    side: str
    samples: Samples
    kind: RatioKind = "none"
    ratios: list[float] = field(default_factory=list)  # wall, per pair
    cpu_ratios: list[float] = field(default_factory=list)
    goal: str = ""


@dataclass(slots=True)
class ModelResult:
    """Everything measured on one model."""

    plan: Plan
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


# -- network files ----------------------------------------------------------------------------------------------

def lora_targets(unet: torch.nn.Module, text_encoder: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """``(kohya module name, weight shape)`` of what a kohya SD1.5 LoRA covers: every Linear/1x1-conv of the UNet's
    transformer blocks (attention q/k/v/out, feed-forward, proj_in/out) and the text encoder's q/k/v/out/fc1/fc2.

    The names are kohya's (``lora_unet_`` + diffusers path, ``lora_te_text_model_`` + CLIP path, dots → ``_``),
    written here independently of our key mapping, as a real file would be.
    """
    import torch

    out = []
    for root, prefix, suffixes in ((unet, "lora_unet_", UNET_TARGETS), (text_encoder, "lora_te_", TE_TARGETS)):
        for path, module in root.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            if not any(path.endswith("." + s) for s in suffixes) or (root is unet and ".attentions." not in path):
                continue
            if root is text_encoder:
                path = "text_model." + path.removeprefix("text_model.")
            out.append((prefix + path.replace(".", "_"), tuple(module.weight.shape)))
    return out


def write_kohya_lora(path: Path, targets: Sequence[tuple[str, tuple[int, ...]]], rank: int, alpha: float,
                     seed: int) -> int:
    """A kohya LoRA (``lora_down``/``lora_up``/``alpha`` per module, fp16) with random factors; returns its size.

    ``down ~ N(0, 0.05²)``, ``up ~ N(0, 0.01²)``: a ΔW of a few % of the random model's weights, like a trained file.
    """
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in targets:
        kernel = (1, 1) if len(shape) == 4 else ()
        down = torch.randn((rank, shape[1], *kernel), generator=generator).mul_(0.05)
        up = torch.randn((shape[0], rank, *kernel), generator=generator).mul_(0.01)
        tensors[f"{name}.lora_down.weight"] = down.to(torch.float16)
        tensors[f"{name}.lora_up.weight"] = up.to(torch.float16)
        tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha)}
    save_file(tensors, str(path), metadata=metadata)
    return path.stat().st_size


def write_hypernetwork(path: Path, widths: Sequence[int], activation: str | None = None) -> None:
    """An A1111 hypernetwork (default ``[1, 2, 1]`` structure, A1111's initial weights) for ``widths``; A1111's
    default ``linear`` activation unless ``activation`` is given."""
    import torch

    from modules.hypernetworks.hypernetwork import Hypernetwork, HypernetworkSpec

    torch.manual_seed(0)
    Hypernetwork.create(path.stem, sorted(widths), HypernetworkSpec(activation_func=activation)).save(path)


def attention_widths(unet: torch.nn.Module) -> tuple[set[int], set[int]]:
    """Context widths of the UNet's ``to_k`` inputs: (self-attention widths, cross-attention widths)."""
    self_widths, cross_widths = set(), set()
    for path, module in unet.named_modules():
        if path.endswith(".to_k"):
            (cross_widths if ".attn2." in path else self_widths).add(module.in_features)
    return self_widths, cross_widths


# -- the two sides ----------------------------------------------------------------------------------------------

def tags(networks: Sequence[tuple[str, float]], kind: str = "lora") -> str:
    return " ".join(f"<{kind}:{name}:{weight}>" for name, weight in networks)


def activate(state: AppState, prompt: str) -> None:
    """Our networks' activation for a job with ``prompt`` (what ``processing`` does before encoding)."""
    from modules.extra_networks import ActivationContext, parse_prompt

    _, data = parse_prompt(prompt)
    ctx = ActivationContext(model=state.models.current, opts=state.opts.snapshot())
    with state.networks.activated(ctx, data):
        _check(ctx, prompt)


@contextmanager
def activated(state: AppState, prompt: str) -> Iterator[None]:
    """Our networks active for the duration of the block (hypernetworks are removed when it ends)."""
    from modules.extra_networks import ActivationContext, parse_prompt

    _, data = parse_prompt(prompt)
    ctx = ActivationContext(model=state.models.current, opts=state.opts.snapshot())
    with state.networks.activated(ctx, data):
        _check(ctx, prompt)
        yield


def _check(ctx: ActivationContext, prompt: str) -> None:
    if ctx.comments:  # a network that did not load would make every number meaningless
        raise RuntimeError(f"activating {prompt!r} reported: {ctx.comments}")


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class DiffusersSide:
    """diffusers' LoRA path on deep copies of our UNet and text encoder (the VAE and tokenizer are shared)."""

    def __init__(self, pipe: object, lora_dir: Path) -> None:
        from diffusers import StableDiffusionPipeline

        self.lora_dir = lora_dir
        self.pipe = StableDiffusionPipeline(
            vae=pipe.vae, text_encoder=copy.deepcopy(pipe.text_encoder), tokenizer=pipe.tokenizer,
            unet=copy.deepcopy(pipe.unet), scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)

    def load(self, name: str) -> None:
        self.pipe.load_lora_weights(str(self.lora_dir), weight_name=f"{name}.safetensors", adapter_name=name)

    def fuse(self, networks: Sequence[tuple[str, float]]) -> None:
        names = [name for name, _ in networks]
        self.pipe.set_adapters(names, adapter_weights=[weight for _, weight in networks])
        self.pipe.fuse_lora(components=COMPONENTS, adapter_names=names)

    def unfuse(self) -> None:
        self.pipe.unfuse_lora(components=COMPONENTS)

    def unload(self) -> None:
        self.unfuse()  # unload_lora_weights keeps fused deltas in the base weights
        self.pipe.unload_lora_weights()

    def switch_reload(self, networks: Sequence[tuple[str, float]]) -> None:
        """Replace the fused set by ``networks``, reading their files again."""
        self.unload()
        for name, _ in networks:
            self.load(name)
        self.fuse(networks)

    def switch_loaded(self, networks: Sequence[tuple[str, float]]) -> None:
        """Replace the fused set by ``networks``, all already loaded as adapters."""
        self.unfuse()
        self.fuse(networks)

    def adapter_counts(self) -> tuple[int, int]:
        """(PEFT LoRA layers, of which merged) over the UNet and text encoder."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for c in (self.pipe.unet, self.pipe.text_encoder) for m in c.modules()
                  if isinstance(m, BaseTunerLayer)]
        return len(layers), sum(1 for m in layers if m.merged)


def max_weight_difference(ours: torch.nn.Module, theirs: torch.nn.Module) -> float:
    """Max |Δ| over every weight and bias of ``ours`` and the same module of ``theirs`` (PEFT's base layer)."""
    worst = 0.0
    for path, module in ours.named_modules():
        if not path or not module._parameters:
            continue
        other = theirs.get_submodule(path)
        other = getattr(other, "base_layer", other)
        for name, mine in module._parameters.items():
            if mine is not None:
                difference = (mine.detach().float() - getattr(other, name).detach().float()).abs().max()
                worst = max(worst, float(difference))
    return worst


# -- measuring --------------------------------------------------------------------------------------------------

def make_step(unet: torch.nn.Module, size: int, device: str) -> Callable[[], torch.Tensor]:
    """One denoise step at batch 1: cond and uncond in one UNet call, A1111's CFG in fp32 (as ``sampling``)."""
    import torch

    dtype = next(unet.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((1, 4, size // 8, size // 8), generator=generator).to(device, dtype)
    both = torch.randn((2, 77, unet.config.cross_attention_dim), generator=generator).to(device, dtype)
    t = torch.tensor(500, device=device)

    @torch.no_grad()
    def step() -> torch.Tensor:
        out = unet(torch.cat([x, x]), t, encoder_hidden_states=both, return_dict=False)[0].float()
        uncond, cond = out.chunk(2)
        return uncond + CFG_SCALE * (cond - uncond)

    return step


def timed(fn: Callable[[], object], device: str) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of ``fn()``, the GPU drained before and after (``benchmarks.txt2img._timed``)."""
    from benchmarks.txt2img import _timed

    wall, cpu, _ = _timed(fn, device)
    return wall, cpu


class Bench:
    """One model: its AppState, the diffusers side, the files, and the four measurements."""

    def __init__(self, state: AppState, plan: Plan, device: str) -> None:
        self.state, self.plan, self.device = state, plan, device
        pipe = state.models.current.pipe
        self.ours_unet = pipe.unet
        self.lora_dir = state.paths.lora_dir
        self.theirs = DiffusersSide(pipe, self.lora_dir)  # copied before anything is patched
        self.result = ModelResult(plan)
        self.cross_only = False  # set by write_files: a cross-attention width no self-attention has (SD1.5: 768)
        self.cycles = 0  # fuse/unfuse cycles the diffusers copy went through

    # -- set-up -----------------------------------------------------------------------------------------------
    def write_files(self) -> None:
        pipe = self.state.models.current.pipe
        targets = lora_targets(pipe.unet, pipe.text_encoder)
        self.lora_dir.mkdir(parents=True, exist_ok=True)
        sizes = {}
        for seed, (name, _) in enumerate(SET_A + SET_B):
            sizes[name] = write_kohya_lora(self.lora_dir / f"{name}.safetensors", targets, SWITCH_RANK, SWITCH_ALPHA,
                                           seed + 1)
        sizes[BIG] = write_kohya_lora(self.lora_dir / f"{BIG}.safetensors", targets, BIG_RANK, BIG_RANK / 2, 99)
        self_widths, cross_widths = attention_widths(pipe.unet)
        folder = self.state.paths.hypernetwork_dir
        folder.mkdir(parents=True, exist_ok=True)
        write_hypernetwork(folder / f"{HYPERNET}.pt", self_widths | cross_widths)
        write_hypernetwork(folder / f"{HYPERNET_RELU}.pt", self_widths | cross_widths, "relu")
        self.cross_only = bool(cross_widths - self_widths)  # SD1.5: 768 is no self-attention width
        if self.cross_only:
            write_hypernetwork(folder / f"{HYPERNET}-cross.pt", cross_widths)
        self.state.libraries["lora"].refresh()
        self.result.notes.append(
            f"Files: {len(targets)} modules per LoRA; switch sets rank {SWITCH_RANK}, alpha {SWITCH_ALPHA:g}, "
            f"{sizes['a1'] / 1e6:.1f} MB each; big rank {BIG_RANK}, {sizes[BIG] / 1e6:.1f} MB "
            f"({sizes[BIG] / 2**20:.1f} MiB); hypernetwork [1, 2, 1] for widths "
            f"{sorted(self_widths | cross_widths)}, linear (A1111's default, folded into the attention "
            f"weights) and relu (not foldable)" + (f", and a linear one for {sorted(cross_widths)} only"
                                                       if self.cross_only else "") + ".")

    # -- 4. parity --------------------------------------------------------------------------------------------
    def parity(self, label: str, fresh: bool) -> None:
        """Ours and diffusers with set B merged: max |Δ| per component (fresh: also the LoRAs' own effect)."""
        pipe, ref = self.state.models.current.pipe, self.theirs.pipe
        if fresh:
            activate(self.state, "")
            for name, _ in SET_B:
                self.theirs.load(name)
            self.theirs.fuse(SET_B)
            effect = max(max_weight_difference(pipe.unet, ref.unet),
                         max_weight_difference(pipe.text_encoder, ref.text_encoder))
        else:
            self.theirs.switch_loaded(SET_B)
            self.cycles += 1
        activate(self.state, tags(SET_B))
        unet = max_weight_difference(pipe.unet, ref.unet)
        te = max_weight_difference(pipe.text_encoder, ref.text_encoder)
        layers, merged = self.theirs.adapter_counts()
        patched = sum(len(p.patched) for p in self.state.models.current.patchers.values())
        note = (f"Parity, set B merged ({label}): max |W_ours − W_diffusers| UNet {unet:.3g}, text encoder {te:.3g}; "
                f"modules patched: ours {patched}, diffusers {merged} of {layers} PEFT layers")
        if fresh:
            note += f"; the LoRAs themselves move weights by up to {effect:.3g}"
        self.result.notes.append(note + ".")
        logger.info(note)
        if fresh and (patched != merged or patched != layers or max(unet, te) > 0.1 * effect):
            raise RuntimeError(f"ours and diffusers do not merge the same weights: {note}")
        if fresh and max(unet, te) > 0.01 * effect:
            logger.warning("ours and diffusers differ by more than 1 %% of the LoRAs' effect: %s", note)

    # -- 2. first load ----------------------------------------------------------------------------------------
    def first_load(self) -> None:
        """Cold loads of the big file, interleaved: ours (cache cleared, nothing applied) and diffusers."""
        library = self.state.libraries["lora"]
        ours, load, fuse, both = Samples(), Samples(), Samples(), Samples()
        stages: dict[str, list[float]] = {}

        def cold_ours() -> None:
            activate(self.state, "")
            library.clear_cache()

        def run_ours(record: bool) -> None:
            cold_ours()
            with watch(self._stage_targets(), self.device) as times:
                wall, cpu = timed(lambda: activate(self.state, f"<lora:{BIG}:1>"), self.device)
            if record:
                ours.add(wall, cpu)
                for key, value in times.items():
                    stages.setdefault(key, []).append(value)
            elif "sha256" in times:
                self.result.notes.append(f"First use of the big file also hashes it for the infotext "
                                         f"(`Lora hashes`; once per file, then cached in cache.json): "
                                         f"{times['sha256'] * 1e3:.0f} ms, not in the rows.")

        def run_theirs(record: bool) -> None:
            self.theirs.unload()
            self.cycles += 1
            wall_load, cpu_load = timed(lambda: self.theirs.load(BIG), self.device)
            wall_fuse, cpu_fuse = timed(lambda: self.theirs.fuse([(BIG, 1.0)]), self.device)
            if record:
                load.add(wall_load, cpu_load)
                fuse.add(wall_fuse, cpu_fuse)
                both.add(wall_load + wall_fuse, cpu_load + cpu_fuse)

        for _ in range(max(1, self.plan.warmup)):
            run_ours(False)
            run_theirs(False)
        for i in range(self.plan.loads):
            for side in ((run_ours, run_theirs) if i % 2 == 0 else (run_theirs, run_ours)):
                side(True)
            logger.info("first load %d/%d: ours %.3fs diffusers %.3fs", i + 1, self.plan.loads, ours.wall[-1],
                        both.wall[-1])
        self.theirs.unload()
        activate(self.state, "")
        library.clear_cache()
        what = f"first load, 1 LoRA rank {BIG_RANK}"
        self._rows([(what, "ours", ours, None, ""),
                    (what, "diffusers: load_lora_weights (unfused)", load, ours, ""),
                    (what, "diffusers: load_lora_weights + fuse_lora", both, ours, "")], "speedup")
        parts = ", ".join(f"{k} {statistics.median(v) * 1e3:.0f} ms" for k, v in stages.items() if k != "sha256")
        rest = statistics.median(ours.wall) - sum(statistics.median(v) for k, v in stages.items() if k != "sha256")
        self.result.notes.append(f"Our first load, medians: {parts}, the rest (module objects, tags, "
                                 f"bookkeeping) {rest * 1e3:.0f} ms. diffusers' fuse_lora alone: "
                                 f"{statistics.median(fuse.wall) * 1e3:.0f} ms.")

    def _stage_targets(self) -> dict[str, tuple[object, str]]:
        library = self.state.libraries["lora"]
        patchers = self.state.models.current.patchers
        return {"read + group": (library, "load"), "sha256": (library, "read_hash"),
                "reconcile UNet": (patchers["unet"], "_reconcile_layers"),
                "reconcile text encoder": (patchers["text_encoder"], "_reconcile_layers")}

    # -- 1. switch --------------------------------------------------------------------------------------------
    def switch(self) -> None:
        """Set A ↔ set B, ours vs diffusers reloading the files, then vs diffusers with 6 adapters loaded."""
        what = f"switch 3 ↔ 3 LoRAs rank {SWITCH_RANK}"
        variants = (("diffusers: unfuse + unload + load ×3 + set_adapters + fuse", self.theirs.switch_reload),
                    ("diffusers: 6 loaded, unfuse + set_adapters + fuse", self.theirs.switch_loaded))
        ours_all = Samples()
        rows = []
        for index, (label, theirs) in enumerate(variants):
            self.theirs.unload()
            for name, _ in (SET_A if index == 0 else SET_A + SET_B):
                self.theirs.load(name)
            self.theirs.fuse(SET_A)
            activate(self.state, tags(SET_A))
            ours, diffusers = self._switch_pairs(theirs)
            ours_all.wall += ours.wall
            ours_all.cpu += ours.cpu
            rows.append((what, label, diffusers, ours))
        if self.device == "cuda":
            goal = f"≤ {GOAL_SWITCH_S * 1e3:.0f} ms: " + ("met" if statistics.median(ours_all.wall) <= GOAL_SWITCH_S
                                                         else "NOT met")
        else:
            goal = f"≤ {GOAL_SWITCH_S * 1e3:.0f} ms is a GPU goal (not judged on the CPU)"
        self._rows([(what, "ours", ours_all, None, goal)], "speedup")
        for what, label, diffusers, ours in rows:
            self._rows([(what, label, diffusers, ours, "")], "speedup")
            row = self.result.rows[-1]
            speedup = statistics.median(row.ratios)
            row.goal = f"≥ {GOAL_SPEEDUP:.0f}× faster: {'met' if speedup >= GOAL_SPEEDUP else 'NOT met'}"

    def _switch_pairs(self, theirs: Callable[[Sequence[tuple[str, float]]], None]) -> tuple[Samples, Samples]:
        """Warm-up switches, then timed pairs (ours, diffusers) to the same target, order alternating."""
        ours, diffusers = Samples(), Samples()
        for i in range(2 * self.plan.warmup + self.plan.switches):
            target = SET_B if i % 2 == 0 else SET_A
            record = i >= 2 * self.plan.warmup
            sides = [(ours, lambda target=target: activate(self.state, tags(target))),
                     (diffusers, lambda target=target: theirs(target))]
            for samples, fn in (sides if (i // 2) % 2 == 0 else sides[::-1]):
                wall, cpu = timed(fn, self.device)
                if record:
                    samples.add(wall, cpu)
            self.cycles += 1
            if record:
                logger.info("switch %d/%d: ours %.4fs diffusers %.4fs", i + 1 - 2 * self.plan.warmup,
                            self.plan.switches, ours.wall[-1], diffusers.wall[-1])
        return ours, diffusers

    # -- 3. per step ------------------------------------------------------------------------------------------
    def per_step(self) -> None:
        """Rounds over every configuration (rotated order); ratio = configuration / no network in that round."""
        self.theirs.unfuse()
        present = set(self.theirs.pipe.get_list_adapters().get("unet", []))
        for name in [name for name, _ in SET_A] + [BIG]:  # set A: loaded by the switch part, if it ran
            if name not in present:
                self.theirs.load(name)
        ours_step = make_step(self.ours_unet, self.plan.size, self.device)
        theirs_step = make_step(self.theirs.pipe.unet, self.plan.size, self.device)
        configs: list[tuple[str, str, Callable[[], AbstractContextManager[None]], Callable[[], object]]] = [
            ("no network", "baseline", lambda: activated(self.state, ""), ours_step),
            ("3 LoRAs rank 32", "ours (merged)", lambda: activated(self.state, tags(SET_A)), ours_step),
            ("1 hypernetwork", "ours", lambda: activated(self.state, f"<hypernet:{HYPERNET}:1>"), ours_step),
            ("1 hypernetwork, relu (MLPs every step)", "ours",
             lambda: activated(self.state, f"<hypernet:{HYPERNET_RELU}:1>"), ours_step),
            ("3 LoRAs rank 32", "diffusers (unfused adapters)", lambda: self._adapters(SET_A), theirs_step),
            (f"1 LoRA rank {BIG_RANK}", "diffusers (unfused adapter)", lambda: self._adapters([(BIG, 1.0)]),
             theirs_step),
        ]
        if self.cross_only:
            configs.insert(4, ("1 hypernetwork, cross-attention (768) only", "ours",
                               lambda: activated(self.state, f"<hypernet:{HYPERNET}-cross:1>"), ours_step))
        samples = [Samples() for _ in configs]
        for r in range(self.plan.rounds):
            shift = r % len(configs)
            for index in list(range(len(configs)))[shift:] + list(range(len(configs)))[:shift]:
                _, _, context, step = configs[index]
                with context():
                    step()  # untimed: the first step after a change may pay one-time costs
                    wall, cpu = timed(lambda step=step: [step() for _ in range(self.plan.steps)], self.device)
                samples[index].add(wall, cpu, 1.0 / self.plan.steps)
            logger.info("per-step round %d/%d: %s", r + 1, self.plan.rounds,
                        " ".join(f"{s.wall[-1] * 1e3:.1f}" for s in samples))
        activate(self.state, "")
        self._hypernetwork_notes(ours_step)
        base = samples[0]
        for (what, side, _, _), sample in zip(configs, samples):
            baseline = None if sample is base else base
            goal = ""
            if side.startswith("ours") and what.startswith("3 LoRAs"):
                goal = "0 overhead"
            elif side == "ours" and what == "1 hypernetwork":
                goal = f"≤ {100 * (GOAL_HYPERNET - 1):.0f} %"
            self._rows([(f"per step ({self.plan.size}², CFG): {what}", side, sample, baseline, goal)], "overhead")
            row = self.result.rows[-1]
            if goal:  # on the CPU judged on CPU time: steadier than wall time on a shared machine
                row.goal = _judge_overhead(row.cpu_ratios if self.device == "cpu" else row.ratios, goal)
                row.goal += " (CPU time)" if self.device == "cpu" else ""

    def _hypernetwork_notes(self, step: Callable[[], object]) -> None:
        """FLOPs of one step per hypernetwork configuration (``torch.utils.flop_counter``: what the step computes,
        whatever the device), and the wall time of folding the linear one into the attention weights (when the
        set of networks changes; not in the per-step rows)."""
        from torch.utils.flop_counter import FlopCounterMode

        flops = {}
        for label, prompt in (("no network", ""), ("linear, folded", f"<hypernet:{HYPERNET}:1>"),
                              ("relu", f"<hypernet:{HYPERNET_RELU}:1>")):
            with activated(self.state, prompt):
                step()  # the cross-attention contexts of the processors are made here, once per job
                with FlopCounterMode(display=False) as counter:
                    step()
            flops[label] = counter.get_total_flops()
        base = flops["no network"]
        self.result.notes.append(
            f"FLOPs per step at {self.plan.size}² (flop counter, after the first step of a job): "
            + ", ".join(f"{label} {value / 1e9:.4g} GFLOP" + ("" if value == base else f" ({value / base - 1:+.1%})")
                        for label, value in flops.items()) + ".")
        fold_times = []
        patched = 0
        for _ in range(3):
            activate(self.state, "")  # the set changes twice: the fold is undone, then made again
            wall, _ = timed(lambda: activate(self.state, f"<hypernet:{HYPERNET}:1>"), self.device)
            fold_times.append(wall)
            patched = len(self.state.models.current.patchers["unet"].patched)
        activate(self.state, "")
        self.result.notes.append(
            f"Folding the linear hypernetwork into the attention weights ({patched} modules: to_k, to_v, to_out.0), "
            f"when the set of networks changes (not per job): {statistics.median(fold_times) * 1e3:.1f} ms "
            f"(median of {len(fold_times)}).")

    @contextmanager
    def _adapters(self, networks: Sequence[tuple[str, float]]) -> Iterator[None]:
        self.theirs.pipe.set_adapters([n for n, _ in networks], adapter_weights=[w for _, w in networks])
        yield

    # -- profiles ---------------------------------------------------------------------------------------------
    def profile(self, folder: Path) -> None:
        """cProfile one switch and one first load of each side into ``folder`` (``python -m pstats``)."""
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{self.plan.model}_{self.device}"
        self.theirs.unfuse()
        activate(self.state, tags(SET_A))
        self.theirs.fuse(SET_A)
        library = self.state.libraries["lora"]
        runs = (("switch_ours", lambda: activate(self.state, tags(SET_B)), None),
                ("switch_diffusers_loaded", lambda: self.theirs.switch_loaded(SET_B), None),
                ("first_load_ours", lambda: activate(self.state, f"<lora:{BIG}:1>"),
                 lambda: (activate(self.state, ""), library.clear_cache())),
                ("first_load_diffusers", lambda: (self.theirs.load(BIG), self.theirs.fuse([(BIG, 1.0)])),
                 self.theirs.unload))
        for name, fn, prepare in runs:
            if prepare is not None:
                prepare()
            gc.collect()
            profiler = cProfile.Profile()
            profiler.runcall(lambda fn=fn: (fn(), _synchronize(self.device)))
            profiler.dump_stats(folder / f"{stem}_{name}.prof")
        logger.info("Profiles written: %s/%s_*.prof", folder, stem)

    # -- rows -------------------------------------------------------------------------------------------------
    def _rows(self, specs: Sequence[tuple[str, str, Samples, Samples | None, str]], kind: RatioKind) -> None:
        """Append rows; a row with a baseline gets per-pair ratios (speed-up: baseline is the denominator of
        diffusers/ours; overhead: the row over the baseline)."""
        for what, side, samples, baseline, goal in specs:
            row = Row(self.plan.model, what, side, samples, goal=goal)
            if baseline is not None:
                row.kind = kind
                row.ratios = [a / b for a, b in zip(samples.wall, baseline.wall, strict=True)]
                row.cpu_ratios = [a / b for a, b in zip(samples.cpu, baseline.cpu, strict=True)]
            self.result.rows.append(row)


def _judge_overhead(ratios: Sequence[float], goal: str) -> str:
    q1, median, q3 = quartiles(ratios)
    if goal == "0 overhead":
        ok = median <= 1.0 or q1 <= 1.0 <= q3
        return f"0 overhead: {'met (within noise)' if ok else 'NOT met'}"
    return f"{goal}: {'met' if median <= GOAL_HYPERNET else 'NOT met'}"


@contextmanager
def watch(targets: dict[str, tuple[object, str]], device: str) -> Iterator[dict[str, float]]:
    """Sum the wall time spent in ``obj.method`` for each ``label: (obj, method)`` while the block runs.

    The wrappers are instance attributes of our own objects (the library, the patchers), removed at the end.
    """
    import torch

    totals: dict[str, float] = {}

    def wrap(label: str, original: Callable[..., object]) -> Callable[..., object]:
        def timed_call(*args: object, **kwargs: object) -> object:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if device == "cuda":
                    torch.cuda.synchronize()
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start
        return timed_call

    for label, (obj, name) in targets.items():
        setattr(obj, name, wrap(label, getattr(obj, name)))
    try:
        yield totals
    finally:
        for obj, name in targets.values():
            delattr(obj, name)


# -- reporting --------------------------------------------------------------------------------------------------

def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    from benchmarks.txt2img import _quartiles

    return _quartiles(values)


def _ratio_cell(ratios: Sequence[float], kind: RatioKind) -> str:
    if kind == "none" or not ratios:
        return "—"
    q1, median, q3 = quartiles(ratios)
    if kind == "speedup":
        return f"{median:.1f}× [{q1:.1f}–{q3:.1f}]"
    return f"{median:.3f} [{q1:.3f}–{q3:.3f}] ({100 * (median - 1):+.1f} %)"


def results_table(results: Sequence[ModelResult], device: str) -> str:
    """One row per (model, measurement, side); medians in ms; ratios as medians of per-pair ratios [IQR].

    Switch and first-load rows: diffusers / ours (how many times slower diffusers is). Per-step rows: the step
    with the network over the same step without (the overhead). CPU-time columns only on the CPU.
    """
    cpu = device == "cpu"
    head = ["Model", "Measurement", "Side", "Wall median (ms)", "Wall IQR (ms)", "CPU median (ms)",
            "Ratio, wall [IQR]", "Ratio, CPU time [IQR]", "Goal"]
    if not cpu:
        head = [h for h in head if "CPU" not in h]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if "(ms)" in h or "Ratio" in h else "---" for h in head) + "|"]
    for result in results:
        for row in result.rows:
            q1, median, q3 = quartiles(row.samples.wall)
            cells = [row.model, row.measurement, row.side, f"{median * 1e3:.2f}", f"{(q3 - q1) * 1e3:.2f}"]
            if cpu:
                cells.append(f"{statistics.median(row.samples.cpu) * 1e3:.2f}")
            cells.append(_ratio_cell(row.ratios, row.kind))
            if cpu:
                cells.append(_ratio_cell(row.cpu_ratios, row.kind))
            cells.append(row.goal or "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


GPU_TODO = """\
**Still to measure on a GPU.** No GPU was available for this run. On the lent H100:
`python benchmarks/networks.py --device cuda --write-docs` (tiny model, then the full-size SD1.5 in fp16 at 512²).
It judges the GPU goals: switch ≤ 50 ms and ≥ 20× faster than diffusers; per-step overhead 0 for LoRAs and ≤ 3 %
for a hypernetwork, at 512² where the UNet, not Python, dominates a step."""


def report(results: Sequence[ModelResult], env: dict[str, str], argv: Sequence[str], device: str) -> str:
    """A dated markdown section: environment, command, method, table, parity and breakdown notes."""
    command = shlex.join(["python", "benchmarks/networks.py", *argv])
    models = ", ".join(f"{r.plan.model} ({r.plan.size}²)" for r in results)
    lines = [f"### {env['Date']} — networks, {env['Device'].split(' dtype=')[0]}, {models}", ""]
    lines += [f"- {key}: {value}" for key, value in env.items() if key != "Date"]
    lines += [
        f"- Command: `{command}`",
        ("- Method: both sides in one process on separate copies of the same weights (diffusers: deep copies of our "
        "UNet and text encoder, PEFT adapters). Switch: warm-up switches, then pairs (ours, diffusers) to the same "
        "target set, order alternating; ratio = diffusers/ours per pair. First load: the parsed-file cache cleared "
        "and nothing applied (ours), `unfuse_lora` + `unload_lora_weights` (diffusers) before each timed load; files "
        "in the OS page cache. Per step: every configuration once per round, rotated order, one untimed step after "
        "each change; ratio = configuration / no network in the same round. Medians, [inter-quartile range]."),
        "",
        results_table(results, device),
        "",
    ]
    for result in results:
        lines += [f"- {result.plan.model}: {note}" for note in result.notes]
    if device == "cpu":
        lines += ["", GPU_TODO]
    return "\n".join(lines) + "\n"


# -- entry point ------------------------------------------------------------------------------------------------

def plan_for(model: str, device: str, quick: bool, repeats: int | None, size: int | None = None) -> Plan:
    """Repeats per model: many on the tiny model, few for the full-size one on the CPU (seconds per switch);
    ``size`` overrides the per-step image side (64² on the CPU, 512² on a GPU)."""
    if quick:
        return Plan(model, 64, switches=2, loads=1, rounds=1, steps=1, warmup=1)
    if model == "tiny":
        plan = Plan(model, 64, switches=16, loads=7, rounds=9, steps=10, warmup=2)
    elif device == "cpu":
        plan = Plan(model, 64, switches=6, loads=3, rounds=5, steps=2, warmup=1)
    else:
        plan = Plan(model, 512, switches=16, loads=5, rounds=9, steps=10, warmup=2)
    if repeats:
        plan = Plan(model, plan.size, repeats, max(1, repeats // 2), repeats, plan.steps, plan.warmup)
    if size:
        plan = dataclasses.replace(plan, size=size)
    return plan


PARTS = ("first_load", "switch", "per_step")


def run_model(model: str, device: str, plan: Plan, profile_dir: Path | None,
              parts: Sequence[str] = PARTS) -> ModelResult:
    """Generate the checkpoint and files in a temp data dir, build the AppState, measure, tear down."""
    from benchmarks import txt2img

    with tempfile.TemporaryDirectory(prefix="bench-networks-") as tmp:
        data = Path(tmp) / "data"
        ckpt_dir = data / "models" / "Stable-diffusion"
        if model == "tiny":
            txt2img.write_tiny_checkpoint(ckpt_dir)
        else:
            txt2img.write_random_sd15(ckpt_dir, device)
        state = txt2img.build_app_state(data, device)
        try:
            bench = Bench(state, plan, device)
            bench.write_files()
            bench.parity("fresh: one fuse", fresh=True)
            bench.theirs.unload()
            if "first_load" in parts:
                bench.first_load()
            if "switch" in parts:
                bench.switch()
                bench.parity(f"after {bench.cycles} unfuse/fuse cycles of the diffusers copy", fresh=False)
            if "per_step" in parts:
                bench.per_step()
            if profile_dir is not None:
                bench.profile(profile_dir)
            bench.result.env = _environment(state, device)
            return bench.result
        finally:
            state.queue.shutdown()
            del state
            gc.collect()


def _quiet_libraries() -> None:
    """No console output from transformers/diffusers/PEFT while timing: neither side should pay for printing.

    (``load_lora_weights`` otherwise prints a progress bar and a CLIP "LOAD REPORT" table per adapter.) Correctness
    does not rest on their warnings: the parity check compares the merged weights and counts the patched modules.
    """
    import warnings

    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module=r"peft\.")


def _environment(state: AppState, device: str) -> dict[str, str]:
    import peft
    import torch

    from benchmarks.txt2img import environment

    env = environment(state, device, torch.get_num_threads())
    env["Versions"] += f", peft {peft.__version__}"
    if load_average():  # how busy the shared machine was: read the noise with it
        env["CPU"] += f", {load_average()} at the end"
    return env


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both sides run")
    parser.add_argument("--models", default=None,
                        help="comma-separated: tiny, sd15 (default: both; --quick: tiny)")
    parser.add_argument("--repeats", type=count_at_least(1), default=None,
                        help="timed switch pairs and per-step rounds (first loads: half of it)")
    parser.add_argument("--threads", type=count_at_least(1), default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 1-2 repeats of everything")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {', '.join(PARTS)} (default: all; parity is always checked)")
    parser.add_argument("--size", type=count_at_least(64), default=None,
                        help="image side of the per-step measurement, a multiple of 64 (default: 64 on the CPU, "
                             "512 on CUDA)")
    parser.add_argument("--write-docs", action="store_true", help="append the results to docs/benchmarks.md")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also cProfile one switch and one first load of each side into DIR/*.prof")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the markdown section (and append it to the docs with --write-docs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup(args.verbose)
    import torch

    if cuda_unavailable(args.device):
        return 2
    models = [m.strip() for m in (args.models or ("tiny" if args.quick else "tiny,sd15")).split(",") if m.strip()]
    unknown = sorted(set(models) - {"tiny", "sd15"})
    if unknown or not models:
        sys.stderr.write(f"error: --models takes tiny and/or sd15, got {args.models!r}\n")
        return 2
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        sys.stderr.write(f"error: --parts takes {', '.join(PARTS)}, got {args.parts!r}\n")
        return 2
    if args.size and args.size % 64:
        sys.stderr.write(f"error: --size must be a multiple of 64, got {args.size}\n")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    _quiet_libraries()
    results = [run_model(m, args.device, plan_for(m, args.device, args.quick, args.repeats, args.size), args.profile,
                         parts)
               for m in models]
    section = report(results, results[0].env, argv, args.device)
    print(section)
    if args.write_docs:
        append_to_docs(section, heading=DOCS_HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
