"""The training step against the literal reference step: img/s, achieved GFLOP/s against the
machine's measured matrix-multiply peak, peak memory, and the data loader's rate.

    python benchmarks/train_step.py            # the full table, written to docs/benchmarks.md
    python benchmarks/train_step.py --quick    # 64x64 batch 1 only, under a minute; prints
                                               # ratio=<ours/reference img/s> peak_fraction=<ours>

Both steps start from the same weights in one process (9 residual blocks, the reference's
networks and losses) and are timed alternately, step after step, so that the machine's noise
falls on both alike; the rate is the median over the timed steps, after warm-up ones.

- ``reference``: ``tests/reference_step.py``, the reference's step transcribed literally, with
  its optimizers (PyTorch's default Adam), in float32.
- ``ours``: ``cyclegan.train.train_step`` with the settings ``cyclegan train`` picks by default
  on a GPU; on the CPU in float32 (``--amp off``), the exact arithmetic.
- ``ours <amp>``: with the GPU options (bf16 autocast; on CUDA with channels_last and
  torch.compile too), to show what they buy; on a CPU with native bf16 (``perf.cpu_native_bf16``:
  AMX or AVX-512 BF16 in its flags) bf16 autocast runs there too.

``--cases 64x1 256x1`` measures only those sizes and batches; ``--section NAME`` writes the table
to another section of docs/benchmarks.md (so that one machine's figures do not replace another's).

FLOPs are counted with ``torch.utils.flop_counter`` (convolutions and matrix multiplies, forward
and backward). The rate and ``peak_fraction`` count each step's work with the networks as built
(as MFU counts a model's FLOPs): ours runs its upsampling convolutions as sub-pixel ones, the same
function with fewer multiplications, so it executes fewer FLOPs than that; the table gives those
too (``executed``). ``peak`` is the best median rate of square float32 matrix multiplies (the
``bf16`` rows are held against the bf16 peak; sizes 1024 and 2048 on the CPU, 4096 and 8192 on a
GPU, measured before and after the cases, the highest kept).

Peak memory is what a step allocates beyond what was live before it (weights, optimizer state,
inputs, replay buffers): on CUDA the caching allocator's high-water mark; on the CPU, which keeps
no such counter, the same quantity from ``torch.profiler``'s record of every tensor allocation
and free of a step, after a profiled step that makes every block freed in the measured one
known. It counts tensor memory, deterministically, not the C allocator's caching around it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reference_step import reference_optimizers, reference_step  # noqa: E402

from cyclegan import datasets  # noqa: E402
from cyclegan.perf import cpu_native_bf16, measure_matmul_peak, prepare_networks, resolve_speed, step_flops  # noqa: E402
from cyclegan.registry import build_networks  # noqa: E402
from cyclegan.options import TrainConfig  # noqa: E402
from cyclegan.step import build_optimizers, train_step  # noqa: E402
from cyclegan.utils import ReplayBuffer  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_variant(kind: str, base: dict, config: TrainConfig, device: torch.device,
                 channels_last: bool | None = None):
    """A closure running one step of ``kind`` on its own copy of the networks; ``channels_last``
    (ours only) sets the layout instead of the kind's default."""
    import copy
    import dataclasses

    nets = copy.deepcopy(base)
    for net in nets.values():
        net.to(device)
    gen = torch.Generator().manual_seed(1)
    shape = (config.batch_size, 3, config.img_height, config.img_width)
    real_A = (torch.rand(shape, generator=gen) * 2 - 1).to(device)
    real_B = (torch.rand(shape, generator=gen) * 2 - 1).to(device)
    if kind == "reference":
        opts = reference_optimizers(nets)
        pools = {k: ReplayBuffer() for k in "AB"}
        return lambda: reference_step(nets, opts, pools, real_A, real_B)
    if kind == "ours":  # the defaults, but float32 on the CPU: the bf16 rows are the other precision
        speed = resolve_speed("auto" if device.type == "cuda" else "off", "auto", False, device)
    else:  # the GPU options: bf16 autocast, and on CUDA channels_last and compile
        cuda = device.type == "cuda"
        speed = resolve_speed("bf16", "on" if cuda else "off", cuda, device)
    if channels_last is not None:
        speed = dataclasses.replace(speed, channels_last=channels_last)
    prepare_networks(nets, speed, device)  # as cyclegan train does
    if speed.channels_last:
        real_A = real_A.contiguous(memory_format=torch.channels_last)
        real_B = real_B.contiguous(memory_format=torch.channels_last)
    opts = build_optimizers(nets, config)
    pools = {k: ReplayBuffer() for k in "AB"}
    return lambda: train_step(nets, opts, pools, real_A, real_B, config.lambda_cyc, config.lambda_id,
                              amp_dtype=speed.amp_dtype)


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def cpu_step_memory(step) -> float:
    """MiB a step allocates beyond what was live before it (see the module docstring)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    def allocations() -> list[tuple[int, int]]:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        found, todo = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while todo:
            event = todo.pop()
            todo.extend(event.children)
            if event.typed[0] == _EventType.Allocation and event.typed[1].device.type == "cpu":
                found.append((event.start_time_ns, event.typed[1].alloc_size))  # negative: a free
        return sorted(found)

    allocations()  # every block the measured step frees is then one the profiler saw allocated
    live = peak = 0
    for _, size in allocations():
        live += size
        peak = max(peak, live)
    return peak / 2**20


def step_memory(step, device: torch.device) -> float:
    if device.type != "cuda":
        return cpu_step_memory(step)
    step()
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def time_alternately(fns: dict, steps: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` per call, called in turn, step after step, so that the machine's
    noise falls on all alike; the first ``warmup`` rounds are not kept."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    return times


def measure(size: int, batch: int, kinds: list[str], device: torch.device, steps: int, warmup: int,
            memory: bool) -> dict:
    config = TrainConfig(img_height=size, img_width=size, batch_size=batch)
    torch.manual_seed(0)
    base = build_networks(config)
    fns = {k: make_variant(k, base, config, device) for k in kinds}
    executed = {k: count_flops(fns[k]) for k in kinds}  # also the first (warm-up) step
    # The work of each step with the networks as built (as MFU counts a model's FLOPs, not what
    # an algorithm executes): the reference step's own count; for ours, its step on the plain
    # networks, which the progress line of cyclegan train uses too.
    flops = {k: executed[k] if k == "reference" else step_flops(config) for k in kinds}
    mib = {k: step_memory(fns[k], device) if memory else None for k in kinds}
    times = time_alternately(fns, steps, warmup, device)
    return {k: {"img_s": batch / statistics.median(times[k]), "flops": flops[k], "executed_flops": executed[k],
                "memory_mib": mib[k]} for k in kinds}


def loader_rate(size: int, workers: int, n_images: int = 48, batches: int = 12) -> float:
    """Pairs of images (A and B) per second decoded from JPEG and transformed as in training."""
    from PIL import Image
    from torch.utils.data import DataLoader

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for domain in "AB":
            folder = Path(tmp) / "train" / domain
            folder.mkdir(parents=True)
            for k in range(n_images):  # photo-sized: the transform resizes them down
                small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
                Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(folder / f"{k:03d}.jpg", quality=90)
        data = datasets.ImageDataset(tmp, datasets.reference_transforms(size, size), unaligned=True)
        loader = DataLoader(data, batch_size=4, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
        it = iter(loader)
        next(it)  # workers started
        t = time.perf_counter()
        count = 0
        for _ in range(batches):
            try:
                count += next(it)["A"].size(0)
            except StopIteration:
                it = iter(loader)
                count += next(it)["A"].size(0)
        return count / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64x64 batch 1 only; ends with ratio=... peak_fraction=...")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: by size)")
    p.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--cases", nargs="+", metavar="SIZExBATCH", help="only these cases, e.g. 64x1 256x1")
    p.add_argument("--section", default="train_step", help="the docs section to write (default: train_step)")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    cuda = device.type == "cuda"
    bf16_here = cuda and torch.cuda.is_bf16_supported() or (not cuda and cpu_native_bf16() is not None)
    kinds = ["reference", "ours"] + ([] if args.quick or not bf16_here else ["ours_bf16"])
    peak_sizes = (4096, 8192) if cuda else (1024, 2048)
    # The peak is measured before and after the cases, and the higher taken: a moment of noise
    # on the machine must not pass for its peak.
    peak32 = measure_matmul_peak(device, torch.float32, sizes=peak_sizes, seconds=1.0)
    peak16 = measure_matmul_peak(device, torch.bfloat16, sizes=peak_sizes, seconds=1.0) if "ours_bf16" in kinds else None
    cases = [(64, 1)] if args.quick else [(64, 1), (64, 4), (128, 1), (128, 4), (256, 1), (256, 4)]
    if args.cases:
        cases = [tuple(int(v) for v in c.split("x")) for c in args.cases]
    rows = []
    for size, batch in cases:
        steps = args.steps or (15 if cuda else max(5 if batch * size**2 <= 256**2 else 3,
                                                   int(12 * (64 / size) ** 2 / batch) + 2))
        result = measure(size, batch, kinds, device, steps, warmup=3 if cuda else 0, memory=not args.quick)
        ref = result["reference"]["img_s"]
        for k in kinds:
            r = result[k]
            gflops = r["flops"] * r["img_s"] / batch / 1e9
            rows.append({"size": size, "batch": batch, "variant": k, "img_s": r["img_s"], "ratio": r["img_s"] / ref,
                         "gflop_step": r["flops"] / 1e9, "executed_gflop_step": r["executed_flops"] / 1e9,
                         "gflops": gflops, "memory_mib": r["memory_mib"]})
            print(json.dumps(rows[-1]), flush=True)
    peak32 = max(peak32, measure_matmul_peak(device, torch.float32, sizes=peak_sizes, seconds=1.0))
    if peak16:
        peak16 = max(peak16, measure_matmul_peak(device, torch.bfloat16, sizes=peak_sizes, seconds=1.0))
    for row in rows:
        peak = peak16 if row["variant"] == "ours_bf16" else peak32
        row["peak_fraction"] = row["gflops"] / peak
        row["executed_peak_fraction"] = row["peak_fraction"] * row["executed_gflop_step"] / row["gflop_step"]
    if args.quick:
        ours = next(r for r in rows if r["variant"] == "ours")
        print(f"ratio={ours['ratio']:.3f} peak_fraction={ours['peak_fraction']:.3f}")
        return
    workers = min(8, os.cpu_count() or 1)
    loader = loader_rate(256, workers)
    write_report(Path(args.output), rows, peak32, peak16, loader, workers, device, args.section)


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # The vector instructions PyTorch found: virtual machines of one CPU model may expose AVX-512
    # (and native bfloat16) or hide it, which moves every figure here.
    text = f"{cpu} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} CPU cores, torch {torch.__version__}"
    return text + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")


def write_report(path: Path, rows: list[dict], peak32: float, peak16: float | None, loader: float, workers: int,
                 device: torch.device, section: str = "train_step") -> None:
    names = {"reference": "reference", "ours": "ours", "ours_bf16": "ours, bf16" + (
        " + channels_last + compile" if device.type == "cuda" else "")}
    lines = [
        "# Training-step benchmark" if section == "train_step" else f"## Training-step benchmark ({section})",
        "",
        f"Made by `python benchmarks/train_step.py{''.join(' ' + a for a in sys.argv[1:])}` on "
        f"{time.strftime('%Y-%m-%d')}; machine: {machine(device)}.",
        "",
        f"Measured matrix-multiply peak: {peak32:.0f} GFLOP/s in float32"
        + (f", {peak16:.0f} GFLOP/s in bfloat16." if peak16 else "."),
        "",
        "The reference is the literal transcription of the reference's step (`tests/reference_step.py`), "
        "in float32; *ours* is `train_step` with the defaults `cyclegan train` takes on a GPU, and in float32 "
        "(`--amp off`) on the CPU; *ours, bf16* the same in bfloat16 autocast. Both "
        "start from the same weights, 9 residual blocks, and are timed alternately in one process; img/s "
        "is the median over the timed steps. Ratio = img/s over the reference's at the same size and batch. "
        "Memory: the peak of what one step allocates beyond what was live before it ("
        + ("the CUDA allocator's high-water mark" if device.type == "cuda" else
           "tensor memory, from torch.profiler's record of the step's allocations and frees") + ").",
        "",
        "GFLOP/step is the step's work with the networks as built, as MFU counts a model's FLOPs (for ours: "
        "its step on the plain networks, as the progress line of `cyclegan train` counts it; it skips the "
        "discriminators' weight gradients of the generator update); *executed* is what the step runs, counted "
        "by `torch.utils.flop_counter`: fewer for ours, whose upsampling convolutions run as sub-pixel ones "
        "(`UpsampleConv2d`: 16 multiplications where the plain ones take 36, the same function). GFLOP/s and "
        "*of peak* are the work per second, against the measured float32 peak (bfloat16 for the bf16 rows); "
        "*executed of peak* is the executed FLOPs' rate against the same peak.",
        "",
        "| size | batch | step | img/s | ratio | GFLOP/step | executed | GFLOP/s | of peak | executed of peak "
        "| memory (MiB) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mem = f"{r['memory_mib']:.0f}" if r["memory_mib"] is not None else "-"
        lines.append(f"| {r['size']} | {r['batch']} | {names[r['variant']]} | {r['img_s']:.3g} | {r['ratio']:.2f} | "
                     f"{r['gflop_step']:.0f} | {r['executed_gflop_step']:.0f} | {r['gflops']:.0f} | "
                     f"{r['peak_fraction']:.2f} | {r['executed_peak_fraction']:.2f} | {mem} |")
    lines += [
        "",
        f"Data loading: {loader:.1f} pairs/s (an A and a B image, 640x480 JPEG decoded, resized and cropped to "
        f"256x256, flipped) with {workers} worker processes, against the training step's img/s above at 256x256.",
        "",
    ]
    replace_section(path, section, "\n".join(lines))


def replace_section(path: Path, name: str, text: str) -> None:
    """Write ``text`` as the section ``name`` of ``path``, leaving other benchmarks' sections."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    old = path.read_text() if path.exists() else ""
    if start in old:
        head, _, rest = old.partition(start)
        _, _, tail = rest.partition(end)
        text = f"{head}{start}\n{text}{end}{tail}"
    else:
        text = f"{old}{start}\n{text}{end}\n"
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
