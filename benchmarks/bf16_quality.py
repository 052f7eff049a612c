"""bfloat16 against float32 on the built-in demo task, with intervals: does bf16 autocast cost
quality on a task where learning is clearly seen?

    python benchmarks/bf16_quality.py                  # 5 seeds x 2 precisions, about 15 minutes on 2 cores
    python benchmarks/bf16_quality.py --seeds 0 --n_epochs 1 --no_report   # smoke run

Each run is ``cyclegan demo``'s training (``demo.demo_config``: the demo scenes, 32x32, 3 residual
blocks, no identity loss, 3 epochs of 200 steps) with ``--amp off`` or ``--amp bf16``, one thread,
its own process, ``--parallel`` at once; G_AB is scored as the demo scores it (PSNR against the 16
true test pairs), next to doing nothing and ignoring the input. Each precision is reported with
its mean, standard deviation and 95 % interval (Student's t), and bf16 minus float32 with the
95 % interval of the difference (Welch). On a CPU without native bfloat16 the bf16 runs are slow
emulation: the speed figure then says nothing of what bf16 can do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import difference, interval  # noqa: E402
from train_step import machine, replace_section  # noqa: E402

from cyclegan.perf import cpu_native_bf16  # noqa: E402


def job(args: argparse.Namespace) -> None:
    """One run in this process (one thread): its PSNR and time as JSON on stdout."""
    from cyclegan.demo import demo_config, score_demo
    from cyclegan.train import train

    torch.set_num_threads(1)
    run_dir = args.work / f"{args.amp}_{args.seed}"
    config = dataclasses.replace(demo_config(str(run_dir), args.n_epochs, "cpu", args.seed), amp=args.amp,
                                 logger="none")
    start = time.perf_counter()
    train(config)
    seconds = time.perf_counter() - start
    print(json.dumps({"amp": args.amp, "seed": args.seed, "seconds": seconds, **score_demo(run_dir, args.n_epochs)}))


def launch(args: argparse.Namespace, amp: str, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--job", "--amp", amp, "--seed", str(seed), "--work", str(args.work),
           "--n_epochs", str(args.n_epochs)]
    done = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{amp} seed {seed} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{amp:4s} seed {seed}: {result['psnr_G_AB']:.2f} dB ({result['seconds']:.0f} s)", flush=True)
    return result


def write_report(args: argparse.Namespace, results: list[dict], elapsed: float) -> None:
    psnr = {amp: [r["psnr_G_AB"] for r in results if r["amp"] == amp] for amp in ("off", "bf16")}
    seconds = {amp: statistics.median(r["seconds"] for r in results if r["amp"] == amp) for amp in ("off", "bf16")}
    names = {"off": "float32 (`--amp off`)", "bf16": "bfloat16 autocast (`--amp bf16`)"}
    lines = [
        "## bfloat16 against float32 on the demo task",
        "",
        f"Made by `python benchmarks/bf16_quality.py` on {time.strftime('%Y-%m-%d')} in {elapsed / 60:.0f} min "
        f"({args.parallel} runs at a time, one thread each); machine: {machine(torch.device('cpu'))}; native "
        f"bfloat16: {cpu_native_bf16() or 'none'}.",
        "",
        f"The demo's training (32x32 scenes, 3 residual blocks, no identity loss, {args.n_epochs * 200} steps), "
        f"seeds {', '.join(str(s) for s in args.seeds)}; PSNR (dB) of G_AB against the 16 true test pairs. Doing "
        f"nothing scores {results[0]['psnr_identity']:.2f} dB, ignoring the input {results[0]['psnr_mean_B']:.2f}.",
        "",
        "| precision | mean (dB) | std | 95 % interval | per seed | median seconds a run |",
        "|---|---:|---:|---|---|---:|",
    ]
    for amp in ("off", "bf16"):
        mean, sd, half = interval(psnr[amp])
        per = ", ".join(f"{v:.2f}" for v in psnr[amp])
        lines.append(f"| {names[amp]} | {mean:.2f} | {sd:.2f} | {mean - half:.2f} to {mean + half:.2f} | {per} | "
                     f"{seconds[amp]:.0f} |")
    diff, half = difference(psnr["bf16"], psnr["off"])
    lines += ["", f"bfloat16 minus float32: {diff:+.2f} dB, 95 % interval {diff - half:+.2f} to {diff + half:+.2f} "
                  f"({'0 lies inside it' if abs(diff) <= half else '0 lies outside it'}). A bf16 run took "
                  f"{seconds['bf16'] / seconds['off']:.2f}x the time of a float32 run (whole runs, one thread, "
                  "32x32: small layers, where bf16 gains least).", ""]
    replace_section(args.output, "bf16_demo", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n_epochs", type=int, default=3)
    p.add_argument("--parallel", type=int, default=2, help="runs at once, one thread each (default: 2)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bf16_quality")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no_report", action="store_true")
    p.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--amp", default="off", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        return job(args)
    start = time.perf_counter()
    pairs = [(amp, seed) for seed in args.seeds for amp in ("off", "bf16")]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda a: launch(args, *a), pairs))
    (args.work / "results.json").write_text(json.dumps(results))
    for amp in ("off", "bf16"):
        values = [r["psnr_G_AB"] for r in results if r["amp"] == amp]
        print(f"{amp}: {statistics.mean(values):.2f} +- {statistics.stdev(values) if len(values) > 1 else 0:.2f} dB")
    if not args.no_report:
        write_report(args, results, time.perf_counter() - start)


if __name__ == "__main__":
    main()
