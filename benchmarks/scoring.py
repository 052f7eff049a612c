"""Scoring while training (``--eval_every``, ``--keep_best``): does the generator kept as the
best beat the last one, and what does scoring cost?

    python benchmarks/scoring.py                       # docs/benchmarks.md, section "scoring"
    python benchmarks/scoring.py --epochs 2 --seeds 0 --no_report   # smoke run
    python benchmarks/scoring.py --cost                # section "scoring cost": FID's price

The task is the demo's (32x32 procedural scenes, the hidden mapping the colour negative;
``cyclegan demo``'s settings) written with 48 held-out pairs. The run scores every epoch on 16
of them (``--eval_images 16``, the fixed seeded draw; PSNR against the truth with
``--eval_paired``) and keeps the best by PSNR. The kept and the last generators are then
measured on the other 32 pairs, which took no part in choosing, next to the demo's baselines
(the input itself, the mean B image). The cost is the time spent scoring over the run's wall
time, at ``--eval_every 1`` (the most often a run scores by epochs).

``--cost``: what one scoring with FID and KID costs at the default ``--eval_images`` (50)
against a training step, for the reference settings (256x256, 9 blocks) and the demo's (32x32,
3 blocks), all in one process: a step (``step.run_step``, median of 3 after 1), the
``Scorer``'s set-up (the real images' features, once a run) and one scoring (FID, KID and the
cycle error; median of 2), and the same scoring without the Inception network. The Inception
network is one of the real one's shape with random weights (``benchmarks/inception_shape.py``):
the same work, meaningless features. From these: the epoch length (in steps) from which scoring
every epoch takes at most 10 % of a run.
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

from inception_shape import write_inception_shaped  # noqa: E402
from train_step import machine, replace_section, time_alternately  # noqa: E402

from cyclegan import scoring  # noqa: E402
from cyclegan.checkpoint import best_checkpoint_path, checkpoint_path  # noqa: E402
from cyclegan.datasets import write_demo_dataset  # noqa: E402
from cyclegan.demo import demo_config  # noqa: E402
from cyclegan.images import list_images, read_image  # noqa: E402
from cyclegan.inference import load_generator  # noqa: E402
from cyclegan.options import TrainConfig  # noqa: E402
from cyclegan.registry import build_networks  # noqa: E402
from cyclegan.step import build_optimizers, run_step  # noqa: E402
from cyclegan.loader import open_run_data  # noqa: E402
from cyclegan.train import train  # noqa: E402
from cyclegan.utils import ReplayBuffer  # noqa: E402
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


EPOCH_STEPS = {"the demo": 200, "horse2zebra": 1334, "monet2photo": 6287}  # batch 1: the larger domain


def scoring_cost(name: str, size: int, blocks: int, images: int, work: Path) -> dict[str, float]:
    """Seconds of a training step, of the Scorer's set-up and of one scoring (with and without
    FID and KID), at ``size`` with ``blocks`` residual blocks, scoring ``images`` images."""
    device = torch.device("cpu")
    data = write_demo_dataset(work / f"data{size}", n_train=2, n_test=images, size=size)
    inception = write_inception_shaped(work / "inception_shaped.pt")
    config = TrainConfig(dataset_name="custom", dataroot=str(data), img_height=size, img_width=size,
                         n_residual_blocks=blocks, eval_every=1, eval_images=images, keep_best="fid",
                         inception=str(inception), n_cpu=0, device="cpu")
    run_dir = work / f"run{size}"
    run_dir.mkdir()
    val = open_run_data(config, data, run_dir).val
    torch.manual_seed(0)
    nets = build_networks(config)
    opts = build_optimizers(nets, config)
    buffers = {k: ReplayBuffer(config.pool_size) for k in ("A", "B")}
    real_A, real_B = val[(0, 0, 0)]["A"][None], val[(0, 0, 0)]["B"][None]
    start = time.perf_counter()
    scorer = scoring.Scorer(config, val, run_dir, device)
    setup = time.perf_counter() - start
    no_fid = scoring.Scorer(dataclasses.replace(config, keep_best="cycle_l1"), val, run_dir, device)
    no_fid.features = no_fid.real_features = None
    fns = {"step": lambda: run_step(config, nets, opts, buffers, real_A, real_B),
           "score": lambda: scorer.score(nets), "score without FID": lambda: no_fid.score(nets)}
    step = statistics.median(time_alternately({"step": fns["step"]}, 3, 1, device)["step"])
    times = time_alternately({k: fns[k] for k in ("score", "score without FID")}, 2, 0, device)
    found = {"name": name, "size": size, "blocks": blocks, "step": step, "setup": setup,
             "score": statistics.median(times["score"]), "score_plain": statistics.median(times["score without FID"])}
    found["break_even"] = 9 * found["score"] / step  # steps per epoch from which scoring is <= 10 %
    print(found, flush=True)
    return found


def cost_section(rows: list[dict], images: int) -> str:
    lines = [
        f"The price of scoring with FID and KID (`python benchmarks/scoring.py --cost`): `--eval_images {images}` "
        "(the default), the cycle error too, against a training step (batch 1, float32), in one process on "
        f"{machine(torch.device('cpu'))}, {time.strftime('%Y-%m-%d')}. The Inception network is one of the real "
        "one's shape with random weights (`benchmarks/inception_shape.py`, 21.8 M parameters, 11.4 GFLOP an "
        "image): the same work as the 91 MB file, which this machine does not have. Seconds; a step is the median "
        "of 3, a scoring the median of 2.",
        "",
        "| settings | training step | set-up (real features, once a run) | one scoring | of which FID and KID | "
        "epoch (steps) from which `--eval_every 1` costs <= 10 % | share at " + ", ".join(EPOCH_STEPS) + " |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        shares = ", ".join(f"{100 * r['score'] / (r['score'] + n * r['step']):.1f} %" for n in EPOCH_STEPS.values())
        lines.append(f"| {r['name']} ({r['size']}x{r['size']}, {r['blocks']} blocks) | {r['step']:.3f} | "
                     f"{r['setup']:.1f} | {r['score']:.1f} | {r['score'] - r['score_plain']:.1f} | "
                     f"{r['break_even']:.0f} | {shares} |")
    lines += ["", "Epoch lengths: " + ", ".join(f"{k} {v} steps" for k, v in EPOCH_STEPS.items()) +
              " (batch 1; an epoch is the larger domain's images)."]
    ref, demo = rows[0], rows[-1]
    lines += ["", f"At the reference settings one scoring costs {ref['score'] / ref['step']:.1f} training steps, so "
              f"`--eval_every 1` stays within 10 % of a run from epochs of {ref['break_even']:.0f} steps (any real "
              f"dataset). FID and KID are a fixed {demo['score'] - demo['score_plain']:.1f} s or so a scoring "
              "(the Inception network on 50 images at 299x299, and the statistics), which outweighs the demo's "
              f"tiny steps: there scoring every epoch is {100 * demo['score'] / (demo['score'] + 200 * demo['step']):.0f}"
              " % of the run; score every second epoch, or fewer images (`--eval_images 16`, the scoring "
              "benchmark above), or PSNR alone."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=8, help="epochs of 200 steps (decay from the middle)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no_report", action="store_true", help="print only")
    p.add_argument("--cost", action="store_true", help="time FID scoring against a training step instead")
    args = p.parse_args()
    if args.cost:
        images = TrainConfig().eval_images
        with tempfile.TemporaryDirectory() as tmp:
            rows = [scoring_cost("reference", 256, 9, images, Path(tmp)), scoring_cost("the demo", 32, 3, images, Path(tmp))]
        text = cost_section(rows, images)
        print(text)
        if not args.no_report:
            replace_section(args.output, "scoring cost", "# The price of scoring with FID\n\n" + text)
        return
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
