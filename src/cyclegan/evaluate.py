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

from cyclegan import science
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
    p.add_argument("--value_range", nargs="+", metavar="V", help=(
        "scientific images: the values that map onto -1..1 when reading translations and truths: dtype, MIN MAX, or "
        "percentiles of the --real files such as p0.5 p99.5 (default: with --checkpoint the run's target range, "
        "else each file's type's range)"))
    p.add_argument("--display_bands", metavar="R,G,B", help=(
        "images of other than 1 or 3 channels: the three channels (from 0) FID and KID see as RGB; without it they "
        "get PSNR, SSIM and L1 (--paired) and the cycle error only"))
    p.add_argument("--json", help="also write the results to this JSON file")
    add_debug_flag(p)
    return p


def read_for_scoring(path: Path, channels: int, domain: science.Domain | None = None) -> torch.Tensor:
    """One image as ``(C, H, W)`` in [-1, 1]: an 8-bit photograph as ``read_image`` reads it, a
    scientific file (``science``) by ``domain``'s range, else by its type's."""
    if domain is None and channels in (1, 3) and not science.needs_array_path(path):
        return read_image(path, channels)[0][0]
    return _encode(science.read_array(path)[0], channels, domain)


def _encode(array: np.ndarray, channels: int, domain: science.Domain | None) -> torch.Tensor:
    if array.shape[2] != channels and not (array.shape[2] == 1 and channels == 3):
        raise ValueError(f"it holds {array.shape[2]} channel(s), not {channels}")
    tensor = science.encode(array, domain)
    return tensor.expand(channels, -1, -1).contiguous() if tensor.shape[0] != channels else tensor  # grey as RGB


def _read_folder(folder: str, channels: int, flag: str,
                 domain: science.Domain | None = None) -> tuple[list[str], list[torch.Tensor]]:
    """Every image of a folder as ``(C, H, W)`` in [-1, 1], with the names pairs are matched by
    (the file name without its extension; a NIfTI volume gives every slice, ``NAME[k]``)."""
    path = Path(folder)
    if not path.is_dir():
        raise CycleGANError(f"{flag} {path}: no such folder")
    files = list_images(path)
    if not files:
        raise CycleGANError(f"{flag} {path}: the folder holds no images")
    names, tensors = [], []
    axis = domain.slice_axis if domain is not None and domain.slice_axis is not None else 2
    for f in files:
        try:
            if science.is_volume(f):
                for k, plane in enumerate(science.volume_slices(f, axis)):
                    names.append(science.stem_of(science.Slice(f, k, axis)))
                    tensors.append(_encode(plane, channels, domain))
                continue
            tensors.append(read_for_scoring(f, channels, domain))
            names.append(f.stem)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, CycleGANError) as exc:
            raise CycleGANError(f"{flag}: cannot read {f} ({type(exc).__name__}: {exc}); remove or fix it") from None
    return names, tensors


def _scale_of(args: argparse.Namespace, channels: int, run_target: science.Domain | None) -> science.Domain | None:
    """The range translations and truths are read by: ``--value_range`` (percentiles: of the
    ``--real`` files), else the run's target domain, else each file's type's (None)."""
    if args.value_range is None:
        return run_target
    text = " ".join(args.value_range)
    kind, a, b = science.parse_value_range(text)
    if kind == "dtype":
        return None
    if kind == "given":
        return science.Domain("any", channels, (a,) * channels, (b,) * channels, text)
    files = [f for f in list_images(Path(args.real)) if not science.is_volume(f)]
    return science.scan_domain(files, channels, text, "--value_range", "--real")[0]


def _channels_of(folder: str) -> int:
    """The channel count of a folder's first image (3 for an 8-bit photograph)."""
    try:
        files = list_images(Path(folder))
        if not science.needs_array_path(files[0]):
            return 3
        return int(science.read_array(files[0])[0].shape[2])
    except (CycleGANError, OSError, ValueError):  # said when the folder is read
        return 3


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
    bands = science.parse_bands(args.display_bands)
    device = resolve_device(args.device)
    results: dict[str, Any] = {}
    gen = None
    target: science.Domain | None = None
    if args.checkpoint:
        if not args.input:
            raise CycleGANError("--checkpoint needs --input, the folder of source-domain images to translate")
        gen = load_generator(args.checkpoint, args.direction, device, args.epoch)
        saved = gen.config or {}
        source_json, target_json = saved.get("data_A"), saved.get("data_B")
        if args.direction == "BtoA":
            source_json, target_json = target_json, source_json
        target = science.Domain.from_json(target_json) if target_json else None
        channels = gen.out_channels
    else:
        channels = _channels_of(args.fake)
    target = _scale_of(args, channels, target)
    with_fid = channels in (1, 3) or bands is not None
    if bands is not None and max(bands) >= channels:
        raise CycleGANError(f"--display_bands {args.display_bands}: the images have {channels} channels, counted "
                            "from 0")
    features = InceptionFeatures(find_inception(args.inception), device) if with_fid else None  # before long work
    if not with_fid:
        log.info("the images have %d channels: FID and KID need --display_bands R,G,B; scoring PSNR, SSIM, L1 and "
                 "the cycle error only", channels)
    if gen is not None:
        names, inputs = _read_folder(args.input, gen.in_channels, "--input",
                                     science.Domain.from_json(source_json) if source_json else None)
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
        names, fakes = _read_folder(args.fake, channels if channels not in (1, 3) else 3, "--fake", target)
    if features is not None:
        _, real = _read_folder(args.real, channels if channels not in (1, 3) else 3, "--real", target)
        def shown(images: list[torch.Tensor]) -> list[torch.Tensor]:  # the --display_bands composite
            return [science.composite(x[None], bands)[0] for x in images]

        results.update(compute_metrics(shown(fakes), shown(real), features, args.kid_subset_size))
    if args.paired:
        truth_dir = Path(args.paired)
        if not truth_dir.is_dir():
            raise CycleGANError(f"--paired {truth_dir}: no such folder")
        truth_names, truths = _read_folder(args.paired, fakes[0].shape[0], "--paired", target)
        by_name = dict(zip(truth_names, truths))
        pairs = [(f, by_name[n]) for f, n in zip(fakes, names) if n in by_name]
        if not pairs:
            raise CycleGANError(f"--paired {truth_dir}: no file is named as an input ({names[0]}.*, ...)")
        results.update(paired_metrics([f for f, _ in pairs], [t for _, t in pairs]))
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
