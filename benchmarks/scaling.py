"""Multi-process scaling: training img/s with 1 and N processes (torchrun), and the efficiency.

    python benchmarks/scaling.py [--nproc 2] [--size 64] [--batch_size 1] [--steps 30] [--device cpu]

Each configuration trains on the built-in demo data for --steps steps in real torchrun
subprocesses; the rate is the median of the per-step global img/s the training log reports,
after the first quarter of the steps (warm-up). Efficiency = rate(N) / (N * rate(1)). The table
is printed and written to docs/scaling.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

RATE = re.compile(r"\| (\S+) img/s \|")


def run(nproc: int, args: argparse.Namespace, workdir: Path) -> float:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "cyclegan.train",
           "--dataset_name", "demo", "--output", str(workdir / f"run{nproc}"), "--overwrite",
           "--img_height", str(args.size), "--img_width", str(args.size), "--batch_size", str(args.batch_size),
           "--n_epochs", "100", "--decay_epoch", "50", "--max_steps", str(args.steps), "--seed", "0",
           "--sample_interval", "100000", "--n_cpu", "1", "--device", args.device]
    env = dict(os.environ)
    if args.device == "cpu":  # share the cores fairly between processes
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if out.returncode != 0:
        raise SystemExit(f"torchrun with {nproc} processes failed:\n{out.stderr[-3000:]}")
    rates = [float(r) for r in RATE.findall(out.stderr)]
    return statistics.median(rates[len(rates) // 4:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "docs" / "scaling.md"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args, Path(tmp))
        many = run(args.nproc, args, Path(tmp))
    efficiency = many / (args.nproc * one)
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
               + (f", {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""))
    table = (
        f"| processes | global img/s | efficiency |\n| --- | --- | --- |\n"
        f"| 1 | {one:.2f} | 1.00 |\n| {args.nproc} | {many:.2f} | {efficiency:.2f} |\n"
    )
    command = "python benchmarks/scaling.py " + " ".join(sys.argv[1:])
    text = (f"# Multi-process scaling\n\n{args.size}x{args.size}, batch {args.batch_size} per process, "
            f"{args.steps} steps, {args.device}; median of per-step global img/s after warm-up.\n\n"
            f"{table}\nMachine: {machine}. Command: `{command.strip()}`.\n")
    print(text)
    Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
