"""The built-in demo: train on procedural data whose A -> B mapping is known, then score G_AB.

    cyclegan demo [--output runs/demo] [--n_epochs 3]

The data (``datasets.DemoScenes``): domain A holds soft cream discs, squares and triangles on a
dark blue ground; domain B holds photographic negatives of such scenes. Training sees
unrelated scenes in each domain. The test split pairs each A with its true B, so the demo ends by
printing the PSNR of G_AB(test A) against the truth next to two baselines that learn nothing:
the input itself (identity) and the average training image of B. Results also go to
``demo_results.json`` in the run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cyclegan.checkpoint import checkpoint_path
from cyclegan.datasets import DEMO_DATASET, find_domain_dirs
from cyclegan.errors import CycleGANError
from cyclegan.images import list_images, read_image
from cyclegan.inference import load_generator
from cyclegan.options import TrainConfig
from cyclegan.registry import MODELS, get_model
from cyclegan.runlock import LOCK_NAME, hold_run_folder
from cyclegan.runtime import add_debug_flag, run_command
from cyclegan.train import train
from cyclegan.utils import atomic_write, psnr

__all__ = ["demo_config", "score_demo", "main"]

log = logging.getLogger("cyclegan.demo")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cyclegan demo",
        description="Train on the built-in procedural data (a hidden mapping: colour negative) and score "
                    "the A->B generator against the known truth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output", default="runs/demo", help="run folder (replaced if it holds an earlier demo)")
    p.add_argument("--n_epochs", type=int, default=3,
                   help="epochs of 200 batches each; the learning rate decays linearly over the second half")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    p.add_argument("--model", choices=MODELS, default="cyclegan", help=(
        "what to train: CycleGAN, CUT / FastCUT with their official settings, or pix2pix on the same scenes "
        "kept in pairs (default: cyclegan)"))
    add_debug_flag(p)
    return p


def demo_config(output: str, n_epochs: int = 3, device: str = "auto", seed: int = 0,
                model: str = "cyclegan") -> TrainConfig:
    """The demo's settings: the reference's, at 32x32, with 3 residual blocks and no identity loss.

    The identity loss asks G_AB to leave B images unchanged, which the paper uses to keep a
    painting's colours; the demo's mapping changes every colour by design, so it is off. The other
    models take their papers' settings (``Model.presets``): CUT and FastCUT with PatchNCE reading
    the image, both downsamplings and the first and last of the 3 residual blocks; pix2pix with a
    ResNet generator of 3 blocks (its U-Net needs sides of 128 or 256) on the scenes kept in pairs.
    """
    settings: dict[str, Any] = dict(
        model=model, dataset_name=DEMO_DATASET, n_epochs=n_epochs, decay_epoch=n_epochs // 2, img_height=32,
        img_width=32, n_residual_blocks=3, lambda_id=0.0, n_cpu=0, sample_interval=100, output=output,
        device=device, seed=seed, overwrite=True,
    )
    return TrainConfig(**{**settings, **get_model(model).presets, **get_model(model).demo_presets})


def is_previous_demo(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an earlier demo run; a CycleGANError if it holds anything else
    (a file, another run, other files), which the demo must not touch."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CycleGANError(f"--output {run_dir} is a file, not a folder: choose a folder for the demo run")
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        if run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
            raise CycleGANError(f"--output {run_dir} is a folder that does not hold a demo run: choose another")
        return False
    try:
        previous = json.loads(config_file.read_text())
    except (OSError, ValueError):
        previous = {}
    if not isinstance(previous, dict) or previous.get("dataset_name") != DEMO_DATASET:
        raise CycleGANError(f"--output {run_dir} holds a run that is not a demo: choose another folder")
    return True


def clear_previous_demo(run_dir: Path) -> None:
    """Remove what an earlier demo left in ``run_dir`` (only if it was a demo run)."""
    if is_previous_demo(run_dir):
        for name in ("demo_data", "samples", "checkpoints", "metrics.jsonl", "tensorboard", "report.html"):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def score_demo(run_dir: str | Path, epoch: int, device: str = "cpu") -> dict[str, float]:
    """PSNR (dB, mean over the test pairs) of G_AB from the run's checkpoint and of the baselines."""
    run_dir = Path(run_dir)
    data_root = run_dir / "demo_data"
    G_AB = load_generator(checkpoint_path(run_dir, epoch), "AtoB", device)

    def read_all(folder: Path) -> torch.Tensor:
        return torch.cat([read_image(p, 3)[0] for p in list_images(folder)])

    test_dir_A, test_dir_B = find_domain_dirs(data_root, "test")
    real_A, real_B = read_all(test_dir_A), read_all(test_dir_B)
    train_B = read_all(data_root / "train" / "B")
    with torch.no_grad():
        fake_B = G_AB(real_A.to(device)).cpu()
    mean_B = train_B.mean(0, keepdim=True).expand_as(real_B)
    return {
        "psnr_G_AB": psnr(fake_B, real_B).mean().item(),
        "psnr_identity": psnr(real_A, real_B).mean().item(),
        "psnr_mean_B": psnr(mean_B, real_B).mean().item(),
        "test_pairs": int(real_A.size(0)),
    }


def run(args: argparse.Namespace) -> int:
    config = demo_config(args.output, args.n_epochs, args.device, args.seed, args.model)
    start = time.perf_counter()
    is_previous_demo(Path(args.output))  # refuses a folder that is not a demo run's, before taking it
    with hold_run_folder(args.output):
        clear_previous_demo(Path(args.output))
        run_dir = train(config)
    results = score_demo(run_dir, config.n_epochs)
    results["seconds"] = round(time.perf_counter() - start, 1)
    with atomic_write(run_dir / "demo_results.json", "w") as f:
        json.dump(results, f, indent=2)
    gain = results["psnr_G_AB"] - results["psnr_identity"]
    print(
        f"\nDemo: G_AB(test A) against the true B, {results['test_pairs']} pairs, PSNR in dB\n"
        f"{f'  G_AB ({config.model}, {config.n_epochs} epochs)':37s}{results['psnr_G_AB']:6.2f}\n"
        f"  identity baseline (test A itself)  {results['psnr_identity']:6.2f}   "
        f"(G_AB is {gain:+.2f} dB above it)\n"
        f"  mean-of-B baseline                 {results['psnr_mean_B']:6.2f}\n"
        f"Samples: {run_dir / 'samples'}   checkpoint: {checkpoint_path(run_dir, config.n_epochs)}\n"
        f"Took {results['seconds']:.0f} s.",
        file=sys.stdout,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser(), run, argv, log)


if __name__ == "__main__":
    sys.exit(main())
