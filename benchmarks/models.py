"""CycleGAN against CUT, FastCUT and pix2pix (``--model``), ours all four: the speed and memory
of a training step, and the quality each reaches in the same wall-clock time on a task with a
known answer (``--task paired``: the demo's scenes kept in pairs, where pix2pix learns from the
pairs and the others from the same images unpaired).

    python benchmarks/models.py                      # docs/benchmarks.md, section "models"
    python benchmarks/models.py --task photo --no_speed   # the quality part on photographs
    python benchmarks/models.py --no_speed --seconds 5 --seeds 0 --no_report   # smoke run (pix2pix needs 256 for speed)

1. Speed and memory: each model's step (``step.run_step``) at ``--size`` (256) batch 1 with its
   defaults (9 residual blocks, 64 filters; CUT/FastCUT with their official settings), built in
   one process and timed alternately, step after step, so the machine's noise falls on all
   alike; img/s is the median over the timed steps. Memory: the tensor peak of a step beyond
   what was live before it (CUDA: the allocator's high-water mark; CPU: torch.profiler's record
   of the step's allocations, as ``benchmarks/train_step.py``).
2. Quality at equal wall-clock: the built-in demo task (32x32, a hidden colour negative; the
   settings of ``cyclegan demo``, 3 residual blocks) trained by each model for ``--seconds`` of
   steps at the initial learning rate, for each seed; then G_AB(test A) is scored by PSNR against
   the true B, with the demo's baselines (the input itself, the mean B image). ``--task photo``:
   the photographic task of ``benchmarks/quality.py`` (``tests/photo_task.py``: a colour mapping
   that keeps every photograph's layout) at 32x32 with the same settings but the default losses.

CUT and FastCUT train the official CUT's anti-aliased networks; the ``(strided)`` rows are them
with the strided networks they had before (``STRIDED``), in the same run, so that what the
official networks change can be told from the machine's noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from photo_task import write_photo_task  # noqa: E402
from train_step import machine, replace_section, step_memory, time_alternately  # noqa: E402

from cyclegan.datasets import ImageDataset, build_transforms, write_demo_dataset  # noqa: E402
from cyclegan.demo import demo_config  # noqa: E402
from cyclegan.images import list_images, read_image  # noqa: E402
from cyclegan.options import TrainConfig  # noqa: E402
from cyclegan.paired import PairedDataset  # noqa: E402
from cyclegan.registry import MODELS, build_networks, get_model  # noqa: E402
from cyclegan.perf import prepare_networks, resolve_speed  # noqa: E402
from cyclegan.step import build_optimizers, run_step  # noqa: E402
from cyclegan.utils import ReplayBuffer, psnr, seed_everything  # noqa: E402


# Arms beside the models: CUT and FastCUT with the networks they had before they took the official
# CUT's (strided convolutions, the reference's nearest-neighbour upsampling, no fine-tuning phase;
# PatchNCE on the same layers, numbered without the blur layers), to tell what the official
# networks change, in the same run.
STRIDED = {"no_antialias": True, "no_antialias_up": True, "upsample": "nearest", "finetune_phase": False}
ARMS = {f"{m} (strided)": m for m in ("cut", "fastcut")}


def arm_config(arm: str, config: TrainConfig) -> TrainConfig:
    """``config`` (of the arm's model) with the arm's networks: the strided layer numbers are
    the image, both downsampling convolutions, the first and the fifth (or last) block."""
    if arm not in ARMS:
        return config
    last = 10 + min(4, config.n_residual_blocks - 1)
    return dataclasses.replace(config, **STRIDED, nce_layers=f"0,4,7,10,{last}")


def model_config(model: str, **values) -> TrainConfig:
    base = ARMS.get(model, model)
    return arm_config(model, TrainConfig(model=base, **{**get_model(base).presets, **values}))


def arms() -> list[str]:
    return list(MODELS) + list(ARMS)


def make_step(model: str, size: int, device: torch.device):
    config = model_config(model, img_height=size, img_width=size)
    torch.manual_seed(0)
    nets = build_networks(config)
    speed = resolve_speed("auto", "auto", False, device)
    prepare_networks(nets, speed, device)
    opts = build_optimizers(nets, config)
    buffers = {k: ReplayBuffer(config.pool_size) if config.pool_size > 0 else None for k in ("A", "B")}
    real_A = torch.rand(1, 3, size, size, device=device) * 2 - 1
    real_B = torch.rand(1, 3, size, size, device=device) * 2 - 1
    return lambda: run_step(config, nets, opts, buffers, real_A, real_B, amp_dtype=speed.amp_dtype)


def speed_and_memory(size: int, steps: int, warmup: int, device: torch.device) -> list[dict]:
    fns = {m: make_step(m, size, device) for m in arms()}
    mib = {m: step_memory(fns[m], device) for m in arms()}
    times = time_alternately(fns, steps, warmup, device)
    rows = [{"model": m, "img_s": 1 / statistics.median(times[m]), "memory_mib": mib[m]} for m in arms()]
    for r in rows:
        r["speed_ratio"] = r["img_s"] / rows[0]["img_s"]
        r["memory_ratio"] = r["memory_mib"] / rows[0]["memory_mib"]
        print(r, flush=True)
    return rows


def train_for(model: str, seed: int, seconds: float, data: Path, task: str) -> dict:
    """The demo's settings for ``model`` (the photo task: with the default losses), trained for
    ``seconds`` of steps (no decay); PSNR on the test pairs."""
    config = arm_config(model, demo_config(str(data), n_epochs=2, device="cpu", seed=seed, model=ARMS.get(model, model)))
    if task == "photo":
        config = dataclasses.replace(config, lambda_id=TrainConfig.lambda_id)
    seed_everything(seed)
    nets = build_networks(config)
    opts = build_optimizers(nets, config)
    buffers = {k: ReplayBuffer(config.pool_size) if config.pool_size > 0 else None for k in ("A", "B")}
    if get_model(config.model).paired:  # pix2pix: the pairs themselves
        dataset: Any = PairedDataset(data, build_transforms("reference", 32, 32))
    else:  # the same images, unpaired: the others cannot use pairs
        dataset = ImageDataset(data, build_transforms("reference", 32, 32), unaligned=True)
    generator = torch.Generator().manual_seed(seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=True, generator=generator)
        for batch in loader:
            run_step(config, nets, opts, buffers, batch["A"], batch["B"])
            steps += 1
            if time.perf_counter() - start >= seconds:
                break

    def read_all(folder: Path) -> torch.Tensor:
        return torch.cat([read_image(p, 3)[0] for p in list_images(folder)])

    real_A, real_B = read_all(data / "test" / "A"), read_all(data / "test" / "B")
    G = nets["G_AB"].eval()
    with torch.no_grad():
        fake_B = G(real_A)
    size = real_B.shape[-2:]
    train_B = torch.nn.functional.interpolate(read_all(data / "train" / "B"), size=size, mode="bicubic",
                                              align_corners=False)
    mean_B = train_B.mean(0, keepdim=True).expand_as(real_B)
    result = {"model": model, "seed": seed, "steps": steps, "psnr": psnr(fake_B, real_B).mean().item(),
              "identity": psnr(real_A, real_B).mean().item(), "mean_B": psnr(mean_B, real_B).mean().item()}
    print(result, flush=True)
    return result


def task_models(task: str) -> list[str]:
    """The models a task compares: on unpaired data those that train without pairs; on the paired
    task all (pix2pix on the pairs, the others on the same images unpaired)."""
    if task == "paired":
        return list(MODELS)
    return [m for m in arms() if not get_model(ARMS.get(m, m)).paired]


def quality(seeds: list[int], seconds: float, task: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        if task == "photo":
            data = write_photo_task(Path(tmp) / "photo", size=32, n_train=200)
        else:
            data = write_demo_dataset(Path(tmp) / "demo", size=32, paired=task == "paired")
        return [train_for(m, s, seconds, data, task) for s in seeds for m in task_models(task)]


TASKS = {
    "demo": "the demo's task (32x32, hidden colour negative, 3 residual blocks, `cyclegan demo --model M` settings)",
    "photo": "the photographic task of `benchmarks/quality.py` (a colour mapping that keeps the layout; 32x32, 3 "
             "residual blocks, the demo's settings with the default losses)",
    "paired": "the demo's task with the training scenes kept in pairs (train/B/k is the translation of train/A/k): "
              "pix2pix trains on the pairs, the others on the same images unpaired",
}


def write_report(path: Path, args: argparse.Namespace, rows: list[dict], results: list[dict],
                 device: torch.device) -> None:
    lines = [
        "# CycleGAN, CUT, FastCUT and pix2pix (`--model`)" if args.task == "demo" else f"## The models on the {args.task} task",
        "",
        f"Made by `python benchmarks/models.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` on "
        f"{time.strftime('%Y-%m-%d')}; machine: {machine(device)}.",
        "",
    ]
    if rows:
        lines += speed_lines(args, rows)
    if results:
        lines += quality_lines(args, results)
    replace_section(path, "models" if args.task == "demo" else f"models_{args.task}", "\n".join(lines) + "\n\n")


def speed_lines(args: argparse.Namespace, rows: list[dict]) -> list[str]:
    lines = [
        f"A training step at {args.size}x{args.size}, batch 1, each model with its defaults (9 residual blocks, "
        f"64 filters; CUT and FastCUT: the official CUT's anti-aliased networks, and as before them in the "
        f"(strided) rows; pix2pix: the U-Net 256 with batch norm; float32 on the CPU), all built in one process and "
        f"timed alternately (median of "
        f"{args.steps} steps after {args.warmup}). Memory: the tensor peak of a step beyond what was live before it.",
        "",
        "| model | img/s | img/s vs CycleGAN | step memory (MiB) | memory vs CycleGAN |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['img_s']:.3g} | {r['speed_ratio']:.2f} | {r['memory_mib']:.0f} | "
                     f"{r['memory_ratio']:.2f} |")
    return lines + [""]


def quality_lines(args: argparse.Namespace, results: list[dict]) -> list[str]:
    first = results[0]
    lines = [
        f"Quality in equal wall-clock time: {TASKS[args.task]}, {args.seconds:.0f} s of training at the initial "
        f"learning rate per run, seeds {', '.join(map(str, args.seeds))}; PSNR (dB) of G_AB(test A) against the "
        f"true B. Baselines: the input itself {first['identity']:.2f}, the mean B image {first['mean_B']:.2f}.",
        "",
        "| model | steps in that time (mean) | PSNR mean | spread (std) | per seed |",
        "|---|---:|---:|---:|---|",
    ]
    for m in task_models(args.task):
        mine = [r for r in results if r["model"] == m]
        values = [r["psnr"] for r in mine]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {m} | {statistics.mean(r['steps'] for r in mine):.0f} | {statistics.mean(values):.2f} | "
                     f"{spread:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (default: 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seconds", type=float, default=60.0, help="training time per model and seed (default: 60)")
    p.add_argument("--no_quality", action="store_true", help="only the speed and memory table")
    p.add_argument("--no_speed", action="store_true", help="only the quality table")
    p.add_argument("--task", choices=tuple(TASKS), default="demo", help="the quality task (default: demo)")
    p.add_argument("--no_report", action="store_true")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = [] if args.no_speed else speed_and_memory(args.size, args.steps, args.warmup, device)
    results = [] if args.no_quality else quality(args.seeds, args.seconds, args.task)
    if not args.no_report:
        write_report(args.output, args, rows, results, device)


if __name__ == "__main__":
    main()
