"""A1111's ``<type:arg1:arg2:name=value>`` extra-network tags and the registry networks plug into.

Extraction follows A1111 1.10 exactly:

* the regex is ``<(\\w+):([^>]+)>``; every match is removed from the prompt (unknown types too, with a warning),
  nothing around it is trimmed (``"a <lora:x:1> b"`` → ``"a  b"``);
* each tag's text after the first ``:`` is split on ``:`` into items; ``k=v`` (exactly one ``=``) is a named argument;
* in a batch, every prompt is stripped of its tags but only the **first** prompt's tags are activated;
* the negative prompt is never parsed (its tags are literal text for CLIP), as in A1111.

The registry activates every registered network on every job — with ``[]`` for those the prompt does not
mention, which is how a network from the previous job gets switched off — and deactivates them in reverse
order even when the job fails, so the model is never left half-patched. While they activate, the model's weight
patchers defer their work (:meth:`~modules.patching.WeightPatcher.deferred`): the weights are patched once, after
the last network, however many network types changed the same modules.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

logger = logging.getLogger(__name__)

TAG_RE = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True, slots=True)
class ExtraNetworkParams:
    """One tag's arguments: ``<lora:name:0.8:te=0.5>`` → items ``("name", "0.8", "te=0.5")``."""

    items: tuple[str, ...]

    @property
    def positional(self) -> tuple[str, ...]:
        """Items that are not ``k=v`` (an item with two ``=`` counts as positional, as in A1111)."""
        return tuple(item for item in self.items if len(item.split("=", 2)) != 2)

    @property
    def named(self) -> dict[str, str]:
        """``k=v`` items."""
        pairs = (item.split("=", 2) for item in self.items)
        return {parts[0]: parts[1] for parts in pairs if len(parts) == 2}


NetworkData = dict[str, list[ExtraNetworkParams]]


def parse_prompt(prompt: str) -> tuple[str, NetworkData]:
    """Remove every ``<type:...>`` tag from ``prompt``; return the text and the tags by type, in order."""
    found: NetworkData = {}

    def take(match: re.Match[str]) -> str:
        found.setdefault(match.group(1), []).append(ExtraNetworkParams(tuple(match.group(2).split(":"))))
        return ""

    return TAG_RE.sub(take, prompt), found


def parse_prompts(prompts: list[str]) -> tuple[list[str], NetworkData]:
    """Strip tags from every prompt of a batch; only the first prompt's tags count (A1111's rule)."""
    stripped: list[str] = []
    data: NetworkData = {}
    for index, prompt in enumerate(prompts):
        text, found = parse_prompt(prompt)
        stripped.append(text)
        if index == 0:
            data = found
    return stripped, data


@dataclass
class ActivationContext:
    """What a network needs to apply itself to one job, and where it reports back."""

    model: Any  # sd_models.LoadedModel
    opts: Mapping[str, object]
    infotext: dict[str, str] = field(default_factory=dict)  # e.g. "Lora hashes"; ends up in the infotext
    comments: list[str] = field(default_factory=list)  # user-visible warnings ("Lora not found: x")
    #: Set by a network that changes how UNet modules compute for this job (hypernetwork attention processors),
    #: not only their weights: a compiled UNet (--opt-compile) would recompile for every such job, so the job
    #: runs it uncompiled. Weight patches (LoRA) leave it False: the compiled graph reads weights in place.
    eager_unet: bool = False


class ExtraNetwork(Protocol):
    """A network type that ``<name:...>`` tags switch on (LoRA, hypernetworks)."""

    name: str

    def activate(self, ctx: ActivationContext, params: list[ExtraNetworkParams]) -> None:
        """Apply exactly ``params`` (``[]``: none of this type). A second call replaces the first."""

    def deactivate(self, ctx: ActivationContext) -> None:
        """Finish the job; must be safe after a failed or partial ``activate``."""


class ExtraNetworkRegistry:
    """Registered network types, by tag name and alias (``lyco`` → ``lora``)."""

    def __init__(self) -> None:
        self._networks: dict[str, ExtraNetwork] = {}
        self._aliases: dict[str, str] = {}

    def register(self, network: ExtraNetwork, *aliases: str) -> None:
        if network.name in self._networks or network.name in self._aliases:
            raise ValueError(f"extra network {network.name!r} is already registered")
        self._networks[network.name] = network
        for alias in aliases:
            self._aliases[alias] = network.name

    @property
    def names(self) -> list[str]:
        return list(self._networks)

    def resolve(self, data: Mapping[str, list[ExtraNetworkParams]], comments: list[str]) -> NetworkData:
        """Merge aliases into their network and drop unknown types (with A1111's warning and a comment)."""
        resolved: NetworkData = {}
        for tag, params in data.items():
            name = tag if tag in self._networks else self._aliases.get(tag)
            if name is None:
                logger.warning("Skipping unknown extra network: %s", tag)
                comments.append(f"Skipping unknown extra network: {tag}")
                continue
            resolved.setdefault(name, []).extend(params)
        return resolved

    @contextmanager
    def activated(self, ctx: ActivationContext, data: Mapping[str, list[ExtraNetworkParams]]) -> Iterator[None]:
        """Activate every registered network (mentioned ones first, in order of appearance) and patch the model's
        weights once for all of them, then deactivate all of them in reverse order when the block ends, even on
        error."""
        wanted = self.resolve(data, ctx.comments)
        order = [n for n in wanted] + [n for n in self._networks if n not in wanted]
        entered: list[ExtraNetwork] = []
        try:
            with ExitStack() as patching:
                for patcher in getattr(ctx.model, "patchers", {}).values():
                    patching.enter_context(patcher.deferred())
                for name in order:
                    network = self._networks[name]
                    entered.append(network)  # recorded first: a half-done activate is still deactivated
                    network.activate(ctx, wanted.get(name, []))
            yield
        finally:
            for network in reversed(entered):
                try:
                    network.deactivate(ctx)
                except Exception:  # keep deactivating the others; the failure is reported, not hidden
                    logger.exception("Deactivating extra network %s failed", network.name)
                    ctx.comments.append(f"Failed to deactivate extra network {network.name}")
