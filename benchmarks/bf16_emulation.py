"""bfloat16 autocast's arithmetic at float32 speed, on a CPU without native bfloat16: for the
quality benchmark only, never for users.

On a CPU without AVX-512 BF16 or AMX (AVX2 only), torch runs a bf16 convolution through its slow
reference kernels (``_slow_conv2d_forward``: about 97 % of a bf16 step there, 10x the float32 step),
so a bf16 training run of the quality task would take hours. Yet the *numbers* a native bf16 CPU
computes are known: oneDNN's bf16 convolutions and matrix products (AMX, AVX-512 BF16) read bf16
operands, accumulate in float32 and round the result to bf16. Every bf16 operand is exactly a float32,
so the same result comes from float32 kernels: widen the bf16 operands, run the float32 op, round its
outputs to bf16 (round to nearest even, as oneDNN does). Only the order of the float32 sums differs.

``Bf16ProductsInFloat32`` does that for the convolutions and matrix products (forward and backward)
and leaves every other op as autocast ran it: what autocast casts, which ops stay float32, the bf16
elementwise ops, instance norm and padding all run the same kernels a native CPU runs. Its test
(``tests/test_bf16_emulation.py``) checks the results against torch's own bf16 kernels.

    python benchmarks/bf16_emulation.py train --amp bf16 ...   # cyclegan's CLI, under the emulation
"""

from __future__ import annotations

import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

aten = torch.ops.aten

# The ops whose bf16 kernels are slow without native bf16; CPU autocast routes conv*, linear and
# matmul through these.
PRODUCTS = {aten.convolution.default, aten.convolution_backward.default, aten.mm.default, aten.addmm.default,
            aten.bmm.default, aten.baddbmm.default}


def _widen(x):
    return x.float() if isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 else x


def _round(x):
    return x.to(torch.bfloat16) if isinstance(x, torch.Tensor) and x.dtype == torch.float32 else x


class Bf16ProductsInFloat32(TorchDispatchMode):
    """Within it, a convolution or matrix product with a bf16 operand runs in float32 on the
    widened operands and its outputs are rounded to bf16; everything else runs as it would."""

    def __init__(self) -> None:
        super().__init__()
        self.emulated = 0  # how many ops it took over (a run that took none emulated nothing)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS:
            flat = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if any(t.dtype == torch.bfloat16 for t in flat):
                self.emulated += 1
                return tree_map(_round, func(*tree_map(_widen, args), **tree_map(_widen, kwargs)))
        return func(*args, **kwargs)


def main(argv: list[str]) -> int:
    """``cyclegan`` with these arguments, its training under the emulation."""
    from cyclegan.cli import main as cli

    mode = Bf16ProductsInFloat32()
    with mode:
        code = cli(argv)
    if "--amp" in argv and argv[argv.index("--amp") + 1] == "bf16" and mode.emulated == 0:
        sys.exit("bf16_emulation: no bf16 convolution or matrix product ran: nothing was emulated")
    return code or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
