"""Where a training step's time goes on the CPU: ours in float32 and, on a CPU with native
bfloat16, in bf16 autocast, split by kind of operation with ``torch.profiler``, next to the step's
rate against the measured matrix-multiply peak.

    python benchmarks/profile_step.py                          # 64x64 and 256x256, written to docs/benchmarks.md
    python benchmarks/profile_step.py --sizes 128 --no_report  # print only
    python benchmarks/profile_step.py --blocks 1 --sizes 32 --no_report   # smoke run, seconds
    python benchmarks/profile_step.py --layouts contiguous channels_last  # each step in both layouts

The question it answers (issue 28, item 3): what holds a bf16 step back from the bf16 peak, when
the convolutions could run near it. Each step is ``cyclegan.step.train_step`` as
``benchmarks/train_step.py`` builds it (the reference networks, batch 1, the same weights); one
warm-up step, then ``--steps`` unprofiled steps timed (their median is the step time and the
rate), then one profiled step, whose operators' own (self) CPU time is summed by kind:

- convolution forward / backward: the convolution kernels (oneDNN's, or the slow fallback where
  oneDNN has no kernel for the type: bf16 on a CPU without native bf16 takes it, hence ``--bf16``
  is refused there);
- copies and casts: ``copy_`` and ``_to_copy`` (autocast casting the float32 weights and
  activations to bf16, the gradients back; copies between layouts), and the number of
  conversions: ``_to_copy`` of a tensor with at least one dimension, forward and backward, to
  another type or (inside a channels_last convolution's backward) another layout (not the
  0-dimensional ones that wrap Python numbers in arithmetic and Adam's step counts, which a
  float32 step makes too);
- instance norm, padding, concatenation and splitting (``cat``, ``stack``, ``select``, ``slice``,
  the sub-pixel upsampling's interleave), the optimizer (Adam), and everything else
  (element-wise operations, allocation, views, autograd's bookkeeping).

The shares are of the profiled step's total self time (profiling adds a little to each call).
``--layouts contiguous channels_last`` profiles each step in both memory layouts (networks and
images in ``channels_last``, as ``--channels_last on`` trains), one of the issue's suspects:
oneDNN picks other kernels, and other reorders around them, for each layout.
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # train_step adds tests/ itself

from train_step import machine, make_variant, replace_section  # noqa: E402

from cyclegan.options import TrainConfig  # noqa: E402
from cyclegan.perf import cpu_native_bf16, measure_matmul_peak, step_flops  # noqa: E402
from cyclegan.registry import build_networks  # noqa: E402

# (kind, pattern of operator names), the first that matches an operator's name takes its time.
KINDS = (
    ("convolution backward", r"convolution_backward|_slow_conv2d_backward|mkldnn_convolution_backward"),
    ("convolution forward", r"mkldnn_convolution$|_slow_conv2d_forward|^aten::convolution$|^aten::_convolution$"
                            r"|^aten::conv2d$|thnn_conv2d"),
    ("copies and casts", r"^aten::copy_$|^aten::_to_copy$|^aten::to$|ToCopyBackward"),
    ("instance norm", r"batch_norm|instance_norm"),
    ("padding", r"pad"),
    ("concatenation and splitting", r"^aten::(cat|stack|select|slice|narrow|split|unbind|chunk)"
                                    r"|Interleave|CatBackward|StackBackward|UnbindBackward|SplitBackward"),
    ("optimizer", r"adam|Optimizer"),
)
OTHER = "everything else"
NAMES = {"ours": "float32", "ours_bf16": "bf16"}


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name, re.IGNORECASE)), OTHER)


def breakdown(step) -> tuple[dict[str, float], int]:
    """Seconds of a profiled step's own CPU time by kind, and its number of conversions."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    seconds = {kind: 0.0 for kind, _ in KINDS} | {OTHER: 0.0}
    casts = 0
    for event in prof.key_averages():
        seconds[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    for event in prof.events():  # a tensor's conversion (``to``, autocast's, or ToCopyBackward0's)
        if event.name == "aten::_to_copy" and event.input_shapes and event.input_shapes[0]:
            casts += 1
    return seconds, casts


def label(kind: str, layout: str) -> str:
    return NAMES[kind] + (", channels_last" if layout == "channels_last" else "")


def measure(size: int, blocks: int, kinds: list[str], layouts: list[str], steps: int) -> list[dict]:
    config = TrainConfig(img_height=size, img_width=size, n_residual_blocks=blocks)
    torch.manual_seed(0)
    base = build_networks(config)
    rows = []
    for kind, layout in itertools.product(kinds, layouts):
        step = make_variant(kind, base, config, torch.device("cpu"), channels_last=layout == "channels_last")
        step()  # warm-up: oneDNN's kernels chosen, the optimizer's state made
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        seconds, casts = breakdown(step)
        rows.append({"size": size, "kind": kind, "layout": layout, "step_s": statistics.median(times),
                     "flops": step_flops(config), "seconds": seconds, "casts": casts})
        print(f"{size}x{size} {label(kind, layout)}: {rows[-1]['step_s']:.3f} s a step; "
              + ", ".join(f"{k} {v / sum(seconds.values()):.0%}" for k, v in seconds.items()), flush=True)
    return rows


def write_report(args: argparse.Namespace, rows: list[dict], peaks: dict[str, float]) -> None:
    kinds = [kind for kind, _ in KINDS] + [OTHER]
    lines = [
        f"## Where the step's time goes ({args.section})",
        "",
        f"Made by `{' '.join(['python benchmarks/profile_step.py', *sys.argv[1:]])}` on {time.strftime('%Y-%m-%d')}; "
        f"machine: {machine(torch.device('cpu'))}, {torch.get_num_threads()} threads.",
        "",
        "Matrix-multiply peak: " + ", ".join(f"{v:.0f} GFLOP/s in {NAMES[k]}" for k, v in peaks.items()) + ". "
        f"Ours, {args.blocks} residual blocks, batch 1: the step's median time over {args.steps} steps and its "
        "work (as MFU counts it) against the peak of its type; then the share of one profiled step's own CPU "
        "time per kind of operation (`benchmarks/profile_step.py` says which operators each holds), and "
        "the number of tensors converted (`_to_copy` of a tensor with at least one dimension, to another type "
        "or layout, forward and backward).",
        "",
        "| size | step | seconds | of peak | " + " | ".join(kinds) + " | conversions |",
        "|---:|---|---:|---:|" + "---:|" * len(kinds) + "---:|",
    ]
    for r in rows:
        total = sum(r["seconds"].values())
        fraction = r["flops"] / r["step_s"] / 1e9 / peaks[r["kind"]]
        lines.append(f"| {r['size']} | {label(r['kind'], r['layout'])} | {r['step_s']:.3g} | {fraction:.2f} | "
                     + " | ".join(f"{r['seconds'][k] / total:.1%}" for k in kinds) + f" | {r['casts']} |")
    lines.append("")
    replace_section(args.output, args.section, "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sides (default: 64 256)")
    p.add_argument("--blocks", type=int, default=9, help="residual blocks (default: 9, the reference's)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per size, type and layout (default: 3)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="profile the bf16 step too: auto where the CPU has native bf16 (default: auto)")
    p.add_argument("--layouts", nargs="+", choices=("contiguous", "channels_last"), default=["contiguous"],
                   help="the memory layouts of networks and images to profile each step in (default: contiguous, "
                        "what cyclegan train uses on the CPU)")
    p.add_argument("--section", default="profile_step", help="the docs section to write (default: profile_step)")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no_report", action="store_true", help="print the figures, write no docs")
    args = p.parse_args()
    native = cpu_native_bf16() is not None
    if args.bf16 == "on" and not native:
        sys.exit("--bf16 on: this CPU has no native bfloat16 (no AMX, AVX-512 BF16 or Arm BF16 in its flags); its bf16 "
                 "convolutions take a slow fallback that no CPU with bf16 runs, so their profile would mislead; "
                 "profile float32 here (--bf16 off) and bf16 on a CPU that has it")
    kinds = ["ours"] + (["ours_bf16"] if args.bf16 == "on" or (args.bf16 == "auto" and native) else [])
    peaks = {kind: measure_matmul_peak(torch.device("cpu"), torch.float32 if kind == "ours" else torch.bfloat16,
                                       sizes=(1024, 2048), seconds=1.0) for kind in kinds}
    rows = [row for size in args.sizes for row in measure(size, args.blocks, kinds, args.layouts, args.steps)]
    if not args.no_report:
        write_report(args, rows, peaks)


if __name__ == "__main__":
    main()
