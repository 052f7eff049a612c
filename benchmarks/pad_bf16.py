"""Reflection padding of bfloat16 activations under CPU autocast: torch's ``nn.ReflectionPad2d``
against ours (``cyclegan.models.ReflectionPad2d``), side by side in one process.

    python benchmarks/pad_bf16.py            # writes the section pad_bf16 of docs/benchmarks.md
    python benchmarks/pad_bf16.py --no_report

CPU autocast runs reflection padding in float32: torch's pad turns a bfloat16 activation into a
float32 one, and the convolution after it casts that back to bfloat16, forward and backward. Ours
pads the bfloat16 tensor as it is (the same values). Each case times the pad, the cast the next
convolution makes and the backward through both, on the activation shapes of the reference
generator at 256x256 (the 7x7 layers' 64 x 256 x 256, the residual blocks' 256 x 64 x 64); the
median of ``--repeats`` alternating timings. This needs no bfloat16 arithmetic, only memory
traffic, so it measures the same thing on any CPU; what it saves in a whole training step shows
only on a CPU with native bfloat16 (``benchmarks/train_step.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_step import machine, replace_section  # noqa: E402

from cyclegan.models import ReflectionPad2d  # noqa: E402

# (channels, side, padding, how many such pads one 9-block generator call at 256x256 runs)
CASES = ((64, 256, 3, 1), (256, 64, 1, 18))


def pad_then_cast(pad: nn.Module, x: torch.Tensor) -> float:
    """Seconds for the pad, the cast to bfloat16 the next convolution makes, and their backward."""
    start = time.perf_counter()
    xi = x.detach().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pad(xi).to(torch.bfloat16)
    y.backward(torch.ones_like(y))
    assert xi.grad is not None
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no_report", action="store_true")
    args = p.parse_args()
    rows = []
    for channels, side, padding, per_call in CASES:
        x = torch.randn(1, channels, side, side).bfloat16()
        stock, ours = nn.ReflectionPad2d(padding), ReflectionPad2d(padding)
        assert torch.equal(stock(x.float()), ours(x.float()))
        times: dict[str, list[float]] = {"stock": [], "ours": []}
        for _ in range(args.repeats):
            for name, pad in (("stock", stock), ("ours", ours)):
                times[name].append(pad_then_cast(pad, x))
        s, o = statistics.median(times["stock"]), statistics.median(times["ours"])
        rows.append((channels, side, padding, per_call, s, o))
        print(f"{channels} x {side} x {side}, pad {padding}: torch {s * 1e3:.2f} ms, ours {o * 1e3:.2f} ms, "
              f"{s / o:.2f}x", flush=True)
    if args.no_report:
        return
    saved = sum(per_call * (s - o) for _, _, _, per_call, s, o in rows)
    lines = [
        "## Reflection padding under CPU autocast (pad_bf16)",
        "",
        f"Made by `python benchmarks/pad_bf16.py` on {time.strftime('%Y-%m-%d')}; machine: "
        f"{machine(torch.device('cpu'))}, {torch.get_num_threads()} threads.",
        "",
        "One bfloat16 activation padded by reflection under CPU autocast, cast to bfloat16 as the next "
        "convolution does, and the backward through both; median of "
        f"{args.repeats} alternating timings. *torch*: `nn.ReflectionPad2d` (autocast pads in float32); "
        "*ours*: `cyclegan.models.ReflectionPad2d` (pads the bfloat16 tensor, the same values).",
        "",
        "| activation | padding | torch (ms) | ours (ms) | ratio | such pads in one 9-block generator call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for channels, side, padding, per_call, s, o in rows:
        lines.append(f"| {channels} x {side} x {side} | {padding} | {s * 1e3:.2f} | {o * 1e3:.2f} | {s / o:.2f} | "
                     f"{per_call} |")
    lines += ["", f"Saved per image through one generator at 256x256 (forward and backward): {saved * 1e3:.0f} ms.",
              ""]
    replace_section(args.output, "pad_bf16", "\n".join(lines))


if __name__ == "__main__":
    main()
