"""Typed settings, persisted to ``config.json`` under A1111's keys.

Each setting is declared once in :data:`OPTIONS` with its default, label and type. :class:`Options` holds the
current values, validates writes (a wrong type or an unknown choice is a clear ``ValueError``), honours
``--freeze-settings`` and calls the callbacks registered for a key when it changes (for example, setting
``sd_model_checkpoint`` loads that checkpoint). Unknown keys found in an A1111 ``config.json`` are kept and
written back untouched, so a user can share one file between the two programs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OptionInfo:
    """One setting: its default (which also fixes its type), UI label, section and allowed values."""

    default: object
    label: str
    section: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None


OPTIONS: dict[str, OptionInfo] = {
    # Stable Diffusion
    "sd_model_checkpoint": OptionInfo("", "Stable Diffusion checkpoint", "sd"),
    "sd_checkpoints_limit": OptionInfo(1, "Maximum number of checkpoints loaded at the same time", "sd", minimum=1, maximum=10),
    "sd_vae": OptionInfo("Automatic", "SD VAE", "sd"),
    "sd_vae_overrides_per_model_preferences": OptionInfo(
        True, "Selected VAE overrides per-model preferences", "sd"),
    "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip", "sd", minimum=1, maximum=12),
    "emphasis": OptionInfo("Original", "Emphasis mode", "sd", choices=("Original", "No norm", "Ignore", "None")),
    "comma_padding_backtrack": OptionInfo(20, "Prompt word wrap length limit (tokens)", "sd", minimum=0, maximum=74),
    "use_old_scheduling": OptionInfo(False, "Use old prompt editing timelines", "compatibility"),
    "textual_inversion_add_hashes_to_infotext": OptionInfo(True, "Add Textual Inversion hashes to infotext", "sd"),
    "randn_source": OptionInfo("GPU", "Random number generator source", "sd", choices=("GPU", "CPU")),
    "auto_vae_precision": OptionInfo(True, "Automatically revert VAE to 32-bit floats when it produces NaNs", "sd"),
    "vae_tiling": OptionInfo("Auto", "Decode large images in VAE tiles", "sd", choices=("Auto", "Always", "Never")),
    "eta_noise_seed_delta": OptionInfo(0, "Eta noise seed delta", "sampler", minimum=0),
    # img2img (A1111's keys and labels)
    "img2img_fix_steps": OptionInfo(False, "With img2img, do exactly the amount of steps the slider specifies",
                                    "img2img"),
    "initial_noise_multiplier": OptionInfo(1.0, "Noise multiplier for img2img", "img2img", minimum=0.0, maximum=1.5),
    "inpainting_mask_weight": OptionInfo(1.0, "Inpainting conditioning mask strength", "img2img", minimum=0.0,
                                         maximum=1.0),
    "img2img_background_color": OptionInfo("#ffffff", "With img2img, fill transparent parts of the input image with "
                                           "this color", "img2img"),
    "show_progress_every_n_steps": OptionInfo(10, "Live preview display period (steps, 0 = off)", "ui", minimum=0),
    # Prompt editing keys (A1111's keyedit_* settings, read by the page's script)
    "keyedit_precision_attention": OptionInfo(0.1, "Precision for (attention:1.1) when editing the prompt with Ctrl+up/down",
                                              "ui", minimum=0.01, maximum=0.2),
    "keyedit_precision_extra": OptionInfo(0.05, "Precision for <extra networks:0.9> when editing the prompt with Ctrl+up/down",
                                          "ui", minimum=0.01, maximum=0.2),
    "keyedit_delimiters": OptionInfo(".,\\/!?%^*;:{}=`~() ", "Word delimiters when editing the prompt with Ctrl+up/down", "ui"),
    # Extra Networks: LoRA (A1111's keys, from its Lora extension)
    "lora_preferred_name": OptionInfo("Alias from file", "When adding to prompt, refer to Lora by", "extra_networks",
                                      choices=("Alias from file", "Filename")),
    "lora_add_hashes_to_infotext": OptionInfo(True, "Add Lora hashes to infotext", "extra_networks"),
    "extra_networks_default_multiplier": OptionInfo(1.0, "Default multiplier for extra networks", "extra_networks",
                                                    minimum=0.0, maximum=2.0),
    # A1111's default is 0 (keep nothing beyond the active set). Ours counts parsed files kept on the CPU: 8 covers
    # switching between a few prompts' sets (typically 1-4 LoRAs each) without re-reading files; an SD1 LoRA is
    # ~10-150 MB, so 8 costs at most ~1 GB of RAM. 0 keeps nothing (the active networks are held by the patcher).
    "lora_in_memory_limit": OptionInfo(8, "Number of Lora networks to keep cached in memory", "extra_networks",
                                       minimum=0),
    # Saving
    "samples_save": OptionInfo(True, "Always save all generated images", "saving"),
    "samples_format": OptionInfo("png", "File format for images", "saving", choices=("png",)),
    "grid_save": OptionInfo(True, "Always save all generated image grids", "saving"),
    "return_grid": OptionInfo(True, "Show grid in gallery", "saving"),
    "save_images_add_number": OptionInfo(True, "Add number to filename when saving", "saving"),
    "save_images_before_highres_fix": OptionInfo(False, "Save a copy of image before applying highres fix.", "saving"),
    "outdir_samples": OptionInfo("", "Output directory for images; if empty, defaults to three directories below", "saving"),
    "outdir_txt2img_samples": OptionInfo("outputs/txt2img-images", "Output directory for txt2img images", "saving"),
    "outdir_txt2img_grids": OptionInfo("outputs/txt2img-grids", "Output directory for txt2img grids", "saving"),
    "outdir_img2img_samples": OptionInfo("outputs/img2img-images", "Output directory for img2img images", "saving"),
    "outdir_img2img_grids": OptionInfo("outputs/img2img-grids", "Output directory for img2img grids", "saving"),
    "directories_filename_pattern": OptionInfo("[date]", "Directory name pattern", "saving", choices=("[date]", "")),
    "enable_pnginfo": OptionInfo(True, "Save text information about generation parameters as chunks to png files", "saving"),
    # Infotext
    "add_model_hash_to_info": OptionInfo(True, "Add model hash to infotext", "infotext"),
    "add_model_name_to_info": OptionInfo(True, "Add model name to infotext", "infotext"),
    "add_vae_hash_to_info": OptionInfo(True, "Add VAE hash to infotext", "infotext"),
    "add_vae_name_to_info": OptionInfo(True, "Add VAE name to infotext", "infotext"),
    "add_version_to_infotext": OptionInfo(True, "Add program version to infotext", "infotext"),
}

ChangeCallback = Callable[[str, object], None]


class FrozenSettingsError(PermissionError):
    """A write was refused because the server runs with --freeze-settings."""


class Options:
    """The current settings. Thread-safe; read with ``opts.get(key)`` or ``opts[key]``."""

    def __init__(self, path: Path | None, frozen: bool = False) -> None:
        self._path = path
        self._frozen = frozen
        self._values: dict[str, object] = {k: v.default for k, v in OPTIONS.items()}
        self._foreign: dict[str, object] = {}
        self._callbacks: dict[str, list[ChangeCallback]] = {}
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()  # one writer of config.json at a time (UI and API threads both save)

    # -- reading -------------------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def get(self, key: str) -> Any:
        """The value of a known setting; ``KeyError`` naming the key otherwise."""
        with self._lock:
            if key not in self._values:
                raise KeyError(f"unknown setting {key!r}")
            return self._values[key]

    def as_dict(self) -> dict[str, object]:
        """Every known setting and every foreign key kept from config.json (the GET /options shape)."""
        with self._lock:
            return {**self._foreign, **self._values}

    def snapshot(self, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
        """A copy of the settings with per-job ``overrides`` validated and applied; the originals are untouched."""
        with self._lock:
            values = dict(self._values)
        for key, value in (overrides or {}).items():
            values[key] = validate(key, value)
        return values

    # -- writing -------------------------------------------------------------------------------------------
    def on_change(self, key: str, callback: ChangeCallback) -> None:
        """Call ``callback(key, new_value)`` after ``key`` changes; if it raises, the old value is restored."""
        self._callbacks.setdefault(key, []).append(callback)

    def set(self, key: str, value: object, run_callbacks: bool = True, internal: bool = False) -> bool:
        """Validate and store one setting; returns whether it changed.

        ``internal`` marks a write the server makes itself (recording which checkpoint it loaded at startup); like
        A1111, --freeze-settings refuses only the user's edits, not the server's own bookkeeping.

        Raises:
            FrozenSettingsError: with --freeze-settings, for a write that is not ``internal``.
            KeyError, ValueError: unknown key or a value of the wrong type/choice.
        """
        if self._frozen and not internal:
            raise FrozenSettingsError(f"settings are frozen (--freeze-settings); {key!r} was not changed")
        value = validate(key, value)
        with self._lock:
            old = self._values[key]
            if old == value:
                return False
            self._values[key] = value
        if run_callbacks:
            try:
                for callback in self._callbacks.get(key, []):
                    callback(key, value)
            except Exception:
                with self._lock:
                    self._values[key] = old
                raise
        return True

    def set_foreign(self, key: str, value: object) -> None:
        """Keep a key that is not one of our settings (an A1111-only one), so it round-trips through config.json."""
        if self._frozen:
            raise FrozenSettingsError(f"settings are frozen (--freeze-settings); {key!r} was not changed")
        with self._lock:
            self._foreign[key] = value

    def load(self) -> None:
        """Read config.json if it exists; invalid values are logged and replaced by defaults."""
        if self._path is None or not self._path.exists():
            return
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            logger.error("Settings file %s is unreadable (%s); using defaults. Fix or delete it.", self._path, e)
            return
        if not isinstance(data, dict):
            logger.error("Settings file %s does not hold a JSON object; using defaults.", self._path)
            return
        with self._lock:
            for key, value in data.items():
                if key not in OPTIONS:
                    self._foreign[key] = value
                    continue
                try:
                    self._values[key] = validate(key, value)
                except ValueError as e:
                    logger.warning("Ignoring setting from %s: %s", self._path, e)

    def save(self) -> None:
        """Write all settings (ours and foreign ones) to config.json atomically."""
        if self._path is None:
            return
        with self._save_lock:  # the snapshot is taken inside, so the last writer writes the latest values
            text = json.dumps(self.as_dict(), indent=4, ensure_ascii=False)
            tmp = self._path.with_suffix(self._path.suffix + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self._path)


def validate(key: str, value: object) -> object:
    """Coerce ``value`` to the type of the setting's default, or raise a ``ValueError`` that says what is wanted."""
    info = OPTIONS.get(key)
    if info is None:
        raise KeyError(f"unknown setting {key!r}")
    kind = type(info.default)
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            coerced: object = value
        elif kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            coerced = int(value)  # type: ignore[arg-type]
        elif kind is float:
            coerced = float(value)  # type: ignore[arg-type]
        else:
            if not isinstance(value, str):
                raise TypeError
            coerced = value
    except (TypeError, ValueError):
        raise ValueError(f"setting {key!r} needs a {kind.__name__}, got {value!r}") from None
    if info.choices is not None and coerced not in info.choices:
        raise ValueError(f"setting {key!r} must be one of {', '.join(info.choices)}; got {coerced!r}")
    if info.minimum is not None and coerced < info.minimum:  # type: ignore[operator]
        raise ValueError(f"setting {key!r} must be at least {info.minimum}; got {coerced!r}")
    if info.maximum is not None and coerced > info.maximum:  # type: ignore[operator]
        raise ValueError(f"setting {key!r} must be at most {info.maximum}; got {coerced!r}")
    return coerced
