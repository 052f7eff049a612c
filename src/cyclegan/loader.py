"""What a run trains on: the dataset folder the flags name (or the built-in demo data), its
images checked before any step, the training and sample sets, and the data loader whose order
is a function of the seed and the position (``datasets.EpochSampler``)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cyclegan import datasets, science, zoo
from cyclegan.errors import CycleGANError
from cyclegan.images import scan_images
from cyclegan.models import discriminator_min_side
from cyclegan.options import TrainConfig
from cyclegan.paired import PairedDataset, paired_layout, require_paired
from cyclegan.registry import get_model

__all__ = ["RunData", "choose_dataset", "open_run_data", "make_loader", "sample_batch"]

log = logging.getLogger("cyclegan.train")


@dataclass
class RunData:
    root: Path
    train: datasets.ImageDataset | PairedDataset
    val: datasets.ImageDataset | PairedDataset
    # Each side's science.Domain as JSON (None: 8-bit photographs), what config.data_A/B keep.
    domains: dict[str, dict[str, Any] | None] = dataclasses.field(default_factory=lambda: {"A": None, "B": None})


def choose_dataset(config: TrainConfig, dataset_name_given: bool) -> tuple[TrainConfig, Path | None]:
    """The config with its dataset settled, and the dataset folder it names (None for the
    built-in demo data). The config comes back as given except where no dataset was given
    (``dataset_name_given`` False) and the default's folder is missing: then it names the demo.

    The demo data are used for ``--dataset_name demo``, and when neither ``--dataroot`` nor
    ``--dataset_name`` is given and the reference's default ``data/monet2photo`` does not exist.
    """
    if config.dataroot is not None:
        root = Path(config.dataroot)
        if not root.exists():
            raise CycleGANError(
                f"--dataroot {root}: the folder does not exist; give the folder that holds train/A and "
                "train/B (or trainA and trainB)"
            )
        return config, root
    if config.dataset_name == datasets.DEMO_DATASET:
        return config, None
    root = Path("data") / config.dataset_name
    if root.exists():
        return config, root
    if not dataset_name_given:
        log.info("no dataset given and %s does not exist: training on the built-in demo data (%s fetches the "
                 "reference's default dataset)", root, zoo.download_dataset_hint(config.dataset_name))
        return dataclasses.replace(config, dataset_name=datasets.DEMO_DATASET), None
    # A paired model wants the pix2pix archive of a name both families have (facades, maps).
    paired = get_model(config.model).paired
    entry = zoo.find_dataset(f"pix2pix/{config.dataset_name}" if paired else config.dataset_name) or \
        zoo.find_dataset(config.dataset_name)
    if entry is not None:
        name = entry.qualified if zoo.find_dataset(config.dataset_name) != entry else entry.name
        raise CycleGANError(
            f"--dataset_name {config.dataset_name}: {root} does not exist; it is an official {entry.family} dataset: "
            f"fetch it with '{zoo.download_dataset_hint(name)}' (or give its folder with --dataroot)"
        )
    raise CycleGANError(
        f"--dataset_name {config.dataset_name}: {root} does not exist; put the dataset there "
        "(train/A and train/B, or trainA and trainB) or give its folder with --dataroot"
    )


def demo_root(run_dir: Path) -> Path:
    """Where a run on the demo data keeps them."""
    return run_dir / "demo_data"


def write_demo_data(config: TrainConfig, run_dir: Path) -> None:
    """Write the demo data into the run folder unless they are there (in pairs for a paired model)."""
    root = demo_root(run_dir)
    if not datasets.has_split(root, "train"):
        datasets.write_demo_dataset(root, size=max(config.img_height, config.img_width),
                                    paired=get_model(config.model).paired)


def _sample_split(root: Path, paired: bool) -> str:
    """The split sample grids show: test, else val, else train."""
    for split in ("test", "val"):
        if (paired_layout(root, split) is not None) if paired else datasets.has_split(root, split):
            return split
    return "train"


def open_run_data(config: TrainConfig, root: Path | None, run_dir: Path) -> RunData:
    """Open the dataset (writing the demo data when ``root`` is None) and check every image. A
    paired model (pix2pix) reads pairs (``paired.PairedDataset``: aligned AB images, or A and B
    folders paired by name), the others two unpaired folders."""
    if root is None:
        write_demo_data(config, run_dir)
        root = demo_root(run_dir)
    h, w = config.img_height, config.img_width
    options = dict(channels=config.channels_A, channels_B=config.channels_B, direction=config.direction,
                   max_dataset_size=config.max_dataset_size)
    train_transform = datasets.build_transforms(config.preprocess, h, w, config.load_size, not config.no_flip,
                                                config.channels_A, vflip=config.vflip, rot90=config.rot90)
    paired = get_model(config.model).paired
    split = _sample_split(root, paired)
    train_set: Any
    val_set: Any
    if paired:
        require_paired(root, "train")
        train_set = PairedDataset(root, train_transform, mode="train", **options)
        val_set = PairedDataset(root, datasets.test_transforms(h, w, config.channels_A), mode=split, **options)
    else:
        train_set = datasets.ImageDataset(root, train_transform, unaligned=not config.serial_batches, mode="train",
                                          **options)
        val_set = datasets.ImageDataset(root, datasets.test_transforms(h, w, config.channels_A), unaligned=False,
                                        mode=split, **options)
    if config.finetune_phase:  # the official CUT's: whole images from the first decaying epoch
        train_set.finetune_from(config.decay_epoch + 1, datasets.build_transforms(
            config.preprocess, h, w, config.load_size, not config.no_flip, config.channels_A, finetune=True,
            vflip=config.vflip, rot90=config.rot90))
    domains = check_images(config, train_set, val_set)
    return RunData(root, train_set, val_set, domains)


def check_images(config: TrainConfig, *sets: Any) -> dict[str, dict[str, Any] | None]:
    """Decode every file of the sets before training; stop with the list of those that fail
    (``--bad_images error``), or leave them out (``skip``). A side whose files are not 8-bit
    photographs (``science``) is read at full precision: its ``Domain`` is settled here (or
    taken from the resumed run) and returned as JSON, None for an 8-bit side."""
    if config.preprocess in ("none", "scale_width"):  # sizes vary: the discriminator's minimum
        side = max(32, discriminator_min_side(config.netD, config.n_layers_D))
        min_size, min_label = (side, side), "the discriminator's minimum"
    else:
        min_size, min_label = (config.img_width, config.img_height), "the crop (--img_width x --img_height)"
    if isinstance(sets[0], PairedDataset) and sets[0].layout == "aligned":  # two halves side by side
        min_size, min_label = (2 * min_size[0], min_size[1]), f"twice the width of {min_label} (A and B side by side)"
    domains: dict[str, dict[str, Any] | None] = {"A": None, "B": None}
    problems: list[tuple[Any, str]] = []
    photos: set[Path] = set()
    everything: set[Any] = set()
    for side in ("A", "B"):
        files = sorted({p for ds in sets for p in getattr(ds, f"files_{side}")})
        saved = getattr(config, f"data_{side}")
        channels = config.channels_A if side == "A" else config.channels_B
        if saved is None and channels in (1, 3) and not any(science.needs_array_path(p) for p in files):
            photos.update(files)
            continue
        domain, found = _scan_scientific(config, side, sets, min_size)
        domains[side] = domain.to_json()
        problems += found
        for ds in sets:
            ds.domains[side] = domain
        everything.update(p for ds in sets for p in getattr(ds, f"files_{side}"))
    everything |= photos
    workers = max(1, min(8, os.cpu_count() or 1))
    problems += scan_images(sorted(photos), workers, sys.stderr.isatty(), min_size, min_label)
    if not problems:
        return domains
    listing = "\n".join(f"  {path}: {reason}" for path, reason in problems)
    if config.bad_images == "error":
        raise CycleGANError(
            f"{len(problems)} of {len(everything)} image files cannot be used; fix or remove them, or pass "
            f"--bad_images skip to leave them out:\n{listing}"
        )
    log.warning("leaving out %d of %d image files (--bad_images skip):\n%s", len(problems), len(everything), listing)
    bad = {path for path, _ in problems}
    for ds in sets:
        ds.exclude(bad)
        for folder, kept in ((ds.dir_A, ds.files_A), (ds.dir_B, ds.files_B)):
            if not kept:
                raise CycleGANError(f"{folder}: no usable image is left once the bad files are left out")
    return domains


def _scan_scientific(config: TrainConfig, side: str, sets: Sequence[Any],
                     min_size: tuple[int, int]) -> tuple[science.Domain, list[tuple[Any, str]]]:
    """Settle a scientific side: NIfTI volumes become their non-empty slices; every file (slice)
    is read once (``science.scan_domain``: the value range from the training files, types and
    channels checked, NaN refused)."""
    flag = "--input_nc" if side == "A" else "--output_nc"
    channels = config.channels_A if side == "A" else config.channels_B
    value_range = config.value_range if side == "A" else (config.value_range_B or config.value_range)
    saved = getattr(config, f"data_{side}")
    for ds in sets:
        files = getattr(ds, f"files_{side}")
        volumes = [science.is_volume(p) for p in files]
        if any(volumes) and not all(volumes):
            odd = files[volumes.index(False)]
            raise CycleGANError(f"{odd}: not a NIfTI volume, but other files of domain {side} are; one domain holds "
                                "volumes or images, not both")
        if any(volumes):
            if isinstance(ds, PairedDataset):
                raise CycleGANError(f"{files[0]}: a paired model reads images, not NIfTI volumes; write the slices "
                                    "as TIFF or .npy pairs")
            setattr(ds, f"files_{side}", science.volume_items(files, config.slice_axis))
            if not getattr(ds, f"files_{side}"):
                raise CycleGANError(f"{ds.dir_A if side == 'A' else ds.dir_B}: every slice of its volumes holds one "
                                    "value throughout; nothing to train on")
        if isinstance(ds, PairedDataset) and ds.layout == "aligned":
            raise CycleGANError(f"{ds.dir_A}: A and B side by side in one file is for 8-bit images; put scientific "
                                "pairs in A and B folders, paired by name")

    def warn(item: Any, clipped: float, domain: science.Domain) -> None:
        log.warning("%s: the value range %s clips %.1f%% of its pixels; give --value_range%s MIN MAX or percentiles",
                    item, domain.value_range, 100 * clipped, "" if side == "A" else "_B")

    def narrow(domain: science.Domain, spans: list[tuple[int, float, float, float]]) -> None:
        which = "" if channels == 1 else "channel " + ", ".join(str(c) for c, *_ in spans) + ": "
        lo, hi = domain.lo[0], domain.hi[0]
        shown = ".0f" if np.dtype(domain.dtype).kind in "ui" else ".4g"
        values = ", ".join(f"{low:{shown}}..{high:{shown}} ({100 * fraction:.1f} %)" for _, low, high, fraction in spans)
        log.warning("domain %s: %sthe training files' values lie within %s of the range %g..%g that --value_range "
                    "dtype (the default) maps to -1..1, so the network sees a narrow band and learns little within "
                    "it; give --value_range%s p0.5 p99.5 (or MIN MAX) to spread them (docs/scientific.md)",
                    side, which, values, lo, hi, "" if side == "A" else "_B")

    train_items = list(getattr(sets[0], f"files_{side}"))
    domain, problems = science.scan_domain(
        train_items, channels, value_range, flag, f"domain {side}", science.Domain.from_json(saved) if saved else None,
        min_size, warn, narrow)
    others = sorted({p for ds in sets[1:] for p in getattr(ds, f"files_{side}")} - set(train_items), key=str)
    if others:
        problems += science.scan_domain(others, channels, value_range, flag, f"domain {side}", domain, min_size,
                                        warn)[1]
    if len(problems) < len(train_items) + len(others):  # something was read: say how
        log.info("domain %s: %s", side, domain.describe())
    return domain, problems


def make_loader(dataset: datasets.ImageDataset, config: TrainConfig, rank: int, world_size: int,
                pin_memory: bool) -> tuple[DataLoader, datasets.EpochSampler]:
    """The training loader of this rank and its sampler (``set_epoch`` before each epoch)."""
    workers = min(config.n_cpu, os.cpu_count() or 1)
    sampler = datasets.EpochSampler(len(dataset), config.seed, shuffle=not config.serial_batches,
                                    rank=rank, world_size=world_size, batch_size=config.batch_size)
    loader = DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, num_workers=workers,
        generator=torch.Generator().manual_seed(config.seed),  # workers' seeds drawn from it, not the global RNG
        pin_memory=pin_memory, persistent_workers=workers > 0,
    )
    return loader, sampler


def sample_batch(val: datasets.ImageDataset, count: int = 5) -> dict[str, torch.Tensor]:
    """The first ``count`` sample images (the test split's when there is one): the same every time,
    and drawn without touching torch's generator (a dataset may draw for an item even when its
    transforms are fixed, and a resumed run must draw what a straight run draws)."""
    with torch.random.fork_rng(devices=[]):
        return torch.utils.data.default_collate([val[k] for k in range(min(count, len(val)))])
