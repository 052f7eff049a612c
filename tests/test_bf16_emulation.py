"""benchmarks/bf16_emulation.py stands in for a native bf16 CPU in the quality benchmark: its
convolutions and matrix products must give the numbers bf16 hardware gives (bf16 operands, exact
products summed in float32, the result rounded to bf16), forward and backward, and leave every
other op alone."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bf16_emulation import Bf16ProductsInFloat32  # noqa: E402

from cyclegan.models import GeneratorResNet  # noqa: E402


def rounded_exact(t: torch.Tensor) -> torch.Tensor:
    """The correctly rounded bf16 of a float64 result."""
    return t.to(torch.bfloat16)


def assert_bf16_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal but for a rare last-bit tie: float32 sums round the same as exact ones almost always."""
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    differ = got != want
    assert differ.float().mean() < 1e-3, f"{differ.float().mean():.2e} of the elements differ"
    ulp = want.float().abs().clamp_min(1e-30) * 2.0**-7
    assert ((got.float() - want.float()).abs() <= ulp).all()


def test_convolution_forward_and_backward_are_bf16_hardwares_numbers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 12, 12, generator=g).bfloat16()
    w = torch.randn(24, 16, 3, 3, generator=g).bfloat16()
    b = torch.randn(24, generator=g).bfloat16()
    grad = torch.randn(2, 24, 12, 12, generator=g).bfloat16()

    xe, we, be = (t.clone().requires_grad_() for t in (x, w, b))
    with Bf16ProductsInFloat32() as mode:
        ye = F.conv2d(xe, we, be, padding=1)
        ye.backward(grad)
    assert mode.emulated == 2  # the convolution and its backward

    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    y64 = F.conv2d(x64, w64, b64, padding=1)
    y64.backward(grad.double())
    assert_bf16_close(ye, rounded_exact(y64))
    assert_bf16_close(xe.grad, rounded_exact(x64.grad))
    assert_bf16_close(we.grad, rounded_exact(w64.grad))

    # torch's own (slow, reference) bf16 kernel computes the same numbers
    assert_bf16_close(ye, F.conv2d(x, w, b, padding=1))


def test_linear_and_matmul_under_autocast_are_bf16_hardwares_numbers():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 64, generator=g)
    w = torch.randn(32, 64, generator=g)
    bias = torch.randn(32, generator=g)
    batch = torch.randn(3, 8, 64, generator=g)
    with Bf16ProductsInFloat32() as mode, torch.autocast("cpu", dtype=torch.bfloat16):
        lin = F.linear(a, w, bias)
        mat = a @ w.t()
        bmm = torch.bmm(batch, batch.transpose(1, 2))
    assert mode.emulated == 3
    a16, w16, bias16, batch16 = (t.bfloat16().double() for t in (a, w, bias, batch))
    assert_bf16_close(lin, rounded_exact(a16 @ w16.t() + bias16))
    assert_bf16_close(mat, rounded_exact(a16 @ w16.t()))
    assert_bf16_close(bmm, rounded_exact(batch16 @ batch16.transpose(1, 2)))


def test_float32_work_and_other_ops_are_left_alone():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 16, 16, generator=g)
    net = GeneratorResNet((3, 16, 16), 1, ngf=8)
    want = net(x)
    with Bf16ProductsInFloat32() as mode:
        got = net(x)
        half = x.bfloat16() * 3  # a bf16 op that is no product runs as it would
    assert mode.emulated == 0
    assert torch.equal(got, want)
    assert half.dtype == torch.bfloat16 and torch.equal(half, x.bfloat16() * 3)


def test_a_training_step_under_autocast_runs_every_convolution_through_it():
    net = GeneratorResNet((3, 16, 16), 1, ngf=8)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    x = torch.randn(1, 3, 16, 16)
    with Bf16ProductsInFloat32() as mode:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        out.float().square().mean().backward()
    assert mode.emulated == 2 * convs  # each convolution forward, and its backward
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
