"""The benchmark's measure of a step's memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from train_step import cpu_step_memory  # noqa: E402


def test_step_memory_counts_what_a_step_allocates_beyond_what_was_live_before():
    mib = 2**18  # float32 elements in 1 MiB
    state: dict[str, torch.Tensor | None] = {"kept": torch.empty(16 * mib)}

    def step() -> None:
        state["kept"] = None  # frees 16 MiB kept from before the step (as zero_grad frees gradients)
        a = torch.empty(4 * mib)
        b = torch.empty(8 * mib)
        state["kept"] = torch.empty(16 * mib)  # live: -16 + 4 + 8 + 16 = 12 MiB, the peak
        del a, b

    # Without the profiled step before the measured one, the free of the block allocated before
    # profiling would be unknown to the profiler and the peak read as 28.
    assert cpu_step_memory(step) == pytest.approx(12.0, abs=0.01)
