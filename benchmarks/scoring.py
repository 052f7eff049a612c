"""Scoring while training (``--eval_every``, ``--keep_best``): does the generator kept as the
best beat the last one, and what does scoring cost?

    python benchmarks/scoring.py                       # docs/benchmarks.md, section "scoring"
    python benchmarks/scoring.py --epochs 2 --seeds 0 --no_report   # smoke run

The task is the demo's (32x32 procedural scenes, the hidden mapping the colour negative;
``cyclegan demo``'s settings) written with 48 held-out pairs. The run scores every epoch on 16
of them (``--eval_images 16``, the fixed seeded draw; PSNR against the truth with
``--eval_paired``) and keeps the best by PSNR. The kept and the last generators are then
measured on the other 32 pairs, which took no part in choosing, next to the demo's baselines
(the input itself, the mean B image). The cost is the time spent scoring over the run's wall
time, at ``--eval_every 1`` (the most often a run scores by epochs).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_step import replace_section  # noqa: E402

from cyclegan import scoring  # noqa: E402
from cyclegan.checkpoint import best_checkpoint_path, checkpoint_path  # noqa: E402
from cyclegan.datasets import write_demo_dataset  # noqa: E402
from cyclegan.demo import demo_config  # noqa: E402
from cyclegan.images import list_images, read_image  # noqa: E402
from cyclegan.inference import load_generator  # noqa: E402
from cyclegan.train import train  # noqa: E402
from cyclegan.utils import psnr  # noqa: E402

N_TEST, N_SCORED = 48, 16


def one_seed(seed: int, epochs: int, work: Path) -> dict[str, float]:
    data = write_demo_dataset(work / f"data{seed}", n_test=N_TEST, seed=seed)
    config = dataclasses.replace(
        demo_config(str(work / f"run{seed}"), epochs, "cpu", seed), dataset_name="custom", dataroot=str(data),
        eval_every=1, eval_paired=True, eval_images=N_SCORED, keep_best="psnr", logger="none",
        sample_interval=10**9)
    spent = [0.0]
    real_score = scoring.Scorer.score

    def timed(self, nets):  # the time scoring takes, inside the run
        start = time.perf_counter()
        try:
            return real_score(self, nets)
        finally:
            spent[0] += time.perf_counter() - start

    scoring.Scorer.score = timed
    try:
        start = time.perf_counter()
        run = train(config)
        wall = time.perf_counter() - start
    finally:
        scoring.Scorer.score = real_score
    scored = set(np.random.default_rng(0).permutation(N_TEST)[:N_SCORED].tolist())  # the Scorer's draw
    files_A, files_B = list_images(data / "test" / "A"), list_images(data / "test" / "B")
    unseen = [k for k in range(N_TEST) if k not in scored]
    real_A = torch.cat([read_image(files_A[k], 3)[0] for k in unseen])
    real_B = torch.cat([read_image(files_B[k], 3)[0] for k in unseen])
    mean_B = torch.cat([read_image(p, 3)[0] for p in list_images(data / "train" / "B")]).mean(0, keepdim=True)

    def score(path: Path) -> float:
        with torch.no_grad():
            return psnr(load_generator(path, "AtoB")(real_A), real_B).mean().item()

    import safetensors

    with safetensors.safe_open(str(best_checkpoint_path(run)), "pt") as f:
        best_epoch = int(f.metadata()["epoch"])
    return {"best": score(best_checkpoint_path(run)), "last": score(checkpoint_path(run, epochs)),
            "best_epoch": best_epoch, "identity": psnr(real_A, real_B).mean().item(),
            "mean_B": psnr(mean_B.expand_as(real_B), real_B).mean().item(), "cost": spent[0] / wall, "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=8, help="epochs of 200 steps (decay from the middle)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no_report", action="store_true", help="print only")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            found = one_seed(seed, args.epochs, Path(tmp))
            rows.append(found)
            print(f"seed {seed}: best (epoch {found['best_epoch']}) {found['best']:.2f} dB, last {found['last']:.2f} "
                  f"dB, identity {found['identity']:.2f}, mean B {found['mean_B']:.2f}; scoring "
                  f"{100 * found['cost']:.1f} % of {found['wall']:.0f} s", flush=True)
    lines = [
        f"Scoring while training on the demo task (`python benchmarks/scoring.py`): {args.epochs} epochs of 200 "
        f"steps, `--eval_every 1 --eval_paired --keep_best psnr --eval_images {N_SCORED}` on {N_SCORED} of "
        f"{N_TEST} held-out pairs; the kept (best) and the last G_AB measured by PSNR (dB) on the other "
        f"{N_TEST - N_SCORED} pairs, which took no part in choosing. 2-core CPU, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| seed | best epoch | best | last | best - last | input itself | mean B | scoring's share of the run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seed, r in zip(args.seeds, rows):
        lines.append(f"| {seed} | {r['best_epoch']} | {r['best']:.2f} | {r['last']:.2f} | {r['best'] - r['last']:+.2f} | "
                     f"{r['identity']:.2f} | {r['mean_B']:.2f} | {100 * r['cost']:.1f} % |")
    diffs = [r["best"] - r["last"] for r in rows]
    lines.append(f"| mean | | {statistics.mean(r['best'] for r in rows):.2f} | "
                 f"{statistics.mean(r['last'] for r in rows):.2f} | {statistics.mean(diffs):+.2f} | | | "
                 f"{100 * statistics.median(r['cost'] for r in rows):.1f} % (median) |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_report:
        replace_section(args.output, "scoring", "# Scoring while training\n\n" + text)


if __name__ == "__main__":
    main()
