"""Memory of a training step at large sizes: the reference step against ours plain and ours with
``--activation_checkpointing`` blocks and full, side by side in one process.

    python benchmarks/memory.py                  # 256, 512 and 1024 at batch 1; docs/benchmarks.md
    python benchmarks/memory.py --sizes 256      # one size, printed (and written)

Each variant starts from the same weights (9 residual blocks). Memory is the tensor peak of a
step beyond what was live before it, from torch.profiler's record of its allocations and frees
on the CPU (the CUDA allocator's high-water mark on a GPU), as benchmarks/train_step.py counts
it. img/s is the median over timed steps, the variants alternating step by step.

A variant whose step would not fit this machine's memory is not run: its peak is *computed*
from its measured peak at the largest size that ran, scaled by the ratio of its activations at
the two sizes traced on the meta device (``memory.saved_activation_bytes``; the reference step
keeps what ours keeps without checkpointing, up to the sub-pixel layers' few tensors), and
labelled so.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from reference_step import reference_optimizers, reference_step  # noqa: E402
from train_step import machine, replace_section, step_memory, sync  # noqa: E402

from cyclegan.memory import available_bytes, saved_activation_bytes  # noqa: E402
from cyclegan.registry import build_networks  # noqa: E402
from cyclegan.options import TrainConfig  # noqa: E402
from cyclegan.perf import prepare_networks, resolve_speed  # noqa: E402
from cyclegan.step import build_optimizers, train_step  # noqa: E402
from cyclegan.utils import ReplayBuffer  # noqa: E402

VARIANTS = ("reference", "off", "blocks", "full")
NAMES = {"reference": "reference", "off": "ours", "blocks": "ours, checkpointing blocks",
         "full": "ours, checkpointing full"}


def make_step(kind: str, base: dict, config: TrainConfig, device: torch.device):
    nets = copy.deepcopy(base)
    for net in nets.values():
        net.to(device)
    gen = torch.Generator().manual_seed(1)
    shape = (1, 3, config.img_height, config.img_width)
    real_A = (torch.rand(shape, generator=gen) * 2 - 1).to(device)
    real_B = (torch.rand(shape, generator=gen) * 2 - 1).to(device)
    pools = {k: ReplayBuffer() for k in "AB"}
    if kind == "reference":
        opts = reference_optimizers(nets)
        return lambda: reference_step(nets, opts, pools, real_A, real_B)
    prepare_networks(nets, resolve_speed("auto", "auto", False, device), device, kind)
    opts = build_optimizers(nets, config)
    return lambda: train_step(nets, opts, pools, real_A, real_B, config.lambda_cyc, config.lambda_id)


def fits(kind: str, config: TrainConfig, device: torch.device) -> bool:
    """Whether a step is safe to run here: its traced activations, with a margin, within what
    the device has free."""
    mode = "off" if kind == "reference" else kind
    return saved_activation_bytes(config, mode) * 1.6 < available_bytes(device)


def measure(size: int, device: torch.device, steps: int, measured: dict) -> list[dict]:
    config = TrainConfig(img_height=size, img_width=size)
    torch.manual_seed(0)
    base = build_networks(config)
    rows, steps_fns = [], {}
    for kind in VARIANTS:
        if fits(kind, config, device):
            steps_fns[kind] = make_step(kind, base, config, device)
            mib = step_memory(steps_fns[kind], device)  # two profiled steps: the warm-up
            measured[kind] = (size, mib)
            rows.append({"size": size, "variant": kind, "memory_mib": mib, "computed": False})
        elif kind in measured:
            at, mib = measured[kind]
            mode = "off" if kind == "reference" else kind
            scale = saved_activation_bytes(config, mode) / saved_activation_bytes(
                TrainConfig(img_height=at, img_width=at), mode)
            rows.append({"size": size, "variant": kind, "memory_mib": mib * scale, "computed": True, "from": at})
        print(f"{size} {kind}: {rows[-1]['memory_mib']:.0f} MiB" if rows and rows[-1]["variant"] == kind
              else f"{size} {kind}: skipped", flush=True)
    times: dict[str, list[float]] = {k: [] for k in steps_fns}
    for _ in range(steps):
        for kind, fn in steps_fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[kind].append(time.perf_counter() - t)
    for row in rows:
        if row["variant"] in times:
            row["img_s"] = 1 / statistics.median(times[row["variant"]])
    ref = next((r for r in rows if r["variant"] == "reference"), None)
    for row in rows:
        row["memory_ratio"] = row["memory_mib"] / ref["memory_mib"] if ref else None
        row["speed_ratio"] = row["img_s"] / ref["img_s"] if ref and "img_s" in row and "img_s" in ref else None
        print(row, flush=True)
    return rows


def write_report(path: Path, rows: list[dict], device: torch.device) -> None:
    lines = [
        "# Memory at large sizes (activation checkpointing)",
        "",
        f"Made by `python benchmarks/memory.py` on {time.strftime('%Y-%m-%d')}; machine: {machine(device)}.",
        "",
        "Batch 1, 9 residual blocks, float32, every variant from the same weights in one process. Memory: the "
        "tensor peak of a step beyond what was live before it ("
        + ("the CUDA allocator's high-water mark" if device.type == "cuda" else "torch.profiler's record of its "
           "allocations and frees") + "). img/s: the median of timed steps, the variants alternating. Ratios are "
        "against the reference step at the same size. *computed*: not run here (it would not fit this machine's "
        "memory); its measured peak at a smaller size scaled by the ratio of its activations at the two sizes, "
        "traced on the meta device.",
        "",
        "| size | step | memory (MiB) | memory / reference | img/s | img/s / reference |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        mem = f"{r['memory_mib']:.0f}" + (f" (computed from {r['from']})" if r["computed"] else "")
        ratio = f"{r['memory_ratio']:.2f}" if r["memory_ratio"] is not None else "-"
        img_s = f"{r['img_s']:.3g}" if "img_s" in r else "-"
        speed = f"{r['speed_ratio']:.2f}" if r.get("speed_ratio") is not None else "-"
        lines.append(f"| {r['size']} | {NAMES[r['variant']]} | {mem} | {ratio} | {img_s} | {speed} |")
    replace_section(path, "memory", "\n".join(lines) + "\n\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--steps", type=int, default=1, help="timed steps per variant and size (default: 1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()
    device = torch.device(args.device)
    measured: dict = {}
    rows = []
    for size in args.sizes:
        rows += measure(size, device, args.steps, measured)
    write_report(Path(args.output), rows, device)


if __name__ == "__main__":
    main()
