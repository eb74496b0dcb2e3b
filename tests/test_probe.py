"""Activation bytes of one example: what autograd keeps for a backward, counted by hand."""

from __future__ import annotations

import time

import torch
from torch import nn

from coherence.probe import activation_bytes


class Inside(nn.Module):
    """Linear(64→256) → tanh → ×3 → Linear(256→4): tanh and the product are no module's
    output, yet their results are kept for the backward."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 256), nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)) * 3)


def test_counts_what_a_module_computes_inside():
    # saved: the input of a (64), tanh's result (256), the input of b (256); not the weights
    assert activation_bytes(Inside(), torch.randn(1, 64)) == 4 * (64 + 256 + 256)


def test_module_outputs_are_the_floor_when_nothing_is_saved():
    model = Inside().requires_grad_(False)
    assert activation_bytes(model, torch.randn(1, 64)) == 4 * (256 + 4 + 4)


def test_a_view_counts_one_example_not_its_batch():
    batch = torch.randn(48, 64)
    assert activation_bytes(Inside(), batch[:1]) == activation_bytes(Inside(), batch[:1].clone())


def test_a_scheduler_delay_does_not_decide_a_millisecond_timing():
    """Two 50 ms stalls among 2 ms calls (a busy machine's scheduler): timed alone, best of
    two, the call read 50 ms; the windows see the 2 ms it takes."""
    from coherence.probe import best_time

    calls = []

    def run() -> None:
        calls.append(None)
        time.sleep(0.05 if len(calls) in (2, 3) else 0.002)

    seconds = best_time(run, torch.device("cpu"), repeats=2)
    assert 0.002 <= seconds < 0.01, seconds
    assert len(calls) > 3  # the windows repeated the call


def test_a_slow_call_is_timed_once_per_window():
    from coherence.probe import MIN_WINDOW_SECONDS, best_time

    calls = []

    def run() -> None:
        calls.append(None)
        time.sleep(MIN_WINDOW_SECONDS * 1.2)

    assert best_time(run, torch.device("cpu"), repeats=2) >= MIN_WINDOW_SECONDS * 1.2
    assert len(calls) == 3  # the warm-up, then one call per window


def test_a_call_of_seconds_is_timed_once(monkeypatch):
    """A 128² batch's forward takes seconds: a second window would cost as much again to
    save a scheduler delay of a few % (a dashboard page waited for it on every estimate)."""
    from coherence import probe

    monkeypatch.setattr(probe, "LONG_CALL_SECONDS", 0.05)
    calls = []

    def run() -> None:
        calls.append(None)
        time.sleep(0.06)

    assert probe.best_time(run, torch.device("cpu"), repeats=3) >= 0.06
    assert len(calls) == 3  # the warm-up and one window of two calls
