"""Quality on photographs: ``cyclegan train`` (in float32, and in bfloat16 autocast) against the
reference design's training loop, on the same data, steps and seeds, with intervals.

    python benchmarks/quality.py --preset tell   # the task that can tell: duotone photographs, 5 seeds x 3 arms
                                                 # (reference, ours, ours in bf16; the bf16 arm needs a CPU with
                                                 # native bf16); under an hour on 2 cores
    python benchmarks/quality.py --preset tell --arms reference ours   # on any CPU
    python benchmarks/quality.py --preset tell --arms reference ours ours_bf16_emulated   # bf16's numbers, any CPU
    python benchmarks/quality.py                 # the first task: 3 seeds each, 64x64, 9 blocks, 800 steps
    python benchmarks/quality.py --seeds 0 --n_epochs 1 --decay_epoch 0 --blocks 1 --no_report  # smoke run

The task (``tests/photo_task.py``): crops of photographs that scikit-image and scikit-learn ship;
B is other crops through a fixed mapping (``--mapping``: ``colour``, a softened rotation of the
colour channels with a gamma; ``negative``, the plain negative; ``duotone``, A each crop's
contrast-raised luminance on a blue ramp and B the same on an orange ramp); the test crops
come from photographs never trained on, and each model is scored by the PSNR of G_AB(test A)
against the true B, next to two baselines: doing nothing (test A itself) and ignoring the input
(the mean image of train B).

- ``reference``: the reference's ``train.py`` loop written out here, on the reference's own classes
  (``tests/reference_models.py``: its ``GeneratorResNet``, ``Discriminator``,
  ``weights_init_normal`` applied after all four networks exist, ``ReplayBuffer``, ``LambdaLR``),
  its ``ImageDataset`` (image A by index, B by ``random.randint``) with a plain PIL/NumPy version
  of its torchvision transform (resize the shorter side to 1.12x bicubic, random crop, random
  flip, [-1, 1]), a ``DataLoader`` with ``shuffle=True``, PyTorch's default Adam, one ``LambdaLR``
  per optimizer stepped per epoch, and the literal step of ``tests/reference_step.py``. (Its
  sample grids are left out: they change no weight.) Seeded with ``random.seed``,
  ``np.random.seed`` and ``torch.manual_seed``.
- ``ours``: ``cyclegan train --dataroot TASK --seed S --amp off`` as a user runs it, with the same
  sizes, epochs and decay; scored from the run folder through ``cyclegan.inference.load_generator``.
- ``ours_bf16``: the same with ``--amp bf16`` (bfloat16 autocast; float32 weights, losses and
  optimizer state). It needs a CPU with native bf16 (AMX, AVX-512 BF16): elsewhere bf16 is emulated
  about 10x slower and the arm is refused.
- ``ours_bf16_emulated``: the same run, on any CPU, through ``bf16_emulation.py``: the bf16
  convolutions and matrix products run as float32 kernels on the bf16 operands with their results
  rounded to bf16, the numbers a native bf16 CPU computes (bf16 operands, float32 sums, bf16
  results), at float32 speed. Its quality figure stands for native bf16's; its time does not.

Every run is its own process with one thread; ``--parallel`` of them run at once. Each finished
run is kept (``WORK/runs/ARM_SEED.json``): a second call with the same settings reuses it, so an
interrupted benchmark goes on where it stopped. All arms get
the same number of steps (``n_epochs`` x 200 images); the cycle loss of every step is kept
(ours: ``metrics.jsonl`` with ``--log_interval 1``) for the curves. Each arm is reported with its
mean, standard deviation and 95 % interval of the mean (Student's t), and each comparison with
the difference of the means and its 95 % interval (Welch).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from photo_task import TEST_PHOTOS, TRAIN_PHOTOS, constant_score, identity_score, score, write_photo_task  # noqa: E402
from reference_step import reference_optimizers, reference_step  # noqa: E402
from train_step import machine, replace_section  # noqa: E402

from cyclegan.perf import cpu_native_bf16  # noqa: E402
from cyclegan.utils import atomic_write  # noqa: E402

from reference_models import Discriminator, GeneratorResNet, LambdaLR, ReplayBuffer, weights_init_normal  # noqa: E402

N_TRAIN = 200  # images per domain: one epoch is 200 steps at batch 1


# ---------------------------------------------------------------------------------------------
# The reference loop


def reference_transform(img: Image.Image, height: int, width: int) -> torch.Tensor:
    """torchvision's Resize(int(1.12 h), BICUBIC), RandomCrop((h, w)), RandomHorizontalFlip(),
    ToTensor(), Normalize(0.5, 0.5), in PIL and NumPy, drawing from torch's generator as they do."""
    size = int(height * 1.12)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    top = torch.randint(0, new_h - height + 1, size=(1,)).item()
    left = torch.randint(0, new_w - width + 1, size=(1,)).item()
    img = img.crop((left, top, left + width, top + height))
    if torch.rand(1) < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()).float().div(255)
    return (x - 0.5) / 0.5


class ReferenceImageDataset(torch.utils.data.Dataset):
    """The reference's ``ImageDataset(root, transforms_, unaligned=True, mode="train")``."""

    def __init__(self, root: Path, height: int, width: int, mode: str = "train") -> None:
        self.height, self.width = height, width
        self.files_A = sorted(glob.glob(os.path.join(root, f"{mode}/A") + "/*.*"))
        self.files_B = sorted(glob.glob(os.path.join(root, f"{mode}/B") + "/*.*"))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_A = Image.open(self.files_A[index % len(self.files_A)])
        image_B = Image.open(self.files_B[random.randint(0, len(self.files_B) - 1)])
        image_A, image_B = image_A.convert("RGB"), image_B.convert("RGB")
        return {"A": reference_transform(image_A, self.height, self.width),
                "B": reference_transform(image_B, self.height, self.width)}

    def __len__(self) -> int:
        return max(len(self.files_A), len(self.files_B))


def reference_run(root: Path, seed: int, size: int, blocks: int, n_epochs: int, decay_epoch: int) -> dict:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    shape = (3, size, size)
    nets = {"G_AB": GeneratorResNet(shape, blocks), "G_BA": GeneratorResNet(shape, blocks),
            "D_A": Discriminator(shape), "D_B": Discriminator(shape)}
    for net in nets.values():
        net.apply(weights_init_normal)
    opts = reference_optimizers(nets)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda=LambdaLR(n_epochs, 0, decay_epoch).step)
                  for o in opts.values()]
    pools = {"A": ReplayBuffer(50), "B": ReplayBuffer(50)}
    loader = torch.utils.data.DataLoader(ReferenceImageDataset(root, size, size), batch_size=1, shuffle=True,
                                         num_workers=0)
    cycle = []
    for _ in range(n_epochs):
        for batch in loader:
            losses = reference_step(nets, opts, pools, batch["A"], batch["B"])
            cycle.append(float(losses["cycle"]))
        for s in schedulers:
            s.step()
    return {"psnr": score(nets["G_AB"], root), "cycle": cycle}


# ---------------------------------------------------------------------------------------------
# Ours, as a user runs it


def ours_run(root: Path, seed: int, size: int, blocks: int, n_epochs: int, decay_epoch: int, run_dir: Path,
             extra: list[str], emulate_bf16: bool = False, scorer: Callable[[Path], float] | None = None) -> dict:
    """``cyclegan train`` on the task at ``root`` in a process of its own (one thread), scored by
    ``photo_task.score`` of its A -> B generator, or by ``scorer(run_dir)``."""
    from cyclegan.inference import load_generator
    from cyclegan.logger import read_metrics

    entry = [str(Path(__file__).with_name("bf16_emulation.py"))] if emulate_bf16 else ["-m", "cyclegan"]
    cmd = [sys.executable, *entry, "train", "--dataroot", str(root), "--output", str(run_dir),
           "--overwrite", "--seed", str(seed), "--img_height", str(size), "--img_width", str(size),
           "--n_residual_blocks", str(blocks), "--n_epochs", str(n_epochs), "--decay_epoch", str(decay_epoch),
           "--n_cpu", "0", "--logger", "none", "--log_interval", "1", "--amp", "off", *extra]
    done = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    records = read_metrics(run_dir)
    psnr = scorer(run_dir) if scorer else score(load_generator(run_dir).net, root)
    return {"psnr": psnr, "cycle": [r["cycle"] for r in records]}


# ---------------------------------------------------------------------------------------------
# Driver


def job(args: argparse.Namespace) -> None:
    """One run in this process (one thread), its result as JSON on stdout."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    if args.job == "reference":
        result = reference_run(args.task, args.seed, args.size, args.blocks, args.n_epochs, args.decay_epoch)
    else:
        run_dir = args.work / f"{args.job}_{args.seed}"
        extra = args.ours_flags.split() + (["--amp", "bf16"] if args.job.startswith("ours_bf16") else [])
        result = ours_run(args.task, args.seed, args.size, args.blocks, args.n_epochs, args.decay_epoch, run_dir,
                          extra, emulate_bf16=args.job == "ours_bf16_emulated")
    result.update(arm=args.job, seed=args.seed, seconds=time.perf_counter() - start)
    print(json.dumps(result))


SETTINGS = ("size", "blocks", "n_epochs", "decay_epoch", "ours_flags", "mapping", "scale", "standardise")


def kept_run(path: Path, settings: dict, label: str) -> dict | None:
    """The result of a run kept at ``path`` by an earlier call, if it ran with these settings."""
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get("settings") == settings:
            print(f"{label}: {record['psnr']:.2f} dB (kept from an earlier call)", flush=True)
            return record
    return None


def launch(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """One run in its own process, or its result from an earlier call with the same task and
    settings (every finished run is kept as WORK/runs/ARM_SEED.json, written whole, so an
    interrupted benchmark goes on where it stopped)."""
    kept = args.work / "runs" / f"{arm}_{seed}.json"
    settings = {k: getattr(args, k) for k in SETTINGS}
    record = kept_run(kept, settings, f"{arm:9s} seed {seed}")
    if record is not None:
        return record
    cmd = [sys.executable, __file__, "--job", arm, "--seed", str(seed), "--task", str(args.task),
           "--work", str(args.work), "--size", str(args.size), "--blocks", str(args.blocks),
           "--n_epochs", str(args.n_epochs), "--decay_epoch", str(args.decay_epoch), "--ours_flags", args.ours_flags]
    done = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{arm} seed {seed} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{arm:9s} seed {seed}: {result['psnr']:.2f} dB ({result['seconds']:.0f} s)", flush=True)
    result["settings"] = settings
    with atomic_write(kept, "w") as f:
        f.write(json.dumps(result))
    return result


def smooth(values: list[float], window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(np.asarray(values), kernel, mode="valid")


def plot_cycle(results: list[dict], path: Path, window: int = 50) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    colours = {"reference": "tab:blue", "ours": "tab:orange"}
    for r in results:
        curve = smooth(r["cycle"], window)
        label = f"{r['arm']} (seed {r['seed']})"
        ax.plot(np.arange(len(curve)) + window, curve, color=colours[r["arm"]], alpha=0.7, lw=1, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"cycle loss (mean of {window} steps)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(results: list[dict], arm: str) -> tuple[float, float, list[float]]:
    values = [r["psnr"] for r in results if r["arm"] == arm]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), values


def write_report(args: argparse.Namespace, results: list[dict], identity: float, constant: float, elapsed: float,
                 command: list[str]) -> None:
    steps = args.n_epochs * N_TRAIN
    lines = [
        "# Quality on photographs: ours against the reference loop",
        "",
        f"Made by `python benchmarks/quality.py{' ' + ' '.join(command) if command else ''}` on "
        f"{time.strftime('%Y-%m-%d')} in {elapsed / 60:.0f} min (runs {args.parallel} at a time, one thread each); "
        f"machine: {machine(torch.device('cpu'))}.",
        "",
        f"The task of `tests/photo_task.py`: {N_TRAIN} crops per domain from {len(TRAIN_PHOTOS)} photographs shipped "
        f"by scikit-image and scikit-learn, B through a fixed colour transform; {16 * len(TEST_PHOTOS)} test crops of "
        f"{len(TEST_PHOTOS)} photographs never "
        f"trained on, scored by the PSNR of G_AB(test A) against the true B. {args.size}x{args.size}, "
        f"{args.blocks} residual blocks, batch 1, default losses, {steps} steps ({args.n_epochs} epochs, linear "
        f"decay from epoch {args.decay_epoch}). Doing nothing scores {identity:.2f} dB; ignoring the input (the mean "
        f"image of train B) {constant:.2f} dB.",
        "",
        "| loop | PSNR mean (dB) | spread (std) | per seed | final cycle loss (mean of last 100 steps) |",
        "|---|---:|---:|---|---:|",
    ]
    for arm, name in (("reference", "reference `train.py` loop"), ("ours", "`cyclegan train`")):
        mean, std, values = summarise(results, arm)
        per = ", ".join(f"{v:.2f}" for v in values)
        finals = [statistics.mean(r["cycle"][-100:]) for r in results if r["arm"] == arm]
        lines.append(f"| {name} | {mean:.2f} | {std:.2f} | {per} | {statistics.mean(finals):.4f} |")
    mean_r, std_r, _ = summarise(results, "reference")
    mean_o, std_o, _ = summarise(results, "ours")
    verdict = "within" if abs(mean_o - mean_r) <= max(std_r, std_o) else "beyond"
    lines += ["", f"Difference ours - reference: {mean_o - mean_r:+.2f} dB, {verdict} the seeds' spread ({std_r:.2f} "
              f"reference, {std_o:.2f} ours). Cycle loss curves: [quality_cycle.png](quality_cycle.png).", ""]
    replace_section(args.output, "quality", "\n".join(lines))


ARM_NAMES = {"reference": "reference `train.py` loop (its own classes)", "ours": "`cyclegan train --amp off`",
             "ours_bf16": "`cyclegan train --amp bf16`",
             "ours_bf16_emulated": "`cyclegan train --amp bf16`, bf16 products emulated in float32"}
PRESETS = {
    # The task that can tell (docs/benchmarks.md, "A quality benchmark that can tell"): duotone
    # photographs, blue ramp to orange ramp, 32x32 (the smallest the 70x70 PatchGAN takes), one
    # residual block, 1000 steps with the last 600 decaying, the reference's losses and rates: the
    # reference loop ends about 7 dB above both baselines, and 15 runs take under an hour on 2 cores.
    "tell": {"seeds": [0, 1, 2, 3, 4], "arms": ["reference", "ours", "ours_bf16"], "size": 32, "blocks": 1,
             "n_epochs": 5, "decay_epoch": 2, "mapping": "duotone", "scale": [0.3, 0.6], "standardise": False,
             "section": "quality_tell", "plot": None},
}


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean, standard deviation and the half-width of the 95 % interval of the mean (Student's t)."""
    from scipy import stats

    n = len(values)
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if n > 1 else 0.0
    return mean, sd, float(stats.t.ppf(0.975, n - 1) * sd / n**0.5) if n > 1 else float("inf")


def difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a`` minus mean of ``b`` and the half-width of its 95 % interval (Welch)."""
    from scipy import stats

    if min(len(a), len(b)) < 2:  # one seed: no spread, no interval
        return statistics.mean(a) - statistics.mean(b), float("inf")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = (va + vb) ** 0.5
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1.0
    return statistics.mean(a) - statistics.mean(b), float(stats.t.ppf(0.975, df) * se)


def write_tell_report(args: argparse.Namespace, results: list[dict], identity: float, constant: float,
                      elapsed: float, command: list[str]) -> None:
    """The section of the task that can tell: baselines, each arm with its interval, the
    differences that matter, and the bf16 speed on this task."""
    steps = args.n_epochs * N_TRAIN
    by_arm = {arm: [r for r in results if r["arm"] == arm] for arm in args.arms}
    lines = [
        "## A quality benchmark that can tell",
        "",
        f"Made by `python benchmarks/quality.py{' ' + ' '.join(command) if command else ''}` on "
        f"{time.strftime('%Y-%m-%d')} in {elapsed / 60:.0f} min ({args.parallel} runs at a time, one thread each); "
        f"machine: {machine(torch.device('cpu'))}.",
        "",
        f"The task of `tests/photo_task.py` with `mapping={args.mapping!r}`, crops of {args.scale[0]:g} to "
        f"{args.scale[1]:g} of a photograph's shorter side{' standardised' if args.standardise else ''}, "
        f"{args.size}x{args.size}, {args.blocks} residual block(s), batch 1, the reference's losses and rates, "
        f"{steps} steps ({args.n_epochs} epochs of {N_TRAIN} images, linear decay from epoch {args.decay_epoch}). "
        f"PSNR (dB) of G_AB on {16 * len(TEST_PHOTOS)} test crops of photographs never trained on. Doing nothing "
        f"scores {identity:.2f} dB; ignoring the input (the mean image of train B) {constant:.2f} dB.",
        "",
        "| loop | mean (dB) | std | 95 % interval | per seed | median seconds a run |",
        "|---|---:|---:|---|---|---:|",
    ]
    psnr = {arm: [r["psnr"] for r in rs] for arm, rs in by_arm.items()}
    for arm, rs in by_arm.items():
        mean, sd, half = interval(psnr[arm])
        per = ", ".join(f"{v:.2f}" for v in psnr[arm])
        seconds = f"{statistics.median(r['seconds'] for r in rs):.0f}"
        if arm == "ours_bf16_emulated":  # the time of the emulation, not of bf16
            seconds = f"({seconds}, emulated)"
        lines.append(f"| {ARM_NAMES[arm]} | {mean:.2f} | {sd:.2f} | {mean - half:.2f} to {mean + half:.2f} | {per} | "
                     f"{seconds} |")
    lines.append("")
    best_baseline = max(identity, constant)
    if "reference" in psnr:
        mean_r = statistics.mean(psnr["reference"])
        lines.append(f"The reference loop ends {mean_r - best_baseline:+.2f} dB from the better baseline.")
    for a, b in (("ours", "reference"), ("ours_bf16", "ours"), ("ours_bf16_emulated", "ours")):
        if a in psnr and b in psnr:
            diff, half = difference(psnr[a], psnr[b])
            inside = "0 lies inside it" if abs(diff) <= half else "0 lies outside it"
            lines.append(f"{ARM_NAMES[a]} minus {ARM_NAMES[b]}: {diff:+.2f} dB, 95 % interval {diff - half:+.2f} to "
                         f"{diff + half:+.2f} ({inside}).")
            if b == "ours":  # the criterion of `--amp auto`: bf16's mean inside float32's interval
                mean_b, _, half_b = interval(psnr[b])
                mean_a = statistics.mean(psnr[a])
                where = "inside" if abs(mean_a - mean_b) <= half_b else "outside"
                lines.append(f"Its mean, {mean_a:.2f} dB, lies {where} the interval of {ARM_NAMES[b]} "
                             f"({mean_b - half_b:.2f} to {mean_b + half_b:.2f}).")
    if "ours" in by_arm and "ours_bf16" in by_arm:
        ratio = statistics.median(r["seconds"] for r in by_arm["ours"]) / statistics.median(
            r["seconds"] for r in by_arm["ours_bf16"])
        lines.append(f"On this task a bf16 run takes {1 / ratio:.2f}x the time of a float32 run (one thread, "
                     f"{args.size}x{args.size}: small layers, where bf16 gains least; the step benchmark has the speeds).")
    lines.append("")
    replace_section(args.output, args.section, "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--blocks", type=int, default=9)
    p.add_argument("--n_epochs", type=int, default=4, help=f"epochs of {N_TRAIN} steps (default: 4)")
    p.add_argument("--decay_epoch", type=int, default=2)
    p.add_argument("--parallel", type=int, default=2, help="runs at once, one thread each (default: 2)")
    p.add_argument("--arms", nargs="+", default=["reference", "ours"], choices=tuple(ARM_NAMES))
    p.add_argument("--mapping", default="colour", choices=("colour", "negative", "duotone"),
                   help="the hidden A -> B mapping (the 8-bit ones; the 16-bit task is science_bf16.py's)")
    p.add_argument("--scale", type=float, nargs=2, default=[0.3, 0.6], help="crop side, fraction of the photo's")
    p.add_argument("--standardise", action="store_true", help="every crop to one mean and spread")
    p.add_argument("--preset", choices=tuple(PRESETS), help="the settings of a documented task (flags after it win)")
    p.add_argument("--section", default="quality", help="the docs/benchmarks.md section to write")
    p.add_argument("--ours_flags", default="", help="extra flags for cyclegan train (to swap one piece)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "quality")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "quality_cycle.png")
    p.add_argument("--no_report", action="store_true", help="print the figures, write no docs")
    p.add_argument("--report_only", action="store_true",
                   help="write the docs from the runs of an earlier call (WORK/results.json)")
    p.add_argument("--job", choices=tuple(ARM_NAMES), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--task", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.preset:  # the preset's values, except those given on the command line
        given = {a.dest for a in p._actions for flag in a.option_strings if flag in sys.argv[1:]}
        for key, value in PRESETS[args.preset].items():
            if key not in given:
                setattr(args, key, value)
    if args.job:
        return job(args)
    saved = args.work / "results.json"
    if args.report_only:
        record = json.loads(saved.read_text())
        results, identity, elapsed, command = (record[k] for k in ("results", "identity", "elapsed", "command"))
        vars(args).update(record["args"])
    else:
        if "ours_bf16" in args.arms and cpu_native_bf16() is None:
            sys.exit("--arms ours_bf16: this CPU has no native bfloat16 (no AMX, AVX-512 BF16 or Arm BF16 in its "
                     "flags), where bf16 is emulated about 10x slower than float32 and a run would take hours; run "
                     "that arm on a CPU that has it, or take its numbers at float32 speed with --arms "
                     "ours_bf16_emulated (the other arms run anywhere: --arms reference ours)")
        start = time.perf_counter()
        args.task = write_photo_task(args.work / "task", size=args.size, n_train=N_TRAIN, mapping=args.mapping,
                                     scale=tuple(args.scale), standardise=args.standardise)
        identity = identity_score(args.task)
        print(f"task in {args.task}; doing nothing scores {identity:.2f} dB", flush=True)
        pairs = [(arm, seed) for seed in args.seeds for arm in args.arms]
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda a: launch(args, *a), pairs))
        elapsed, command = time.perf_counter() - start, sys.argv[1:]
        kept = {k: getattr(args, k) for k in ("seeds", "size", "blocks", "n_epochs", "decay_epoch", "ours_flags",
                                              "parallel", "arms", "mapping", "scale", "standardise", "section")}
        saved.write_text(json.dumps({"results": results, "identity": identity, "elapsed": elapsed, "args": kept,
                                     "command": sys.argv[1:]}))
    for arm in args.arms:
        mean, std, _ = summarise(results, arm)
        print(f"{arm}: {mean:.2f} +- {std:.2f} dB")
    if args.no_report:
        return
    constant = constant_score(args.work / "task")
    if args.section != "quality":
        write_tell_report(args, results, identity, constant, elapsed, command)
    elif set(args.arms) == {"reference", "ours"}:
        write_report(args, results, identity, constant, elapsed, command)
        plot_cycle(results, args.plot)


if __name__ == "__main__":
    main()
