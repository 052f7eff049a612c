"""The suite as a CPU with native bfloat16 runs it, on any CPU:
``python -m pytest -n auto -p tests.native_bf16``.

Where the CPU has AMX or AVX-512 BF16, ``--amp auto`` trains in bf16 autocast, so there every test
that trains with the defaults runs bf16. This plugin makes this process see such a CPU
(``perf.cpu_native_bf16`` answers "AMX" for the machine's own flags; flags a test writes are
still read) and gives its training runs bf16 hardware's numbers at float32 speed
(``benchmarks/bf16_emulation.py``'s mode, entered around each ``cyclegan train`` of the process),
so that what those tests meet there can be seen here. Tests that start new processes
(``torchrun``, killed runs, the console script) see the real CPU, and steps a test runs itself
with bf16 take torch's slow bf16 kernels."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def pytest_configure(config) -> None:
    from bf16_emulation import Bf16ProductsInFloat32

    from cyclegan import perf
    from cyclegan import train as train_module

    real = perf.cpu_native_bf16
    perf.cpu_native_bf16 = lambda cpuinfo=perf.CPUINFO: "AMX" if cpuinfo == perf.CPUINFO else real(cpuinfo)
    in_folder = train_module.train_in_folder

    @functools.wraps(in_folder)
    def emulated(*args, **kwargs):
        with Bf16ProductsInFloat32():
            return in_folder(*args, **kwargs)

    train_module.train_in_folder = emulated
