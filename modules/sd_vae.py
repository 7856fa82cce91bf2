"""VAE files and A1111's VAE choice: "Automatic", "None" or a file from models/VAE.

* Files: ``models/VAE`` (recursive: ``.pt``, ``.ckpt``, ``.safetensors``) and ``*.vae.{pt,ckpt,safetensors}``
  beside checkpoints. A VAE is named by its file name, as in A1111's ``sd_vae`` setting.
* "Automatic": a VAE named like the checkpoint (``model.vae.safetensors`` beside it, or ``model.*`` in
  models/VAE), else the checkpoint's own. "None": always the checkpoint's own.
* ``--vae-path`` forces one file and overrides the setting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from modules import model_loading

logger = logging.getLogger(__name__)

VAE_SUFFIXES = (".pt", ".ckpt", ".safetensors")


@dataclass(frozen=True, slots=True)
class VaeFile:
    """A VAE on disk, named by its file name."""

    path: Path
    name: str


@dataclass(frozen=True, slots=True)
class VaeChoice:
    """Which VAE a model carries: ``path=None`` means the checkpoint's own (baked) VAE."""

    path: Path | None
    source: str  # "baked", "automatic", "setting" or "--vae-path"
    sha256: str | None = None

    @classmethod
    def baked(cls) -> VaeChoice:
        return cls(None, "baked")

    @property
    def label(self) -> str:
        return "checkpoint's own VAE" if self.path is None else f"{self.path.name} ({self.source})"

    def __eq__(self, other: object) -> bool:  # the hash is derived data, not identity
        return isinstance(other, VaeChoice) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)


def list_vaes(vae_dir: Path, ckpt_dir: Path) -> list[VaeFile]:
    """VAE files in ``vae_dir`` and ``*.vae.*`` files in ``ckpt_dir``, sorted by name."""
    found: dict[str, VaeFile] = {}
    for root, beside_checkpoints in ((ckpt_dir, True), (vae_dir, False)):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.suffix.lower() not in VAE_SUFFIXES:
                continue
            if beside_checkpoints and ".vae." not in path.name.lower():
                continue
            found[path.name] = VaeFile(path=path, name=path.name)
    return sorted(found.values(), key=lambda v: v.name.lower())


def resolve(setting: str, checkpoint: Path, vaes: list[VaeFile], forced: Path | None = None) -> VaeChoice:
    """The VAE a checkpoint gets under the ``sd_vae`` setting.

    Raises:
        ValueError: the setting names a VAE that does not exist (with the list of those that do).
    """
    if forced is not None:
        return VaeChoice(forced, "--vae-path")
    if setting == "None":
        return VaeChoice.baked()
    if setting != "Automatic":
        for vae in vaes:
            if vae.name == setting:
                return VaeChoice(vae.path, "setting")
        names = ", ".join(v.name for v in vaes) or "none in models/VAE"
        raise ValueError(f"VAE {setting!r} not found; choose Automatic, None or one of: {names}")
    near = _near_checkpoint(checkpoint, vaes)
    return VaeChoice(near, "automatic") if near else VaeChoice.baked()


def _near_checkpoint(checkpoint: Path, vaes: list[VaeFile]) -> Path | None:
    stem = checkpoint.with_suffix("").name if checkpoint.is_file() else checkpoint.name
    for suffix in (".vae.pt", ".vae.ckpt", ".vae.safetensors"):
        candidate = checkpoint.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    for vae in vaes:
        if vae.name.split(".")[0] == stem:
            return vae.path
    return None


def load_vae_weights(path: Path, config: dict) -> dict[str, torch.Tensor]:
    """A VAE file's weights in diffusers ``AutoencoderKL`` layout (LDM files are converted).

    Raises:
        model_loading.ModelFileError: unreadable, unsafe, or not a VAE.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = model_loading.read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(("loss.", "model_ema."))}
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state):
        return state  # already diffusers layout
    if not any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in state):
        raise model_loading.ModelFileError(f"{path.name} holds no VAE weights (no encoder./decoder. keys).")
    try:
        return convert_ldm_vae_checkpoint(state, config)
    except (KeyError, RuntimeError, ValueError) as e:
        raise model_loading.ModelFileError(f"{path.name} is not a VAE for this model ({e}).") from e


@torch.no_grad()
def copy_weights(vae: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``vae`` in place, after checking every key and shape (nothing changes on error)."""
    own = vae.state_dict()
    missing = sorted(set(own) - set(state))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise model_loading.ModelFileError(
            f"VAE weights do not fit this model (missing {missing[:3]}, wrong shape {wrong[:3]}).")
    for key, tensor in own.items():
        tensor.copy_(state[key].to(device=tensor.device, dtype=tensor.dtype))
