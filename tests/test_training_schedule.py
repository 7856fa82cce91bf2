"""The learning-rate schedule parser: A1111's rules (a1111-behaviour.md §3.4)."""

from __future__ import annotations

import pytest
import torch

from modules.training.schedule import LearnRateScheduler, ScheduleEntry, ScheduleError, parse_schedule


def pairs(text: str, max_steps: int, current: int = 0) -> list[tuple[float, int]]:
    return [(e.rate, e.end_step) for e in parse_schedule(text, max_steps, current)]


def test_documented_example() -> None:
    assert pairs("0.005:100, 1e-3:1000, 1e-5", 10000) == [(0.005, 100), (1e-3, 1000), (1e-5, 10000)]


def test_bare_rate_lasts_until_max_and_ends_parsing() -> None:
    assert pairs("0.005", 500) == [(0.005, 500)]
    assert pairs("0.01, 0.5:100", 500) == [(0.01, 500)]  # nothing after a bare rate counts


def test_minus_one_means_until_max_and_ends_parsing() -> None:
    assert pairs("0.1:10, 0.05:-1, 0.9:400", 300) == [(0.1, 10), (0.05, 300)]


def test_step_above_max_is_clamped_and_ends_parsing() -> None:
    assert pairs("0.1:50, 0.01:5000, 0.001:6000", 1000) == [(0.1, 50), (0.01, 1000)]
    assert pairs("0.1:1000, 0.2:2000", 1000) == [(0.1, 1000), (0.2, 1000)]  # == max does not end parsing


def test_pairs_at_or_before_the_resumed_step_are_skipped() -> None:
    assert pairs("0.1:100, 0.01:200, 0.001", 1000, current=100) == [(0.01, 200), (0.001, 1000)]
    assert pairs("0.1:100, 0.01:200, 0.001", 1000, current=150) == [(0.01, 200), (0.001, 1000)]
    assert pairs("0.1:0, 0.2:-5, 0.3:10", 100) == [(0.3, 10)]  # steps <= 0 (other than -1) are skipped


@pytest.mark.parametrize("text", ["", "  ,  ", "abc", "0.1:ten", "0.1:1.5", "0.1:2:3", "nan", "inf:5",
                                  "0.1:100"])
def test_bad_strings_raise_a_clear_error(text: str) -> None:
    with pytest.raises(ScheduleError, match="Invalid learning rate schedule") as info:
        parse_schedule(text, 50, current_step=100 if text == "0.1:100" else 0)
    assert "0.001:100" in str(info.value)  # the syntax help is part of the message
    assert isinstance(info.value, ValueError)


def test_scheduler_changes_rate_when_step_reaches_end_and_finishes() -> None:
    scheduler = LearnRateScheduler("0.5:2, 0.25:4, 0.125", 6)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=scheduler.learn_rate)
    seen = []
    for step in range(10):
        scheduler.apply(optimizer, step)
        if scheduler.finished:
            break
        seen.append((step, optimizer.param_groups[0]["lr"]))
    assert seen == [(0, 0.5), (1, 0.5), (2, 0.25), (3, 0.25), (4, 0.125), (5, 0.125)]


def test_scheduler_resumed_starts_at_the_right_entry() -> None:
    scheduler = LearnRateScheduler("0.5:2, 0.25:4, 0.125", 6, current_step=3)
    assert scheduler.entries[0] == ScheduleEntry(0.25, 4)
    assert scheduler.learn_rate == 0.25


def test_lr_scale_of_a_group_is_kept_when_the_rate_changes() -> None:
    scheduler = LearnRateScheduler("1.0:1, 0.5", 4)
    optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.1}], lr=1.0)
    scheduler.apply(optimizer, 1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
