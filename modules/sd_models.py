"""Checkpoints: discovery, A1111 titles and hashes, and the cache of loaded pipelines.

A1111 conventions kept here:

* Files under ``models/Stable-diffusion`` (recursive): ``.safetensors`` and ``.ckpt``; we also accept diffusers
  pipeline folders (a folder holding ``model_index.json``). ``--ckpt FILE`` adds one more file.
* ``name`` is the path relative to the checkpoint folder; ``title`` is ``"name [shorthash]"`` where the short
  hash is the first 10 hex digits of the file's sha256 (what Civitai shows). As in A1111 the hash is computed
  when the model is first loaded and then cached in ``cache.json``; until then the title has no hash.
* A checkpoint is found by its title, name, name without extension, short or full sha256, or A1111's legacy
  8-digit hash, so old infotexts and scripts still resolve.
* Up to ``sd_checkpoints_limit`` pipelines stay loaded; on CUDA the ones not in use wait in RAM.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from modules import model_loading, sd_vae
from modules.conditioning import ConditioningCache
from modules.devices import DevicePolicy, apply_attention, patch_devices, torch_gc
from modules.hashes import HashCache
from modules.offload import OffloadManager
from modules.patching import WeightPatcher

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """A checkpoint on disk (a single file or a diffusers folder)."""

    path: Path
    name: str  # relative to the checkpoint folder, with extension: "sub/model.safetensors"
    sha256: str | None = None
    legacy_hash: str | None = None  # A1111's pre-2023 8-digit hash, still found in old infotexts

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def model_name(self) -> str:
        """A1111's ``model_name``: the name without extension, folders joined by ``_``."""
        return Path(self.name.replace("/", "_").replace("\\", "_")).with_suffix("").name if not self.is_folder \
            else self.name.replace("/", "_")

    @property
    def name_for_extra(self) -> str:
        """The file's stem: the ``Model:`` value in infotexts."""
        return self.path.stem if not self.is_folder else self.path.name

    @property
    def short_title(self) -> str:
        """A1111's ``short_title``, ``stem [shorthash]``: how infotexts name a hires pass's checkpoint."""
        return f"{self.name_for_extra} [{self.shorthash}]" if self.shorthash else self.name_for_extra

    def matches(self, query: str) -> bool:
        """Whether ``query`` names this checkpoint in any of the ways A1111 accepts."""
        ids = {self.title, self.name, self.model_name, self.name_for_extra, str(Path(self.name).with_suffix(""))}
        if self.sha256:
            ids |= {self.sha256, self.shorthash or "", f"{self.name} [{self.shorthash}]", self.short_title}
        if self.legacy_hash:
            ids |= {self.legacy_hash, f"{self.name} [{self.legacy_hash}]"}
        return query in ids


@dataclass
class LoadedModel:
    """A pipeline in memory with what it was loaded from and which VAE it carries."""

    info: CheckpointInfo
    pipe: object  # diffusers StableDiffusionPipeline
    vae: sd_vae.VaeChoice = field(default_factory=sd_vae.VaeChoice.baked)
    baked_vae_state: dict[str, torch.Tensor] | None = None  # the checkpoint's own VAE, kept once replaced
    patchers: dict[str, WeightPatcher] = field(default_factory=dict)  # "unet", "text_encoder"
    offload: OffloadManager | None = None  # --medvram / --lowvram placement
    parked: bool = False  # waiting in RAM (cached but not in use, or unloaded by /sdapi/v1/unload-checkpoint)
    cond_cache: ConditioningCache = field(default_factory=ConditioningCache)
    extras: dict[str, object] = field(default_factory=dict)  # per-model data of extensions (e.g. LoRA key maps)

    @property
    def text_encoder_state(self) -> object:
        """What is patched into the text encoder now (cached conditioning is keyed on it)."""
        patcher = self.patchers.get("text_encoder")
        return patcher.state_key if patcher is not None else ()


def legacy_model_hash(path: Path) -> str:
    """A1111's old 8-digit hash: sha256 of 64 KiB read at offset 1 MiB."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def list_checkpoints(ckpt_dir: Path, extra: Path | None, hashes: HashCache) -> list[CheckpointInfo]:
    """Every checkpoint under ``ckpt_dir`` (sorted by name) plus ``extra`` (``--ckpt``), with cached hashes."""
    found: dict[Path, str] = {}
    if ckpt_dir.is_dir():
        for path in sorted(ckpt_dir.rglob("*")):
            if any(part.startswith(".") for part in path.relative_to(ckpt_dir).parts):
                continue
            if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES and not _is_vae_file(path):
                found[path] = path.relative_to(ckpt_dir).as_posix()
            elif path.is_dir() and (path / "model_index.json").is_file():
                found[path] = path.relative_to(ckpt_dir).as_posix()
    if extra is not None and extra.exists() and extra not in found:
        found[extra] = extra.name
    infos = []
    for path, name in found.items():
        cached = hashes.cached(path) if path.is_file() else None
        infos.append(CheckpointInfo(path=path, name=name, sha256=cached))
    return sorted(infos, key=lambda i: i.name.lower())


def _is_vae_file(path: Path) -> bool:
    return ".vae." in path.name.lower()


_CHECKSUM = re.compile(r"\s*\[[0-9a-fA-F]{8,10}\]$")  # a title's " [shorthash]" (A1111's re_strip_checksum)


class CheckpointNotFoundError(LookupError):
    """No checkpoint matches what was asked for."""


class ModelManager:
    """Owns the checkpoint list and the loaded pipelines. All methods are thread-safe."""

    def __init__(self, ckpt_dir: Path, vae_dir: Path, extra_ckpt: Path | None, policy: DevicePolicy,
                 hashes: HashCache, no_hashing: bool = False) -> None:
        self.ckpt_dir = ckpt_dir
        self.vae_dir = vae_dir
        self.extra_ckpt = extra_ckpt
        self.policy = policy
        self.hashes = hashes
        self.no_hashing = no_hashing
        self.cache_limit = 1
        self._extra_slots = 0  # held by jobs that use two checkpoints (see two_at_once)
        self._lock = threading.RLock()
        self._checkpoints: list[CheckpointInfo] = []
        self._loaded: OrderedDict[Path, LoadedModel] = OrderedDict()  # most recently used last
        self._vaes: list[sd_vae.VaeFile] = []

    # -- discovery -------------------------------------------------------------------------------------------
    def refresh(self) -> list[CheckpointInfo]:
        """Re-scan the checkpoint and VAE folders."""
        infos = list_checkpoints(self.ckpt_dir, self.extra_ckpt, self.hashes)
        with self._lock:
            hashed = {m.info.path: m.info for m in self._loaded.values()}
            self._checkpoints = [hashed.get(i.path, i) for i in infos]
            self._vaes = sd_vae.list_vaes(self.vae_dir, self.ckpt_dir)
            return list(self._checkpoints)

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._checkpoints)

    @property
    def vaes(self) -> list[sd_vae.VaeFile]:
        with self._lock:
            return list(self._vaes)

    def find(self, query: str) -> CheckpointInfo:
        """The checkpoint ``query`` names (title, name, hash, ...); a unique substring match as a last resort.

        Raises:
            CheckpointNotFoundError: listing what exists.
        """
        with self._lock:
            infos = list(self._checkpoints)
        for info in infos:
            if info.matches(query):
                return info
        partial = [i for i in infos if query and query in i.title]
        if len(partial) == 1:
            return partial[0]
        stripped = _CHECKSUM.sub("", query)  # "name [hash]" of a file whose hash is not computed yet (A1111 too)
        if stripped != query:
            for info in infos:
                if info.matches(stripped):
                    return info
        known = ", ".join(i.title for i in infos) or "none (put .safetensors files in models/Stable-diffusion)"
        raise CheckpointNotFoundError(f"checkpoint {query!r} not found; available: {known}")

    # -- loading ---------------------------------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        """The model in use (the most recently loaded or selected one)."""
        with self._lock:
            return next(reversed(self._loaded.values()), None)

    def load(self, info: CheckpointInfo) -> LoadedModel:
        """Make ``info`` the current model: from the cache if it is there, else from disk."""
        with self._lock:
            previous = self.current
            model = self._loaded.pop(info.path, None)
            if model is None:
                model = self._load_from_disk(info)  # may raise; nothing has changed yet
            self._loaded[info.path] = model
            if previous is not None and previous is not model:
                self._park(previous)
            self._trim()
            self._activate(model)
            return model

    def in_use(self) -> LoadedModel | None:
        """The current model ready to compute: brought back to its device when it was unloaded to RAM. Jobs (on
        the queue's worker) use this; listings use :attr:`current`, which never moves anything."""
        with self._lock:
            model = self.current
            if model is not None and model.parked:
                self._activate(model)
                logger.info("Checkpoint back on %s: %s", self.policy.device, model.info.title)
            return model

    def unload_to_ram(self) -> LoadedModel | None:
        """A1111's "Unload SD checkpoint to RAM" (``POST /sdapi/v1/unload-checkpoint``): the current model leaves
        the GPU but stays loaded, so the next job (or :meth:`in_use`) brings it back without reading the file.
        Patched networks stay patched (the weights move with their deltas). Returns the model, if any."""
        with self._lock:
            model = self.current
            if model is not None and not model.parked:
                self._park(model)
                logger.info("Checkpoint unloaded to RAM: %s", model.info.title)
        torch_gc()
        return model

    def reload_to_device(self, wanted: str) -> LoadedModel | None:
        """A1111's "Load SD checkpoint to VRAM" (``POST /sdapi/v1/reload-checkpoint``): the current model back on
        its device; when none is loaded yet (``--skip-load-model-at-start``), the checkpoint ``wanted`` names.

        Raises:
            CheckpointNotFoundError: nothing is loaded and ``wanted`` names no checkpoint here.
        """
        with self._lock:
            model = self.in_use()
            if model is None and wanted:
                model = self.load(self.find(wanted))
            return model

    @contextlib.contextmanager
    def two_at_once(self) -> Iterator[None]:
        """For a job that runs on two checkpoints (a hires pass on another one): both stay cached while it runs,
        even beyond ``sd_checkpoints_limit``, so switching between them never reads a file twice in one job. The
        one not in use waits in RAM as usual; the limit applies again when the block ends."""
        with self._lock:
            self._extra_slots += 1
        try:
            yield
        finally:
            with self._lock:
                self._extra_slots -= 1
                self._trim()

    def _trim(self) -> None:
        """Drop the least recently used pipelines beyond the cache limit (the current one is never dropped)."""
        while len(self._loaded) > max(1, self.cache_limit + self._extra_slots):
            _, dropped = self._loaded.popitem(last=False)
            logger.info("Unloaded checkpoint from cache: %s", dropped.info.title)

    def _load_from_disk(self, info: CheckpointInfo) -> LoadedModel:
        start = time.perf_counter()
        if not self.no_hashing and info.path.is_file():
            info = replace(info, sha256=self.hashes.sha256(info.path), legacy_hash=legacy_model_hash(info.path))
            self._checkpoints = [info if i.path == info.path else i for i in self._checkpoints]
        if info.is_folder:
            pipe = model_loading.load_diffusers_folder(info.path)
        else:
            state_dict = model_loading.read_state_dict(info.path)
            model_loading.check_sd1(state_dict, info.path.name)
            config = model_loading.read_sidecar_config(info.path) or model_loading.default_config(state_dict)
            pipe = model_loading.build_pipeline(state_dict, config, info.path.name)
            del state_dict
        logger.info("Loaded checkpoint: title=%s time=%.2fs", info.title, time.perf_counter() - start)
        placement = patch_devices(self.policy)
        patchers = {name: WeightPatcher(getattr(pipe, name), placement.backup, placement.compute, placement.keep_staged)
                    for name in ("unet", "text_encoder")}
        return LoadedModel(info=info, pipe=pipe, patchers=patchers)

    def _activate(self, model: LoadedModel) -> None:
        """Put the model's components where the memory mode wants them, in the policy's dtypes; set up attention,
        channels-last and compilation once per model."""
        pipe, policy = model.pipe, self.policy
        model.parked = False
        if model.offload is None:
            for module, dtype in ((pipe.unet, policy.dtype), (pipe.text_encoder, policy.dtype),
                                  (pipe.vae, policy.vae_dtype)):
                target = policy.device if policy.memory_mode == "normal" else torch.device("cpu")
                if module.dtype != dtype or module.device != target:
                    module.to(device=target, dtype=dtype)
            for patcher in model.patchers.values():
                patcher.follow_weights()
            if policy.memory_mode != "normal":
                model.offload = OffloadManager(pipe, policy)
        if not model.extras.get("device_setup"):
            apply_attention(pipe.unet, policy)
            if policy.channels_last:
                pipe.unet.to(memory_format=torch.channels_last)
            if policy.compile:  # weights are patched in place later, so LoRA switches never recompile
                mode = "reduce-overhead" if policy.is_cuda and policy.compile_backend == "inductor" else None
                pipe.unet.compile(backend=policy.compile_backend, mode=mode)
            model.extras["device_setup"] = True

    def _park(self, model: LoadedModel) -> None:
        """A model that stays cached but is not in use waits in RAM, not VRAM."""
        model.parked = True
        model.cond_cache.clear()  # encoded prompts live on the compute device; re-encoding one is cheap
        if model.offload is not None:
            model.offload.release()
        elif self.policy.is_cuda:
            model.pipe.to("cpu")
            for patcher in model.patchers.values():
                patcher.follow_weights()

    def upcast_vae(self, model: LoadedModel) -> None:
        """Switch the model's VAE to fp32 for good (A1111's automatic answer to NaNs in an fp16 VAE)."""
        with self._lock:
            parked = model.offload.parked.pop("vae", None) if model.offload is not None else None
            if parked is not None:
                parked.restore()
            model.pipe.vae.to(dtype=torch.float32)
            if parked is not None:
                model.offload.park("vae", model.pipe.vae)

    # -- VAE -------------------------------------------------------------------------------------------------
    def apply_vae(self, model: LoadedModel, setting: str, forced_path: Path | None = None) -> None:
        """Give ``model`` the VAE that ``setting`` ("Automatic", "None" or a VAE name) selects."""
        with self._lock:
            choice = sd_vae.resolve(setting, model.info.path, self._vaes, forced_path)
            if choice == model.vae:
                return
            vae = model.pipe.vae
            if model.baked_vae_state is None:
                model.baked_vae_state = {k: v.detach().to("cpu", copy=True) for k, v in vae.state_dict().items()}
            if choice.path is None:
                state = model.baked_vae_state
            else:
                state = sd_vae.load_vae_weights(choice.path, dict(vae.config))
            sd_vae.copy_weights(vae, state)
            if choice.path is not None and not self.no_hashing:
                choice = replace(choice, sha256=self.hashes.sha256(choice.path))
            model.vae = choice
            logger.info("Using VAE: %s", choice.label)
