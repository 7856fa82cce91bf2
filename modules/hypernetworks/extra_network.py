"""``<hypernet:name:multiplier>``: the extra network that applies hypernetworks to the UNet for a job.

Widths where the hypernetworks are affine (A1111's default ``linear`` files) are merged into the attention weights
through the UNet's weight patcher (``folding.py``: a layer after the LoRAs; like a LoRA it stays merged until the
next job asks for something else). Other widths get attention processors for the job (``processor.py``).

As A1111's ``ExtraNetworkHypernet``: the name is ``items[0]`` (a file stem), the multiplier ``float(items[1])``
(default 1.0), further items and ``k=v`` arguments are not used, several tags apply in prompt order. Nothing is
written to the infotext: the tags stay in the prompt line and identify the hypernetworks.

Differences, on purpose:

* ``deactivate`` restores the UNet's original attention processors (A1111 leaves its hypernetworks loaded until
  the next job activates an empty list, which the registry also does here).
* A name that is not found, a file that does not load, or a multiplier that is not a number is reported in
  ``ctx.comments`` (``Hypernetwork not found: a, b``) and skipped; the job goes on. A1111 skips missing names
  silently, prints load errors to the console, and fails the job on a bad multiplier.
* The ``sd_hypernetwork`` option ("add hypernetwork to prompt") is not supported.
"""

from __future__ import annotations

import logging

from modules.extra_networks import ActivationContext, ExtraNetworkParams
from modules.hypernetworks import folding
from modules.hypernetworks.hypernetwork import Hypernetwork
from modules.hypernetworks.library import HypernetworkLibrary
from modules.hypernetworks.processor import InstalledHypernetworks, install

logger = logging.getLogger(__name__)


class ExtraNetworkHypernet:
    """The ``hypernet`` extra network over a :class:`HypernetworkLibrary`."""

    name = "hypernet"

    def __init__(self, library: HypernetworkLibrary) -> None:
        self.library = library
        self._installed: InstalledHypernetworks | None = None

    def activate(self, ctx: ActivationContext, params: list[ExtraNetworkParams]) -> None:
        """Apply exactly ``params``' hypernetworks to ``ctx.model.pipe.unet`` (replacing any applied before)."""
        self._restore()
        entries = self._resolve(ctx, params)
        unet = ctx.model.pipe.unet
        network, folded = folding.fold(unet, entries)
        ctx.model.patchers["unet"].reconcile([network] if network is not None else [], layer=folding.LAYER)
        if not entries:
            return
        self._installed = install(unet, entries, skip=folded)
        ctx.eager_unet = ctx.eager_unet or bool(self._installed.wrapped)  # new processor objects per job
        matched = self._installed.matched_dims | folded
        for hypernetwork, _ in entries:
            if not hypernetwork.dims & matched:
                widths = ", ".join(str(d) for d in sorted(hypernetwork.dims))
                name = hypernetwork.filename.stem if hypernetwork.filename else hypernetwork.name
                ctx.comments.append(f"Hypernetwork {name} does nothing on this model: it has layers "
                                    f"for context widths {widths} only")

    def deactivate(self, ctx: ActivationContext) -> None:
        """Give the UNet its original attention processors back (safe after a failed or partial activate); folded
        weights stay until the next job reconciles them, as LoRAs do."""
        self._restore()

    def _restore(self) -> None:
        installed, self._installed = self._installed, None
        if installed is not None:
            installed.restore()

    def _resolve(self, ctx: ActivationContext, params: list[ExtraNetworkParams]) -> list[tuple[Hypernetwork, float]]:
        entries: list[tuple[Hypernetwork, float]] = []
        missing: list[str] = []
        for param in params:
            name = param.items[0] if param.items else ""
            try:
                multiplier = float(param.items[1]) if len(param.items) > 1 else 1.0
            except ValueError:
                ctx.comments.append(f"Hypernetwork {name}: the multiplier {param.items[1]!r} is not a number")
                continue
            if self.library.find(name) is None:
                missing.append(name)
                continue
            try:
                entries.append((self.library.load(name), multiplier))
            except (ValueError, OSError) as e:
                logger.error("Error loading hypernetwork %s: %s", name, e)
                ctx.comments.append(f"Error loading hypernetwork {name}: {e}")
        if missing:
            logger.warning("Hypernetwork not found: %s", ", ".join(missing))
            ctx.comments.append(f"Hypernetwork not found: {', '.join(missing)}")
        return entries
