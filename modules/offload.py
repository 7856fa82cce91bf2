"""Where the model's parts live during a job, for each memory mode (A1111's ``--medvram`` / ``--lowvram``).

* normal: everything on the device, always.
* medvram: the text encoder, the UNet and the VAE each on the device only while used; one at a time.
* lowvram: as medvram for the text encoder and VAE; the UNet is streamed block by block (``modules.lowvram``).

Offloaded weights are *masters* in (pinned) CPU memory. Loading a part copies its masters to the device and points
its parameters at the copies; unloading points them back at the masters and drops the copies — nothing is copied
back, so an offload costs nothing and the masters are always the real weights. Invariant the job code keeps:
networks are activated (weights patched) only after :meth:`OffloadManager.release`, when every parameter *is* its
master, so the WeightPatcher writes the master weights wherever they live.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from modules.devices import DevicePolicy

logger = logging.getLogger(__name__)

COMPONENTS = ("text_encoder", "unet", "vae")


class ParkedModule:
    """A module whose weights are kept as CPU masters and copied to the device on demand."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module, self.device = module, device
        self.tensors = list(module.parameters()) + list(module.buffers())
        pin = device.type == "cuda"
        self.masters = []
        for tensor in self.tensors:
            master = tensor.data.to("cpu")
            self.masters.append(master.pin_memory() if pin else master)
            tensor.data = self.masters[-1]
        self.loaded = False

    def load(self) -> None:
        if not self.loaded:
            non_blocking = self.device.type == "cuda"
            for tensor, master in zip(self.tensors, self.masters):  # a real copy on the CPU too (tests see aliasing)
                tensor.data = master.to(self.device, non_blocking=non_blocking, copy=True)
            self.loaded = True

    def unload(self) -> None:
        if self.loaded:
            for tensor, master in zip(self.tensors, self.masters):
                tensor.data = master
            self.loaded = False

    def restore(self) -> None:
        """Give up parking: every tensor back on the device for good."""
        for tensor, master in zip(self.tensors, self.masters):
            tensor.data = master.to(self.device)
        self.loaded = True


def planned_placement(mode: str) -> dict[str, dict[str, str]]:
    """Where each part is while each stage runs: ``{stage: {component: "device" | "cpu" | "streamed"}}``.

    The policy in one table (tests compare the manager's real residency with it).
    """
    if mode == "normal":
        return {stage: dict.fromkeys(COMPONENTS, "device") for stage in COMPONENTS + ("idle",)}
    unet = "streamed" if mode == "lowvram" else "cpu"
    plan = {}
    for stage in COMPONENTS + ("idle",):
        plan[stage] = {c: ("device" if c == stage else "cpu") for c in COMPONENTS}
        if mode == "lowvram":
            plan[stage]["unet"] = unet
    return plan


class OffloadManager:
    """Applies the memory mode to one loaded pipeline."""

    def __init__(self, pipe, policy: DevicePolicy) -> None:
        self.mode = policy.memory_mode
        self.device = policy.device
        self.parked: dict[str, ParkedModule] = {}
        self.streamer = None
        if self.mode == "normal":
            return
        self.park("text_encoder", pipe.text_encoder)
        self.park("vae", pipe.vae)
        if self.mode == "medvram":
            self.park("unet", pipe.unet)
        else:
            from modules.lowvram import BlockStreamer

            self.streamer = BlockStreamer(pipe.unet, self.device)
        logger.info("Memory mode %s: %s", self.mode, ", ".join(f"{k} parked on the CPU" for k in self.parked))

    def park(self, component: str, module: torch.nn.Module) -> None:
        """Keep ``module``'s weights as CPU masters, loaded only while :meth:`use` asks for it."""
        self.parked[component] = ParkedModule(module, self.device)

    @contextmanager
    def use(self, component: str) -> Iterator[None]:
        """Make ``component`` usable on the device (evicting the other parked parts first)."""
        for name, parked in self.parked.items():
            if name != component:
                parked.unload()
        if component in self.parked:
            self.parked[component].load()
        yield

    @contextmanager
    def use_all(self) -> Iterator[None]:
        """Every parked part on the device for the block, parked again after it. For training, whose every step
        uses all three parts (and sends gradients from the UNet back through the text encoder); the VRAM it takes
        is then normal mode's."""
        for parked in self.parked.values():
            parked.load()
        try:
            yield
        finally:
            self.release()

    def release(self) -> None:
        """Every parked part back to its masters (call before patching weights and after each batch)."""
        if self.device.type == "cuda":  # no transfer may still be reading a master the patcher is about to write
            torch.cuda.current_stream(self.device).synchronize()
        for parked in self.parked.values():
            parked.unload()
        if self.streamer is not None:
            self.streamer.discard_prefetched()

    def residency(self) -> dict[str, str]:
        """Where each component is now, in :func:`planned_placement`'s terms."""
        result = {}
        for component in COMPONENTS:
            if self.mode == "normal":
                result[component] = "device"
            elif component == "unet" and self.streamer is not None:
                result[component] = "streamed"
            else:
                result[component] = "device" if self.parked[component].loaded else "cpu"
        return result

    def remove(self) -> None:
        """Undo the mode: every part on the device (used when a model is dropped or the mode changes)."""
        for parked in self.parked.values():
            parked.restore()
        if self.streamer is not None:
            self.streamer.remove()
        self.parked, self.streamer = {}, None
