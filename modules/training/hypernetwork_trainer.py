"""Hypernetworks: A1111's "Create hypernetwork" and "Train hypernetwork", on :mod:`modules.hypernetworks`.

Creating builds a :class:`~modules.hypernetworks.hypernetwork.Hypernetwork` with the tab's options (sizes, layer
structure, activation, layer norm, dropout, initialization) and writes A1111's ``.pt`` through its own
``to_dict`` — the format the hypernetwork library loads. Training installs the hypernetwork's attention processors
(:func:`modules.hypernetworks.processor.install`, undone exactly afterwards), optimises its MLPs with AdamW
(weight decay 0.01, torch's default, as A1111) and saves to ``<hypernetwork dir>/<name>.pt``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from modules.hypernetworks.hypernetwork import Hypernetwork, HypernetworkSpec
from modules.hypernetworks.processor import install
from modules.model_loading import ModelFileError
from modules.training.embedding_trainer import checkpoint_ids, clean_name
from modules.training.runner import TrainingError, TrainResult, TrainSettings, atomic_write, check_new_file, train

logger = logging.getLogger(__name__)

#: The "Modules" checkbox choices and default of A1111's Create-hypernetwork tab.
SIZE_CHOICES = (768, 1024, 320, 640, 1280)
DEFAULT_SIZES = (768, 320, 640, 1280)


def parse_floats(text: str | Sequence[float] | None, what: str) -> list[float] | None:
    """``"1, 2, 1"`` → ``[1.0, 2.0, 1.0]`` (a list passes through); a clear error naming the field otherwise."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        try:
            return [float(x) for x in text]
        except (TypeError, ValueError) as e:
            raise TrainingError(f"{what} must be numbers; got {text!r}") from e
    try:
        return [float(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise TrainingError(f"{what} must be comma-separated numbers like \"1, 2, 1\"; got {text!r}") from e


def context_widths(model) -> list[int]:
    """The attention context widths of ``model``'s UNet (SD1: 768 and 320/640/1280), for the Modules choices."""
    widths = {int(m.to_k.in_features) for name, m in model.pipe.unet.named_modules()
              if hasattr(m, "to_k") and hasattr(m.to_k, "in_features")}
    return sorted(widths)


def create_hypernetwork(state, name: str, enable_sizes: Sequence[int | str] = DEFAULT_SIZES,
                        overwrite_old: bool = False, layer_structure: str | Sequence[float] | None = "1, 2, 1",
                        activation_func: str | None = "linear", weight_init: str | None = "Normal",
                        add_layer_norm: bool = False, use_dropout: bool = False,
                        dropout_structure: str | Sequence[float] | None = "0, 0, 0") -> Path:
    """Write ``<hypernetwork dir>/<name>.pt`` with A1111's options; returns the file.

    As A1111, the dropout structure is used only with ``use_dropout``; otherwise it is all zeros.

    Raises:
        TrainingError: an empty name, an existing file without ``overwrite_old``, a bad structure or option.
    """
    name = clean_name(name)
    path = state.paths.hypernetwork_dir / f"{name}.pt"
    check_new_file(path, overwrite_old, "hypernetwork")
    try:
        sizes = [int(s) for s in enable_sizes]
    except (TypeError, ValueError) as e:
        raise TrainingError(f"modules must be context widths such as 768, 320; got {enable_sizes!r}") from e
    if not sizes:
        raise TrainingError("choose at least one module size (768, 320, 640, 1280...)")
    layers = parse_floats(layer_structure, "layer structure") or [1.0, 2.0, 1.0]
    drop = parse_floats(dropout_structure, "dropout structure") if use_dropout else None
    if not drop:
        drop = [0.0] * len(layers)
    try:
        spec = HypernetworkSpec(layer_structure=tuple(layers), activation_func=activation_func or None,
                                add_layer_norm=bool(add_layer_norm), use_dropout=bool(use_dropout),
                                dropout_structure=tuple(drop), weight_initialization=weight_init or "Normal")
        hypernetwork = Hypernetwork.create(name, sizes, spec)
    except ValueError as e:
        raise TrainingError(f"cannot create hypernetwork {name}: {e}") from e
    atomic_write(path, hypernetwork.save)
    library = state.libraries.get("hypernet")
    if library is not None:
        library.refresh()
    logger.info("Created hypernetwork %s (sizes %s, structure %s) at %s", name, sizes, layers, path)
    return path


class HypernetworkTrainable:
    """The runner's view of a hypernetwork under training."""

    kind = "hypernetworks"
    suffix = ".pt"

    def __init__(self, hypernetwork: Hypernetwork, final_path: Path, embeddings: object | None) -> None:
        self.hypernetwork = hypernetwork
        self.name = hypernetwork.name
        self.final_path = final_path
        self.embeddings = embeddings
        for pair in hypernetwork.layers.values():
            for mlp in pair:
                mlp.requires_grad_(True)

    @property
    def step(self) -> int:
        return self.hypernetwork.step

    @step.setter
    def step(self, value: int) -> None:
        self.hypernetwork.step = value

    def param_groups(self) -> list[dict]:
        params = [p for pair in self.hypernetwork.layers.values() for mlp in pair for p in mlp.parameters()]
        return [{"params": params, "weight_decay": 0.01}]

    @contextmanager
    def activate(self, model) -> Iterator[None]:
        installed = install(model.pipe.unet, [(self.hypernetwork, 1.0)])
        if not installed.wrapped:
            installed.restore()
            widths = ", ".join(str(w) for w in context_widths(model))
            raise TrainingError(f"hypernetwork {self.name} has layers for widths "
                                f"{', '.join(str(d) for d in sorted(self.hypernetwork.dims))}, none of which this "
                                f"model has (it has {widths}); create it with those sizes")
        try:
            yield
        finally:
            installed.restore()

    def conditioning(self, encode, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():  # the text encoder is not trained: no graph needed
            return encode(prompts, self.embeddings)

    def set_training(self, on: bool) -> None:
        for pair in self.hypernetwork.layers.values():
            for mlp in pair:
                mlp.train(on)

    def write(self, path: Path) -> None:
        self.hypernetwork.save(path)


def train_hypernetwork(state, hypernetwork_name: str, settings: TrainSettings) -> TrainResult:
    """Train the hypernetwork ``hypernetwork_name`` (from ``--hypernetwork-dir``) and save it back; run on the queue."""
    model = state.models.in_use()
    if model is None:
        raise TrainingError("no model is loaded; load a checkpoint first")
    library = state.libraries.get("hypernet")
    path = library.find(hypernetwork_name) if library is not None else None
    if path is None:
        raise TrainingError(f"hypernetwork {hypernetwork_name!r} not found in {state.paths.hypernetwork_dir}; "
                            "create it first")
    try:
        hypernetwork = Hypernetwork.load(path)  # a private copy: the library's cached one stays as it is on disk
    except ModelFileError as e:
        raise TrainingError(str(e)) from e
    hypernetwork.name = hypernetwork_name
    hypernetwork.sd_checkpoint, hypernetwork.sd_checkpoint_name = checkpoint_ids(model)
    final = state.paths.hypernetwork_dir / f"{hypernetwork_name}.pt"
    if state.embeddings is not None:
        state.embeddings.refresh(model.pipe.text_encoder.config.hidden_size)
    trainable = HypernetworkTrainable(hypernetwork, final, state.embeddings)
    result = train(state, trainable, settings)
    library.refresh()
    return result
