"""Prompts → per-step conditioning with A1111's semantics: schedules, alternation, AND, and a cache.

* Each prompt is expanded into its schedule (``[a:b:N]``, ``[a|b]``) with
  ``prompt_parser.get_learned_conditioning_prompt_schedules``; all texts of one prompt's schedule are encoded in
  one batch (so "Original" emphasis normalises them together, as in A1111).
* Positive prompts are split on ``AND`` into weighted sub-prompts (composable diffusion); the negative prompt is
  not (A1111 does not split it either).
* During sampling, ``step`` is the 0-based count of denoiser calls; a schedule entry applies while
  ``step <= end_at_step``.
* Encoded schedules are cached by prompt text and everything that changes the encoding (model, its text-encoder
  revision, clip skip, emphasis, embeddings), so an unchanged prompt is not encoded again in the next job.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from modules import prompt_parser
from modules.prompt_encoder import PromptEncoder


@dataclass(frozen=True)
class ScheduledCond:
    """One prompt's conditioning over the steps: ``conds[i]`` (77·k, C) applies while ``step <= ends[i]``."""

    ends: tuple[int, ...]
    conds: torch.Tensor  # (S, 77·k, C)
    embeddings: tuple[object, ...] = ()  # textual-inversion embeddings it uses

    def index_at(self, step: int) -> int:
        """The first entry with ``step <= end``; past the last one A1111 falls back to the *first* entry."""
        for index, end in enumerate(self.ends):
            if step <= end:
                return index
        return 0

    def at(self, step: int) -> torch.Tensor:
        return self.conds[self.index_at(step)]


class ConditioningCache:
    """Least-recently-used encoded schedules (a few dozen prompts are plenty: UI users change one at a time)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, ScheduledCond] = OrderedDict()
        self.hits = self.misses = 0

    def get_or_encode(self, key: Hashable, encode) -> ScheduledCond:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = encode()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()


def learned_conditioning(encoder: PromptEncoder, prompts: list[str], steps: int, cache: ConditioningCache | None,
                         encoder_key: Hashable = (), use_old_scheduling: bool = False,
                         hires_steps: int | None = None) -> list[ScheduledCond]:
    """A :class:`ScheduledCond` per prompt (identical prompts share one). ``hires_steps``: the schedule is the
    hires pass's, whose editing steps count on from the first pass's ``steps`` (A1111's offsets)."""
    results: dict[str, ScheduledCond] = {}
    for prompt in prompts:
        if prompt in results:
            continue

        def encode(prompt: str = prompt) -> ScheduledCond:
            schedule = prompt_parser.get_learned_conditioning_prompt_schedules([prompt], steps, hires_steps,
                                                                               use_old_scheduling)[0]
            conds, used = encoder.encode([text for _, text in schedule])
            return ScheduledCond(tuple(int(end) for end, _ in schedule), conds, tuple(used))

        key = (prompt, steps, hires_steps, use_old_scheduling, encoder_key)
        results[prompt] = cache.get_or_encode(key, encode) if cache is not None else encode()
    return [results[p] for p in prompts]


@dataclass(frozen=True)
class Multicond:
    """Positive conditioning of a batch: for each image, its ``AND`` parts as (schedule, weight)."""

    rows: tuple[tuple[tuple[ScheduledCond, float], ...], ...]

    def at(self, step: int) -> tuple[torch.Tensor, list[list[tuple[int, float]]]]:
        """All parts of all images at ``step`` stacked to ``(N, 77·k, C)`` (shorter ones padded by repeating their
        last vector, as A1111), and for each image its ``(row in that stack, weight)`` pairs."""
        tensors: list[torch.Tensor] = []
        conds_list: list[list[tuple[int, float]]] = []
        for parts in self.rows:
            conds_list.append([])
            for schedule, weight in parts:
                conds_list[-1].append((len(tensors), weight))
                tensors.append(schedule.at(step))
        return stack_padded(tensors), conds_list

    @property
    def embeddings(self) -> list[object]:
        return _unique(e for parts in self.rows for schedule, _ in parts for e in schedule.embeddings)


def multicond_learned_conditioning(encoder: PromptEncoder, prompts: list[str], steps: int,
                                   cache: ConditioningCache | None, encoder_key: Hashable = (),
                                   use_old_scheduling: bool = False, hires_steps: int | None = None) -> Multicond:
    """Split each prompt on ``AND`` (with ``:weight``) and encode the parts' schedules."""
    res_indexes, flat, _ = prompt_parser.get_multicond_prompt_list(prompts)
    learned = learned_conditioning(encoder, flat, steps, cache, encoder_key, use_old_scheduling, hires_steps)
    return Multicond(tuple(tuple((learned[i], float(w)) for i, w in row) for row in res_indexes))


def uncond_at(schedules: list[ScheduledCond], step: int) -> torch.Tensor:
    """The negative prompts' conditioning at ``step``: ``(B, 77·m, C)``."""
    return stack_padded([s.at(step) for s in schedules])


def token_counter(encoder: PromptEncoder, text: str, steps: int, is_positive: bool = True) -> tuple[int, int]:
    """A1111's ``n/75`` counter: the longest text the prompt produces (after stripping network tags, splitting on
    ``AND`` for the positive prompt and expanding schedules), and its chunks' capacity."""
    from modules import extra_networks

    text, _ = extra_networks.parse_prompt(text)
    flat = prompt_parser.get_multicond_prompt_list([text])[1] if is_positive else [text]
    schedules = prompt_parser.get_learned_conditioning_prompt_schedules(flat, max(1, steps))
    count = max(encoder.tokenize_line(part)[1] for schedule in schedules for _, part in schedule)
    return count, max(1, -(-count // 75)) * 75


def embeddings_of(schedules: list[ScheduledCond]) -> list[object]:
    """Embeddings the schedules use, each once, in order."""
    return _unique(e for schedule in schedules for e in schedule.embeddings)


def schedule_key(multicond: Multicond, uncond: list[ScheduledCond], step: int) -> tuple:
    """Identifies which schedule entries apply at ``step``: when it does not change, the tensors do not either."""
    return (tuple(s.index_at(step) for parts in multicond.rows for s, _ in parts),
            tuple(s.index_at(step) for s in uncond))


def stack_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack ``(L_i, C)`` tensors to ``(N, max L, C)``, padding by repeating each one's last vector (A1111)."""
    length = max(t.shape[0] for t in tensors)
    return torch.stack([t if t.shape[0] == length else torch.cat([t, t[-1:].expand(length - t.shape[0], -1)])
                        for t in tensors])


def _unique(items) -> list[object]:
    seen: list[object] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen
