"""``--lowvram``: the UNet streamed to the GPU block by block, the next block's weights copied while this one runs.

Each streamed unit (a resnet, a transformer, a down/upsampler of the UNet) keeps its *master* weights in pinned CPU
memory; a forward pre-hook points its parameters at GPU copies and a forward hook points them back at the masters,
so nothing is ever copied back from the GPU and the masters are always the weights that count. That is what makes
LoRA patching work here: between jobs every parameter of a streamed unit *is* its master, and the WeightPatcher
writes into it. The small remaining parts of the UNet (conv_in, time embedding, conv_out) live on the GPU.

Transfers overlap compute: the order the units run in is recorded on the first forward, and from then on the
pre-hook of unit *i* starts the copy of unit *i+1* on a side CUDA stream; the consumer waits on that copy's event.
On the CPU (tests) the same machinery runs with plain copies, so every code path except the stream is exercised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from modules.offload import ParkedModule

logger = logging.getLogger(__name__)


def streamed_units(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The UNet's units that are streamed: every resnet, attention, down- and upsampler of its blocks."""
    units = []
    for name, module in unet.named_modules():
        parts = name.split(".")
        if (len(parts) == 3 and parts[0] in ("down_blocks", "up_blocks")
                and parts[1].isdigit() and parts[2] in ("resnets", "attentions", "downsamplers", "upsamplers")):
            units += [(f"{name}.{child}", sub) for child, sub in module.named_children()]
        elif len(parts) == 2 and parts[0] == "mid_block" and parts[1] in ("resnets", "attentions"):
            units += [(f"{name}.{child}", sub) for child, sub in module.named_children()]
    return units


class _Unit(ParkedModule):
    """One streamed module: its CPU masters, plus the device copy in flight and the copy's completion event."""

    def __init__(self, name: str, module: torch.nn.Module, device: torch.device) -> None:
        super().__init__(module, device)
        self.name = name
        self.copies: list[torch.Tensor] | None = None
        self.ready: torch.cuda.Event | None = None


class BlockStreamer:
    """Streams a UNet's units to ``device``; install once per loaded model, :meth:`remove` to undo."""

    def __init__(self, unet: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.units = [_Unit(name, module, device) for name, module in streamed_units(unet)]
        self.order: list[_Unit] = []  # execution order, recorded on the first forward
        self._following: dict[int, _Unit] = {}  # id(unit) → the unit that runs after it (cyclic)
        self._recording = True
        self._handles = [unet.register_forward_hook(self._finish_recording)]
        for unit in self.units:
            self._handles.append(unit.module.register_forward_pre_hook(self._pre_hook(unit)))
            self._handles.append(unit.module.register_forward_hook(self._post_hook(unit)))
        streamed = {id(t) for unit in self.units for t in unit.tensors}
        for tensor in list(unet.parameters()) + list(unet.buffers()):  # the rest lives on the GPU
            if id(tensor) not in streamed:
                tensor.data = tensor.data.to(device)
        self.onloads = 0  # counters for tests and benchmarks
        self.prefetched = 0

    @property
    def master_tensors(self) -> Iterable[torch.Tensor]:
        return (m for unit in self.units for m in unit.masters)

    def _copy(self, unit: _Unit) -> None:
        """Start copying ``unit``'s masters to the device (on the side stream when there is one)."""
        if unit.copies is not None:
            return
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # masters may just have been patched
            with torch.cuda.stream(self.stream):
                unit.copies = [m.to(self.device, non_blocking=True) for m in unit.masters]
                unit.ready = torch.cuda.Event()
                unit.ready.record(self.stream)
        else:
            unit.copies = [m.to(self.device, copy=True) for m in unit.masters]  # a real copy, as on a GPU

    def _pre_hook(self, unit: _Unit):
        def onload(module: torch.nn.Module, args: tuple) -> None:
            if self._recording:
                self.order.append(unit)
            self._copy(unit)
            if unit.ready is not None:
                torch.cuda.current_stream(self.device).wait_event(unit.ready)
                for copy in unit.copies:  # the compute stream now owns these tensors
                    copy.record_stream(torch.cuda.current_stream(self.device))
            for tensor, copy in zip(unit.tensors, unit.copies):
                tensor.data = copy
            unit.loaded = True
            self.onloads += 1
            following = self._next(unit)
            if following is not None:
                self._copy(following)
                self.prefetched += 1
        return onload

    def _post_hook(self, unit: _Unit):
        def offload(module: torch.nn.Module, args: tuple, output: object) -> None:
            unit.unload()  # nothing is copied back: the master is the truth
            unit.copies, unit.ready = None, None
        return offload

    def _finish_recording(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        """After the first whole UNet forward the execution order is known: prefetch from now on."""
        if self._recording and self.order:
            self._recording = False
            self._following = {id(a): b for a, b in zip(self.order, self.order[1:] + self.order[:1])}

    def _next(self, unit: _Unit) -> _Unit | None:
        return None if self._recording else self._following.get(id(unit))

    def discard_prefetched(self) -> None:
        """Drop device copies made ahead of use, once their transfers are done.

        The last unit of a UNet call prefetches the first one for the next call, so between jobs a copy of the
        first unit's weights is still held. Patching (a LoRA switch) then writes only the masters: without this,
        the next job's first step would run that unit with the weights from before the switch, and a copy still
        in flight would read a master while the patcher writes it.
        """
        if self.stream is not None:
            self.stream.synchronize()
        for unit in self.units:
            if not unit.loaded:
                unit.copies, unit.ready = None, None

    def remove(self) -> None:
        """Remove the hooks and put every tensor back on the device."""
        for handle in self._handles:
            handle.remove()
        for unit in self.units:
            unit.restore()
