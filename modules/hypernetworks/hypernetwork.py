"""A1111's hypernetwork ``.pt`` format and the small MLPs it holds.

A hypernetwork file is a ``torch.save``\\d dict. Every **int** key is an attention context width (SD1: 768 for
cross-attention, 320/640/1280 for self-attention) mapping to a ``(k_state_dict, v_state_dict)`` pair; the string keys
describe how the MLPs are built (see :class:`HypernetworkSpec`). Each MLP is a ``torch.nn.Sequential`` in which
*every* module takes an index — activations, LayerNorms and Dropouts too — so a file's keys (``linear.{i}.weight``)
depend on its structure. A1111 stored the Sequential as the attribute ``linear`` of its module; we keep plain
Sequentials and add/remove that ``linear.`` prefix when reading and writing.

A module transforms a context ``x`` into ``x + mlp(x) * multiplier`` (eval mode: dropout does nothing). Several
hypernetworks chain: each one's K output feeds the next one's K module, V likewise (:func:`apply_hypernetworks`).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from modules.model_loading import ModelFileError, read_pickle_object

#: Activation names A1111 accepts: its own short table (``swish`` is *Hardswish*, ``linear`` is none) plus every
#: class of ``torch.nn.modules.activation`` under its lower-cased name (``gelu``, ``mish``, ``silu``, ``glu``, ...).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    **{attr.lower(): obj for attr, obj in vars(torch.nn.modules.activation).items()
       if isinstance(obj, type) and obj.__module__ == "torch.nn.modules.activation"},
}
WEIGHT_INITIALIZATIONS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
Pair = tuple[nn.Sequential, nn.Sequential]
#: NovelAI-era files named the two Linears of the default ``[1, 2, 1]`` structure ``linear1``/``linear2``.
_OLD_KEYS = {"linear1.weight": "0.weight", "linear1.bias": "0.bias",
             "linear2.weight": "1.weight", "linear2.bias": "1.bias"}


class HypernetworkFileError(ModelFileError):
    """A hypernetwork file that cannot be used; the message names the file and the problem."""


def derived_dropout_structure(layer_structure: Sequence[float], use_dropout: bool,
                              last_layer_dropout: bool) -> list[float]:
    """Dropout per layer for files without ``dropout_structure``: ``[0, 0.3, ..., 0.3 or 0, 0]`` (A1111's rule)."""
    if not use_dropout:
        return [0.0] * len(layer_structure)
    return [0.0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0.0] + [0.0]


@dataclass(frozen=True, slots=True)
class HypernetworkSpec:
    """How each K/V MLP is built — the string keys of the file.

    ``dropout_structure=None`` is derived from ``use_dropout``/``last_layer_dropout``; a structure with any
    non-zero value forces ``use_dropout`` on, as A1111 does when loading.
    """

    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation_func: str | None = None
    add_layer_norm: bool = False
    use_dropout: bool = False
    dropout_structure: tuple[float, ...] | None = None
    activate_output: bool = False
    last_layer_dropout: bool = False
    weight_initialization: str = "Normal"

    def __post_init__(self) -> None:
        ls = tuple(float(x) for x in self.layer_structure)
        if len(ls) < 2 or ls[0] != 1 or ls[-1] != 1:
            raise ValueError(f"layer_structure {list(ls)} must start and end with 1 (e.g. [1, 2, 1])")
        if self.activation_func is not None and (not isinstance(self.activation_func, str)
                                                 or self.activation_func not in ACTIVATIONS):
            raise ValueError(f"unsupported activation function {self.activation_func!r}; "
                             f"A1111 knows: {', '.join(sorted(ACTIVATIONS))}")
        drop = self.dropout_structure
        drop = tuple(derived_dropout_structure(ls, self.use_dropout, self.last_layer_dropout) if drop is None
                     else (float(x) for x in drop))
        if len(drop) < len(ls):
            raise ValueError(f"dropout_structure {list(drop)} is shorter than layer_structure {list(ls)}")
        if any(not p < 1 for p in drop[1:len(ls)] if p > 0):
            raise ValueError(f"dropout_structure {list(drop)}: a dropout probability must be 0 or in (0, 1)")
        object.__setattr__(self, "layer_structure", ls)
        object.__setattr__(self, "dropout_structure", drop)
        object.__setattr__(self, "use_dropout", bool(self.use_dropout or any(drop)))

    @classmethod
    def from_file(cls, data: Mapping[object, object]) -> HypernetworkSpec:
        """The spec of a loaded file dict, with A1111's defaults for missing keys (``activate_output`` True and
        ``last_layer_dropout`` False when loading; the creation defaults differ)."""
        return cls(
            layer_structure=tuple(data.get("layer_structure") or (1, 2, 1)),
            activation_func=data.get("activation_func"),
            add_layer_norm=bool(data.get("is_layer_norm", False)),
            use_dropout=bool(data.get("use_dropout", False)),
            dropout_structure=None if data.get("dropout_structure") is None else tuple(data["dropout_structure"]),
            activate_output=bool(data.get("activate_output", True)),
            last_layer_dropout=bool(data.get("last_layer_dropout", False)),
            weight_initialization=str(data.get("weight_initialization") or "Normal"),
        )

    def build(self, dim: int) -> nn.Sequential:
        """A fresh MLP for context width ``dim``, in A1111's module order: for each Linear, then its activation
        (none after the last Linear unless ``activate_output``), LayerNorm, Dropout (when its p > 0)."""
        ls, drop = self.layer_structure, self.dropout_structure
        modules: list[nn.Module] = []
        for i in range(len(ls) - 1):
            width = int(dim * ls[i + 1])
            modules.append(nn.Linear(int(dim * ls[i]), width))
            last = i == len(ls) - 2
            if self.activation_func not in (None, "linear") and (self.activate_output or not last):
                modules.append(_instantiate(self.activation_func))
            if self.add_layer_norm:
                modules.append(nn.LayerNorm(width))
            if drop[i + 1] > 0:
                modules.append(nn.Dropout(p=drop[i + 1]))
        return nn.Sequential(*modules).eval()

    def initialize(self, mlp: nn.Sequential) -> None:
        """A1111's initialisation of a new MLP: LayerNorms and ``Normal`` Linears get N(0, 0.01) weights, the
        others Xavier/Kaiming (``leaky_relu`` gain for leakyrelu, else ``relu``); every bias is zero."""
        gain = "leaky_relu" if self.activation_func == "leakyrelu" else "relu"
        init = {
            "XavierUniform": nn.init.xavier_uniform_, "XavierNormal": nn.init.xavier_normal_,
            "KaimingUniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity=gain),
            "KaimingNormal": lambda w: nn.init.kaiming_normal_(w, nonlinearity=gain),
        }
        if self.weight_initialization not in WEIGHT_INITIALIZATIONS:
            raise ValueError(f"unknown weight initialization {self.weight_initialization!r}; "
                             f"choose one of {', '.join(WEIGHT_INITIALIZATIONS)}")
        with torch.no_grad():
            for layer in mlp:
                if type(layer) not in (nn.Linear, nn.LayerNorm):
                    continue
                if self.weight_initialization == "Normal" or type(layer) is nn.LayerNorm:
                    nn.init.normal_(layer.weight, mean=0.0, std=0.01)
                else:
                    init[self.weight_initialization](layer.weight)
                nn.init.zeros_(layer.bias)


def _instantiate(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except TypeError as e:  # Threshold, MultiheadAttention: A1111 builds them without arguments and fails too
        raise ValueError(f"activation function {name!r} cannot be built without arguments ({e})") from e


@dataclass(eq=False)
class Hypernetwork:
    """One hypernetwork: its ``(k, v)`` MLPs by context width, how they are built, and the file's metadata.

    ``name`` is the file's internal ``name`` key when it has one (A1111), else the file stem; the prompt tag
    looks files up by stem (see ``library.py``).
    """

    name: str
    spec: HypernetworkSpec
    layers: dict[int, Pair]
    step: int = 0
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    optional_info: str | None = None
    filename: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)  # unknown string keys, written back by save()

    @property
    def dims(self) -> frozenset[int]:
        """The context widths this hypernetwork transforms."""
        return frozenset(self.layers)

    @property
    def device(self) -> torch.device:
        """Where its MLPs are (all on one device)."""
        for k_mlp, _ in self.layers.values():
            return k_mlp[0].weight.device  # every MLP starts with a Linear
        return torch.device("cpu")

    @classmethod
    def create(cls, name: str, sizes: Sequence[int], spec: HypernetworkSpec = HypernetworkSpec()) -> Hypernetwork:
        """A new hypernetwork with A1111's initial weights (``torch``'s global RNG) for the widths ``sizes``."""
        layers: dict[int, Pair] = {}
        for size in sizes:
            pair = (spec.build(int(size)), spec.build(int(size)))
            for mlp in pair:
                spec.initialize(mlp)
                mlp.requires_grad_(False)
            layers[int(size)] = pair
        return cls(name=name, spec=spec, layers=layers)

    @classmethod
    def load(cls, path: Path) -> Hypernetwork:
        """Read an A1111 ``.pt`` hypernetwork safely (tensors and plain containers only; nothing in it runs).

        Raises:
            ModelFileError: the file is unreadable, corrupt, unsafe, or not a usable hypernetwork (the message
                names the file and the problem).
        """
        data = read_pickle_object(path, kind="hypernetwork")
        try:
            hypernetwork = cls.from_dict(data, default_name=path.stem)
        except (ValueError, TypeError) as e:  # TypeError: a key of the wrong type (e.g. "step": [..])
            raise HypernetworkFileError(f"{path.name} is not a usable hypernetwork: {e}") from e
        hypernetwork.filename = path
        return hypernetwork

    @classmethod
    def from_dict(cls, data: object, default_name: str) -> Hypernetwork:
        """Build from a file's dict. Raises ``ValueError`` saying what is wrong with it."""
        if not isinstance(data, Mapping):
            raise ValueError(f"it holds a {type(data).__name__}, not a dict")
        if "string_to_param" in data or "emb_params" in data:
            raise ValueError("it is a textual-inversion embedding; put it in the embeddings folder")
        sizes = [k for k in data if type(k) is int]
        if not sizes:
            raise ValueError("it has no layers (no integer keys such as 768 or 320)")
        spec = HypernetworkSpec.from_file(data)
        layers = {size: _load_pair(spec, size, data[size]) for size in sizes}
        known = {"layer_structure", "activation_func", "is_layer_norm", "use_dropout", "dropout_structure",
                 "activate_output", "last_layer_dropout", "weight_initialization", "name", "step", "sd_checkpoint",
                 "sd_checkpoint_name", "optional_info"}
        return cls(
            name=str(data.get("name") or default_name), spec=spec, layers=layers, step=int(data.get("step") or 0),
            sd_checkpoint=data.get("sd_checkpoint"), sd_checkpoint_name=data.get("sd_checkpoint_name"),
            optional_info=data.get("optional_info"),
            extra={k: v for k, v in data.items() if isinstance(k, str) and k not in known},
        )

    def to_dict(self) -> dict[object, object]:
        """The dict A1111's ``Hypernetwork.save`` writes (state dicts on the CPU, keys ``linear.{i}.*``)."""
        out: dict[object, object] = dict(self.extra)
        for size, (k_mlp, v_mlp) in self.layers.items():
            out[size] = (_file_state_dict(k_mlp), _file_state_dict(v_mlp))
        spec = self.spec
        out.update({
            "step": self.step, "name": self.name, "layer_structure": list(spec.layer_structure),
            "activation_func": spec.activation_func, "is_layer_norm": spec.add_layer_norm,
            "weight_initialization": spec.weight_initialization, "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name, "activate_output": spec.activate_output,
            "use_dropout": spec.use_dropout, "dropout_structure": list(spec.dropout_structure),
            "last_layer_dropout": spec.dropout_structure[-2] != 0,
            "optional_info": self.optional_info or None,
        })
        return out

    def save(self, path: Path) -> None:
        """Write the file in A1111's format (readable by A1111 and by :meth:`load`)."""
        torch.save(self.to_dict(), path)

    def to(self, device: torch.device | str) -> Hypernetwork:
        """Move every MLP to ``device`` (they stay float32, as in A1111)."""
        for pair in self.layers.values():
            for mlp in pair:
                mlp.to(device)
        return self


def _load_pair(spec: HypernetworkSpec, size: int, value: object) -> Pair:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, Mapping) for v in value)):
        raise ValueError(f"the entry for width {size} is not a (k, v) pair of state dicts")
    pair = (spec.build(size), spec.build(size))
    for which, mlp, state in zip("kv", pair, value):
        state = {_module_key(key): tensor for key, tensor in state.items()}
        if not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise ValueError(f"the {which} state dict for width {size} holds something that is not a tensor")
        try:
            mlp.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"the {which} layers for width {size} do not match layer_structure {list(spec.layer_structure)}, "
                f"activation {spec.activation_func!r}, layer norm {spec.add_layer_norm}, dropout "
                f"{list(spec.dropout_structure)}: {str(e).splitlines()[0]} {_mismatch(mlp, state)}") from e
        mlp.requires_grad_(False)
        try:  # catches structures A1111 would only fail on at generation time (e.g. glu halves the width)
            with torch.no_grad():
                apply_module(mlp, torch.zeros(1, 1, size), 1.0)
        except RuntimeError as e:
            raise ValueError(f"the layers for width {size} cannot run: {str(e).splitlines()[0]}") from e
    return pair


def _module_key(key: object) -> str:
    key = str(key)
    key = _OLD_KEYS.get(key, key)
    return key.removeprefix("linear.")


def _mismatch(mlp: nn.Sequential, state: Mapping[str, torch.Tensor]) -> str:
    expected, found = set(mlp.state_dict()), set(state)
    return f"(expected keys {sorted(expected - found)} missing, unexpected {sorted(found - expected)})"


def _file_state_dict(mlp: nn.Sequential) -> collections.OrderedDict[str, torch.Tensor]:
    state = mlp.state_dict()
    return collections.OrderedDict(
        (f"linear.{key}", tensor.detach().to("cpu", copy=True).contiguous()) for key, tensor in state.items())


def apply_module(mlp: nn.Sequential, x: torch.Tensor, multiplier: float) -> torch.Tensor:
    """A1111's ``HypernetworkModule.forward``: ``x + mlp(x) * multiplier``, computed in the MLP's dtype (float32)
    and returned in ``x``'s dtype."""
    weight = next(mlp.parameters())
    xf = x.to(device=weight.device, dtype=weight.dtype)
    return (xf + mlp(xf) * multiplier).to(device=x.device, dtype=x.dtype)


def apply_hypernetworks(entries: Sequence[tuple[Hypernetwork, float]],
                        context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The K and V contexts: each hypernetwork in order transforms the previous one's output, for the widths it
    has (A1111's ``apply_hypernetworks``). Returns ``(context, context)`` when none has this width."""
    context_k = context_v = context
    for hypernetwork, multiplier in entries:
        pair = hypernetwork.layers.get(context.shape[-1])
        if pair is not None:
            context_k = apply_module(pair[0], context_k, multiplier)
            context_v = apply_module(pair[1], context_v, multiplier)
    return context_k, context_v


def is_affine(mlp: nn.Sequential) -> bool:
    """Whether ``mlp`` is an affine map: only Linears (and Dropouts/Identities in eval mode, which do nothing) —
    A1111's default ``linear`` activation without layer norm."""
    return all(isinstance(m, nn.Linear) or (isinstance(m, (nn.Dropout, nn.Identity)) and not m.training)
               for m in mlp)
