"""Every folder and file the web UI reads or writes, derived once from the command line.

A1111 layout: everything user-owned lives under ``--data-dir`` (default: the program folder), models under
``<data-dir>/models`` (or ``--models-dir``), and each ``--*-dir`` flag overrides one library folder.
Nothing here touches the disk except :meth:`Paths.create_dirs`, which ``webui.py`` calls at start.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

#: The folder holding webui.py, configs/ and modules/.
SCRIPT_DIR = Path(__file__).resolve().parent.parent

#: Offline configuration files (SD1.5 component configs and the CLIP tokenizer).
CONFIGS_DIR = SCRIPT_DIR / "configs"


@dataclass(frozen=True, slots=True)
class Paths:
    """Resolved folders and files. Build it with :meth:`from_args`."""

    data_dir: Path
    models_dir: Path
    ckpt_dir: Path
    vae_dir: Path
    lora_dir: Path
    lyco_dir: Path
    hypernetwork_dir: Path
    embeddings_dir: Path
    outputs_dir: Path
    settings_file: Path
    cache_file: Path
    styles_files: tuple[Path, ...]
    params_file: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Paths:
        """Derive every path from parsed flags (see ``modules.cmd_args``)."""
        data = _path(args.data_dir) or SCRIPT_DIR
        models = _path(args.models_dir) or data / "models"
        styles = tuple(Path(p).expanduser() for p in (args.styles_file or [])) or (data / "styles.csv",)
        return cls(
            data_dir=data,
            models_dir=models,
            ckpt_dir=_path(args.ckpt_dir) or models / "Stable-diffusion",
            vae_dir=_path(args.vae_dir) or models / "VAE",
            lora_dir=_path(args.lora_dir) or models / "Lora",
            lyco_dir=_path(args.lyco_dir_backcompat) or models / "LyCORIS",
            hypernetwork_dir=_path(args.hypernetwork_dir) or models / "hypernetworks",
            embeddings_dir=_path(args.embeddings_dir) or data / "embeddings",
            outputs_dir=data / "outputs",
            settings_file=_path(args.ui_settings_file) or data / "config.json",
            cache_file=data / "cache.json",
            styles_files=styles,
            params_file=data / "params.txt",
        )

    def create_dirs(self) -> None:
        """Create the library folders a new user expects to find (not the optional LyCORIS one)."""
        for name in ("ckpt_dir", "vae_dir", "lora_dir", "hypernetwork_dir", "embeddings_dir", "outputs_dir"):
            getattr(self, name).mkdir(parents=True, exist_ok=True)

    def as_dict(self) -> dict[str, str]:
        """All paths as strings, for logs and /sdapi/v1/cmd-flags."""
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser().resolve() if value else None


def resolve_inside(root: Path, name: str) -> Path:
    """Resolve ``name`` relative to ``root`` and refuse anything that escapes it.

    Names that come from users or HTTP requests (a checkpoint title, a VAE file) must stay inside their
    library: ``../``, absolute paths and symlinks that lead out are refused.

    Raises:
        ValueError: naming the offending value.
    """
    root = root.resolve()
    candidate = (root / name).resolve()
    if candidate != root and root not in candidate.parents:
        raise ValueError(f"{name!r} is outside {root}; give a name relative to that folder")
    return candidate
