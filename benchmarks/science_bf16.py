"""bfloat16 on 16-bit scientific images: does bf16 autocast (8 significant bits in the layers)
cost quality on grey 16-bit files, where float32 keeps every count?

    python benchmarks/science_bf16.py --arms off bf16_emulated off_dtype   # any CPU, about 40 min on 2 cores
    python benchmarks/science_bf16.py                                      # on a CPU with native bf16
    python benchmarks/science_bf16.py --seeds 0 --n_epochs 1 --decay_epoch 0 --no_report   # smoke run

The task (``tests/photo_task.py``, ``write_camera_task``): what a scientific camera writes, grey
uint16 PNGs whose values fill a band of 12-bit counts above a dark offset (A: 1000 to 4000; B: 6000
to 8500, of 0 to 65535), the crops of photographs shipped by scikit-image and scikit-learn, B
through a gamma of 2.5. Scored by the PSNR (dB) of G_AB on test crops of photographs never trained
on, in counts (inputs read through the run's range, outputs written back through B's, rounded to
uint16 as ``cyclegan translate`` writes them), against the span of B's band; next to doing nothing
(each pixel's place in A's band put at the same place of B's) and ignoring the input (the mean
image of train B).

Arms, each ``cyclegan train`` as a user runs it (``benchmarks/quality.py``'s ``ours_run``: its own
process, one thread):

- ``off``: ``--amp off --value_range p0.5 p99.5``: float32, each band stretched over -1..1;
- ``bf16``: the same in bf16 autocast (``--amp bf16``); it needs a CPU with native bf16;
- ``bf16_emulated``: the same through ``bf16_emulation.py`` on any CPU (a native CPU's numbers at
  float32 speed);
- ``off_dtype``: float32 with the default ``--value_range dtype``: the bands as they lie in the
  type's range, 0.09 and 0.08 wide in -1..1 (4.6 % and 3.8 % of it);
- ``fill10``, ``fill25``, ``fill50``: float32 with ranges (``--value_range MIN MAX`` for A,
  ``--value_range_B`` for B) that each band fills 10, 25 or 50 % of, placed low in them as the
  default range places A's: where between the default range's failure and a full stretch
  training starts to work (the line of the narrow-band warning, ``cyclegan.science.NARROW``).

Every finished run is kept (``WORK/runs/ARM_SEED.json``, with its settings): a second call with the
same settings reuses it. Each arm is reported with its mean, standard deviation and 95 % interval
(Student's t); bf16 against float32 with the difference and its interval (Welch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from photo_task import CAMERA_A, CAMERA_B, CAMERA_GAMMA, camera_baselines, camera_pairs, camera_psnr, write_camera_task  # noqa: E402
from quality import difference, interval, kept_run, ours_run  # noqa: E402
from train_step import machine, replace_section  # noqa: E402

from cyclegan.perf import cpu_native_bf16  # noqa: E402
from cyclegan.utils import atomic_write  # noqa: E402

PERCENTILES = ["--value_range", "p0.5", "p99.5"]
ARMS = {  # name: (flags for cyclegan train, emulated bf16, what the report calls it)
    "off": (["--amp", "off", *PERCENTILES], False, "float32 (`--amp off`), `--value_range p0.5 p99.5`"),
    "bf16": (["--amp", "bf16", *PERCENTILES], False, "bf16 autocast (`--amp bf16`), `--value_range p0.5 p99.5`"),
    "bf16_emulated": (["--amp", "bf16", *PERCENTILES], True,
                      "bf16 autocast (`--amp bf16`), bf16 products emulated in float32, `--value_range p0.5 p99.5`"),
    "off_dtype": (["--amp", "off"], False, "float32 (`--amp off`), the default `--value_range dtype`"),
}
SETTINGS = ("size", "blocks", "n_epochs", "decay_epoch")
FILLS = (0.10, 0.25, 0.50)  # the fill arms: each band this fraction of the range mapped to -1..1


def filling(fraction: float) -> list[str]:
    """``--value_range MIN MAX`` and ``--value_range_B MIN MAX`` under which each domain's band
    fills ``fraction`` of the range mapped to -1..1, its low end as far up that range as A's band
    lies in the default range (1000 of 0..65535): the default range's case with a wider band."""
    place = CAMERA_A[0] / 65535
    flags = []
    for flag, (offset, span) in (("--value_range", CAMERA_A), ("--value_range_B", CAMERA_B)):
        width = span / fraction
        low = round(offset - place * width)
        flags += [flag, str(low), str(round(low + width))]
    return flags


for _fill in FILLS:
    ARMS[f"fill{_fill * 100:.0f}"] = (["--amp", "off", *filling(_fill)], False,
                                     f"float32 (`--amp off`), ranges that each band fills {_fill:.0%} of")


def score_run(run_dir: Path, task: Path) -> float:
    """The PSNR (dB, in counts) of a run's A -> B generator on the task's test pairs, the files
    read and written through the ranges the run stored (as ``cyclegan translate`` does)."""
    from cyclegan.inference import load_generator
    from cyclegan.science import Domain, encode, to_values

    config = json.loads((run_dir / "config.json").read_text())
    domain_a, domain_b = Domain.from_json(config["data_A"]), Domain.from_json(config["data_B"])
    inputs, truths = camera_pairs(task)
    x = torch.stack([encode(a.astype(np.uint16)[..., None], domain_a) for a in inputs])
    net = load_generator(run_dir).net.eval()
    with torch.no_grad():
        y = net(x)
    counts = np.stack([to_values(t, domain_b, "float32")[..., 0] for t in y]).astype(np.float64)
    return camera_psnr(counts, truths)


def run_arm(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """One training run, or its result kept from an earlier call with the same settings."""
    kept = args.work / "runs" / f"{arm}_{seed}.json"
    settings = {k: getattr(args, k) for k in SETTINGS}
    record = kept_run(kept, settings, f"{arm:14s} seed {seed}")
    if record is not None:
        return record
    flags, emulated, _ = ARMS[arm]
    start = time.perf_counter()
    result = ours_run(args.task, seed, args.size, args.blocks, args.n_epochs, args.decay_epoch,
                      args.work / f"{arm}_{seed}", ["--channels", "1", *flags], emulate_bf16=emulated,
                      scorer=lambda run_dir: score_run(run_dir, args.task))
    result.update(arm=arm, seed=seed, seconds=time.perf_counter() - start, settings=settings)
    print(f"{arm:14s} seed {seed}: {result['psnr']:.2f} dB ({result['seconds']:.0f} s)", flush=True)
    with atomic_write(kept, "w") as f:
        f.write(json.dumps(result))
    return result


def write_report(args: argparse.Namespace, results: list[dict], nothing: float, constant: float,
                 elapsed: float) -> None:
    steps = args.n_epochs * 200
    psnr = {arm: [r["psnr"] for r in results if r["arm"] == arm] for arm in args.arms}
    seconds = {arm: statistics.median(r["seconds"] for r in results if r["arm"] == arm) for arm in args.arms}
    lines = [
        "## bfloat16 on 16-bit images (science_bf16)",
        "",
        f"Made by `{' '.join(['python benchmarks/science_bf16.py', *sys.argv[1:]])}` on "
        f"{time.strftime('%Y-%m-%d')} in {elapsed / 60:.0f} min ({args.parallel} runs at a time, one thread each); "
        f"machine: {machine(torch.device('cpu'))}.",
        "",
        f"The 16-bit task of `tests/photo_task.py` (`write_camera_task`): grey uint16 PNGs, A a photograph crop's "
        f"luminance in counts {CAMERA_A[0]:g} to {CAMERA_A[0] + CAMERA_A[1]:g}, B the same through a gamma of "
        f"{CAMERA_GAMMA:g} in counts {CAMERA_B[0]:g} to {CAMERA_B[0] + CAMERA_B[1]:g} (of 0 to 65535); "
        f"{args.size}x{args.size}, {args.blocks} residual block(s), `--channels 1`, batch 1, {steps} steps "
        f"({args.n_epochs} epochs, linear decay from epoch {args.decay_epoch}). PSNR (dB) of G_AB on test crops of "
        f"photographs never trained on, in counts written as uint16, against B's span ({CAMERA_B[1]:g} counts). "
        f"Doing nothing (a pixel's place in A's band at the same place of B's) scores {nothing:.2f} dB; ignoring "
        f"the input (the mean image of train B) {constant:.2f} dB.",
        "",
        "| run | mean (dB) | std | 95 % interval | per seed | median seconds a run |",
        "|---|---:|---:|---|---|---:|",
    ]
    for arm, values in psnr.items():
        mean, sd, half = interval(values)
        shown = f"({seconds[arm]:.0f}, emulated)" if ARMS[arm][1] else f"{seconds[arm]:.0f}"
        lines.append(f"| {ARMS[arm][2]} | {mean:.2f} | {sd:.2f} | {mean - half:.2f} to {mean + half:.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in values)} | {shown} |")
    lines.append("")
    for arm in ("bf16", "bf16_emulated"):
        if arm in psnr and "off" in psnr:
            diff, half = difference(psnr[arm], psnr["off"])
            mean_f, _, half_f = interval(psnr["off"])
            inside = "inside" if abs(statistics.mean(psnr[arm]) - mean_f) <= half_f else "outside"
            lines.append(f"{ARMS[arm][2]} minus float32: {diff:+.2f} dB, 95 % interval {diff - half:+.2f} to "
                         f"{diff + half:+.2f}; its mean lies {inside} float32's interval ({mean_f - half_f:.2f} to "
                         f"{mean_f + half_f:.2f}).")
    lines.append("")
    replace_section(args.output, "science_bf16", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--arms", nargs="+", default=["off", "bf16", "off_dtype"], choices=tuple(ARMS))
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--n_epochs", type=int, default=8, help="epochs of 200 steps (default: 8)")
    p.add_argument("--decay_epoch", type=int, default=4)
    p.add_argument("--parallel", type=int, default=2, help="runs at once, one thread each (default: 2)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "science_bf16")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no_report", action="store_true", help="print the figures, write no docs")
    args = p.parse_args()
    if "bf16" in args.arms and cpu_native_bf16() is None:
        sys.exit("--arms bf16: this CPU has no native bfloat16 (no AMX, AVX-512 BF16 or Arm BF16 in its flags), where "
                 "bf16 is emulated about 10x slower than float32; take its numbers at float32 speed with --arms off "
                 "bf16_emulated off_dtype, or run this arm on a CPU that has it")
    torch.set_num_threads(1)
    start = time.perf_counter()
    args.task = write_camera_task(args.work / "task", size=args.size)
    nothing, constant = camera_baselines(args.task)
    print(f"task in {args.task}; doing nothing {nothing:.2f} dB, ignoring the input {constant:.2f} dB", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda a: run_arm(args, *a), [(arm, s) for s in args.seeds for arm in args.arms]))
    for arm in args.arms:
        mean, sd, half = interval([r["psnr"] for r in results if r["arm"] == arm])
        print(f"{arm}: {mean:.2f} +- {sd:.2f} dB (95 % interval +- {half:.2f})")
    if not args.no_report:
        write_report(args, results, nothing, constant, time.perf_counter() - start)


if __name__ == "__main__":
    main()
