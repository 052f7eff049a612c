"""``cyclegan evaluate``: how good a translation is, as numbers to compare runs by.

    cyclegan evaluate --checkpoint runs/h2z --input data/h2z/testA --real data/h2z/testB
    cyclegan evaluate --fake out/ --real data/h2z/testB [--paired data/gt]

- FID and KID between the translated images and real images of the target domain, on the
  2048-d pool features of the standard FID Inception network (``inception-2015-12-05.pt``, the
  TorchScript file StyleGAN2-ADA, StyleGAN3 and clean-fid use). Nothing is downloaded here: the
  file is read from ``--inception``, ``$CYCLEGAN_INCEPTION`` or ``~/.cache/cyclegan/`` (where
  ``cyclegan download inception`` puts it), and when it is missing the error names that command.
  Images are resized to 299x299 (bicubic) first.
- With ``--paired DIR`` (ground truth named as the inputs, as in the paper's Cityscapes
  protocol): PSNR, SSIM and L1 of each translation against its truth.
- With a CycleGAN checkpoint holding both generators (not CUT's): the cycle-consistency error, the mean absolute
  difference between an input and its round trip through both generators (on [-1, 1], as the
  training loss).

The statistics come from torchmetrics (``FrechetInceptionDistance``, ``KernelInceptionDistance``,
``structural_similarity_index_measure``): a maintained, tested implementation, which takes the
feature network as a module, so that tests and users can give their own. (Its built-in Inception
needs torch-fidelity, which depends on torchvision; this project does not.) Results are printed
as a table and written as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cyclegan.errors import CycleGANError
from cyclegan.images import list_images, read_image
from cyclegan.inference import add_epoch_flag, load_generator, translate_image
from cyclegan.measures import (  # noqa: F401  (re-exported: the names evaluate has always had)
    InceptionFeatures,
    compute_metrics,
    fid_from_features,
    find_inception,
    image_features,
    metrics_from_features,
    paired_metrics,
    to_uint8,
)
from cyclegan.runtime import add_debug_flag, resolve_device, run_command
from cyclegan.utils import atomic_write
from cyclegan.zoo import INCEPTION_FILE

__all__ = ["main", "get_args_parser", "InceptionFeatures", "find_inception", "compute_metrics", "fid_from_features",
           "image_features", "metrics_from_features", "paired_metrics"]

log = logging.getLogger("cyclegan.evaluate")



def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cyclegan evaluate", description=(
        "FID and KID of translated images against real target-domain images; PSNR, SSIM and L1 against paired "
        "ground truth; the cycle-consistency error."))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="translate --input with this run folder, checkpoint or weights file")
    src.add_argument("--fake", help="a folder of images already translated (by cyclegan translate)")
    p.add_argument("--input", help="with --checkpoint: the source-domain images (a folder)")
    p.add_argument("--real", required=True, help="a folder of real target-domain images")
    p.add_argument("--paired", help="a folder of ground-truth translations, named as the inputs")
    p.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB", help="(default: AtoB)")
    add_epoch_flag(p)
    p.add_argument("--size", type=int, default=None, help=(
        "with --checkpoint: translate at this shorter side (default: the run's training size, else 256)"))
    p.add_argument("--inception", help=f"the FID Inception network {INCEPTION_FILE} (default: searched in "
                                       "$CYCLEGAN_INCEPTION, ~/.cache/cyclegan, $TORCH_HOME/hub/checkpoints)")
    p.add_argument("--kid_subset_size", type=int, default=100, help="images per KID subset (default: 100)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(default: auto)")
    p.add_argument("--json", help="also write the results to this JSON file")
    add_debug_flag(p)
    return p


def _read_folder(folder: str, channels: int, flag: str) -> tuple[list[Path], list[torch.Tensor]]:
    path = Path(folder)
    if not path.is_dir():
        raise CycleGANError(f"{flag} {path}: no such folder")
    files = list_images(path)
    if not files:
        raise CycleGANError(f"{flag} {path}: the folder holds no images")
    tensors = []
    for f in files:
        try:
            tensors.append(read_image(f, channels)[0][0])
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise CycleGANError(f"{flag}: cannot read {f} ({type(exc).__name__}: {exc}); remove or fix it") from None
    return files, tensors


def check_flags(args: argparse.Namespace) -> None:
    """Values that cannot work, refused before the Inception network is loaded."""
    if args.kid_subset_size < 2:
        raise CycleGANError(f"--kid_subset_size {args.kid_subset_size}: KID needs subsets of at least 2 images")
    if args.size is not None and not 4 <= args.size <= 65536:
        raise CycleGANError(f"--size {args.size}: give the shorter side to translate at, from 4 to 65536 pixels")
    if args.json is not None and (not args.json.strip() or Path(args.json).is_dir()):
        raise CycleGANError(f"--json {args.json!r}: give the file to write the results to")


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_flags(args)
    device = resolve_device(args.device)
    features = InceptionFeatures(find_inception(args.inception), device)  # before any long work
    results: dict[str, Any] = {}
    if args.checkpoint:
        if not args.input:
            raise CycleGANError("--checkpoint needs --input, the folder of source-domain images to translate")
        gen = load_generator(args.checkpoint, args.direction, device, args.epoch)
        names, inputs = _read_folder(args.input, gen.in_channels, "--input")
        back = None
        reverse = "BtoA" if args.direction == "AtoB" else "AtoB"
        if reverse in gen.directions:  # the other generator closes the cycle (CycleGAN)
            back = load_generator(args.checkpoint, reverse, device, args.epoch)
        size = args.size or (min(gen.train_size) if gen.train_size else 256)
        fakes, cycle = [], []
        for x in inputs:
            h, w = x.shape[-2:]
            scale = size / min(h, w)
            x = torch.nn.functional.interpolate(x[None], size=(max(4, round(h * scale)), max(4, round(w * scale))),
                                                mode="bicubic", align_corners=False).clamp(-1, 1).to(device)
            y = translate_image(gen, x)
            fakes.append(y[0].cpu())
            if back is not None:
                cycle.append(float((translate_image(back, y) - x).abs().mean()))
        if cycle:
            results["cycle_l1"] = float(np.mean(cycle))
        results["checkpoint"] = gen.source
    else:
        names, fakes = _read_folder(args.fake, 3, "--fake")
    _, real = _read_folder(args.real, 3, "--real")
    results.update(compute_metrics(fakes, real, features, args.kid_subset_size))
    if args.paired:
        truth_dir = Path(args.paired)
        if not truth_dir.is_dir():
            raise CycleGANError(f"--paired {truth_dir}: no such folder")
        by_stem = {p.stem: p for p in list_images(truth_dir)}
        pairs = [(f, by_stem[n.stem]) for f, n in zip(fakes, names) if n.stem in by_stem]
        if not pairs:
            raise CycleGANError(f"--paired {truth_dir}: no file is named as an input ({names[0].stem}.*, ...)")
        truth = [read_image(t, f.shape[0])[0][0] for f, t in pairs]
        results.update(paired_metrics([f for f, _ in pairs], truth))
    return results


def format_table(results: dict[str, Any]) -> str:
    rows = [("FID", "fid", "{:.2f}"), ("KID", "kid", "{:.4f}"), ("KID std", "kid_std", "{:.4f}"),
            ("PSNR (dB)", "psnr", "{:.2f}"), ("SSIM", "ssim", "{:.4f}"), ("L1", "l1", "{:.4f}"),
            ("cycle L1", "cycle_l1", "{:.4f}"), ("translated images", "n_fake", "{}"), ("real images", "n_real", "{}"),
            ("paired images", "n_paired", "{}")]
    present = [(label, fmt.format(results[key])) for label, key, fmt in rows if key in results]
    width = max(len(label) for label, _ in present)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in present)


def report(args: argparse.Namespace) -> int:
    results = run(args)
    print(format_table(results))
    if args.json:
        with atomic_write(Path(args.json), "w") as f:
            json.dump({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()},
                      f, indent=2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(get_args_parser(), report, argv, log)


if __name__ == "__main__":
    sys.exit(main())
