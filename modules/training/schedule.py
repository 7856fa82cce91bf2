"""A1111's learning-rate schedule syntax: ``"0.005:100, 1e-3:1000, 1e-5"``.

The text is a comma-separated list of ``rate:step`` pairs; each rate holds *until* its step. The rules (A1111's
``LearnScheduleIterator`` / ``LearnRateScheduler``), which the same parser also applies to the gradient-clipping
value:

* a bare ``rate`` (no ``:step``) lasts until ``max_steps`` and ends the list (anything after it is ignored);
* ``rate:-1`` also lasts until ``max_steps`` and ends the list;
* a step above ``max_steps`` is clamped to ``max_steps`` and ends the list;
* pairs whose step is at or below the current (resumed) step are skipped, as is any other step ``<= 0``;
* during training the rate moves to the next entry once ``step_number >= end_step``; after the last entry the
  schedule is *finished* and training stops.

A text that yields no entry, or whose numbers do not parse, raises :class:`ScheduleError` (a ``ValueError``) with
A1111's explanation of the syntax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SYNTAX_HELP = ('It should be a number or, for example, like "0.001:100, 0.00001:1000, 1e-5:10000" to have lr of '
               '0.001 until step 100, 0.00001 until 1000, and 1e-5 until 10000.')


class ScheduleError(ValueError):
    """A learning-rate (or clipping) schedule string that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """One rate and the step it lasts until (exclusive)."""

    rate: float
    end_step: int


def parse_schedule(text: str, max_steps: int, current_step: int = 0) -> list[ScheduleEntry]:
    """The entries of ``text`` that still apply from ``current_step`` on, ends clamped to ``max_steps``.

    Raises:
        ScheduleError: a number does not parse, a pair has more than one ``:``, or no entry applies.
    """
    if not isinstance(text, str):
        raise ScheduleError(f"Invalid learning rate schedule {text!r}: it must be text. {SYNTAX_HELP}")
    entries: list[ScheduleEntry] = []
    try:
        for pair in text.split(","):
            if not pair.strip():
                continue
            parts = pair.split(":")
            if len(parts) > 2:
                raise ValueError(f"{pair.strip()!r} has more than one ':'")
            rate = _rate(parts[0])
            if len(parts) == 1:  # a bare rate: until the end, and nothing after it counts
                entries.append(ScheduleEntry(rate, max_steps))
                break
            step = int(parts[1].strip())
            if step > current_step:
                entries.append(ScheduleEntry(rate, min(step, max_steps)))
                if step > max_steps:
                    break
            elif step == -1:
                entries.append(ScheduleEntry(rate, max_steps))
                break
    except ValueError as e:
        raise ScheduleError(f"Invalid learning rate schedule {text!r} ({e}). {SYNTAX_HELP}") from e
    if not entries:
        raise ScheduleError(f"Invalid learning rate schedule {text!r}: no rate applies after step {current_step}. "
                            f"{SYNTAX_HELP}")
    return entries


def _rate(text: str) -> float:
    value = float(text.strip())
    if not math.isfinite(value):
        raise ValueError(f"{text.strip()!r} is not a finite number")
    return value


class LearnRateScheduler:
    """Walks a schedule during training: :attr:`learn_rate` now, :meth:`step` moves on when an entry ends."""

    def __init__(self, text: str, max_steps: int, current_step: int = 0) -> None:
        self.entries = parse_schedule(text, max_steps, current_step)
        self._index = 0
        self.finished = False

    @property
    def learn_rate(self) -> float:
        return self.entries[self._index].rate

    @property
    def end_step(self) -> int:
        return self.entries[self._index].end_step

    def step(self, step_number: int) -> bool:
        """Advance to the next entry if ``step_number`` reached this one's end; returns whether the rate changed.

        Past the last entry :attr:`finished` becomes True (the rate stays the last one).
        """
        if step_number < self.end_step:
            return False
        if self._index + 1 >= len(self.entries):
            self.finished = True
            return False
        self._index += 1
        return True

    def apply(self, optimizer: object, step_number: int) -> None:
        """:meth:`step`, and when the rate changed, set it on every parameter group of ``optimizer``."""
        if self.step(step_number):
            for group in optimizer.param_groups:  # type: ignore[attr-defined]
                group["lr"] = self.learn_rate * group.get("lr_scale", 1.0)
