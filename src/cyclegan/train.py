"""The training step and loop of the reference design, with the reference's flags.

    python -m cyclegan.train --dataroot DIR [flags]      (or: cyclegan train ...)

One step, for a batch ``real_A``, ``real_B``:

1. generators (one Adam over G_AB and G_BA): identity, GAN (LSGAN) and cycle losses, each the mean
   of its two directions, ``loss_G = loss_GAN + lambda_cyc * loss_cycle + lambda_id * loss_identity``;
2. D_A (its own Adam): ``(MSE(D_A(real_A), 1) + MSE(D_A(pool_A(fake_A)), 0)) / 2``;
3. D_B likewise with ``real_B`` and the pool of past ``fake_B``.

The three learning rates follow ``LambdaLR`` (constant until ``--decay_epoch``, then linear to zero
at ``--n_epochs``), stepped once per epoch.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cyclegan import datasets
from cyclegan.checkpoint import NETWORK_NAMES, checkpoint_path, list_checkpoints, load_checkpoint, save_networks
from cyclegan.errors import CycleGANError
from cyclegan.losses import cycle_loss, gan_loss, gradient_penalty, identity_loss
from cyclegan.models import define_D, define_G
from cyclegan.options import ARCHITECTURE_FIELDS, TrainConfig, describe, get_args_parser, parse_config, validate
from cyclegan.utils import LambdaLR, ReplayBuffer, atomic_write, make_grid, save_image, seed_everything

__all__ = ["TrainConfig", "get_args_parser", "build_networks", "build_optimizers", "build_schedulers",
           "train_step", "train", "main"]

log = logging.getLogger("cyclegan.train")

DEMO_DATASET = "demo"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise CycleGANError("--device cuda: no CUDA device is available here; use --device cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


def build_networks(config: TrainConfig) -> dict[str, nn.Module]:
    """G_AB, G_BA, D_A, D_B for the config, initialised (by default N(0, 0.02), as the reference)."""
    a, b = config.channels_A, config.channels_B
    g = dict(n_blocks=config.n_residual_blocks, ngf=config.ngf, norm=config.norm, use_dropout=config.use_dropout,
             upsample=config.upsample, init_type=config.init_type, init_gain=config.init_gain)
    d = dict(ndf=config.ndf, n_layers_D=config.n_layers_D, norm=config.norm, init_type=config.init_type,
             init_gain=config.init_gain)
    size = (config.img_height, config.img_width)
    return {
        "G_AB": define_G(config.netG, a, b, **g),
        "G_BA": define_G(config.netG, b, a, **g),
        "D_A": define_D(config.netD, (a, *size), **d),
        "D_B": define_D(config.netD, (b, *size), **d),
    }


def build_optimizers(nets: dict[str, nn.Module], config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    betas = (config.b1, config.b2)
    return {
        "G": torch.optim.Adam(itertools.chain(nets["G_AB"].parameters(), nets["G_BA"].parameters()),
                              lr=config.lr, betas=betas),
        "D_A": torch.optim.Adam(nets["D_A"].parameters(), lr=config.lr, betas=betas),
        "D_B": torch.optim.Adam(nets["D_B"].parameters(), lr=config.lr, betas=betas),
    }


def build_schedulers(optimizers: dict[str, torch.optim.Optimizer], config: TrainConfig) -> dict[str, Any]:
    """One scheduler per optimizer for ``--lr_policy``, positioned at ``--epoch``; stepped per epoch."""
    schedulers: dict[str, Any] = {}
    for name, opt in optimizers.items():
        if config.lr_policy == "linear":
            rule = LambdaLR(config.n_epochs, config.epoch, config.decay_epoch)
            schedulers[name] = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=rule.step)
            continue
        if config.lr_policy == "step":
            sched: Any = torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_decay_iters, gamma=0.1)
        elif config.lr_policy == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.2, threshold=0.01,
                                                               patience=5)
        elif config.lr_policy == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.n_epochs, eta_min=0)
        else:
            raise ValueError(f"unknown lr_policy {config.lr_policy!r}")
        if config.lr_policy != "plateau":
            for _ in range(config.epoch):  # a restarted run continues the schedule
                opt.step()
                sched.step()
        schedulers[name] = sched
    return schedulers


def step_schedulers(schedulers: dict[str, Any], metric: float) -> None:
    """The end-of-epoch step; ``plateau`` watches ``metric`` (the epoch's mean generator loss)."""
    for sched in schedulers.values():
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(metric)
        else:
            sched.step()


def _pool(pool: ReplayBuffer | None, images: torch.Tensor) -> torch.Tensor:
    return pool.push_and_pop(images) if pool is not None else images.detach()


def train_step(
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    buffers: dict[str, ReplayBuffer | None],
    real_A: torch.Tensor,
    real_B: torch.Tensor,
    lambda_cyc: float,
    lambda_id: float,
    gan_mode: str = "lsgan",
    lambda_gp: float = 10.0,
) -> dict[str, torch.Tensor]:
    """One step of the reference design; returns the detached loss terms.

    A buffer of None is a disabled replay buffer (``--pool_size 0``). With ``gan_mode="wgangp"``
    each discriminator loss adds the gradient penalty.
    """
    G_AB, G_BA, D_A, D_B = (nets[n] for n in NETWORK_NAMES)

    # Generators
    G_AB.train()
    G_BA.train()
    optimizers["G"].zero_grad()
    if lambda_id > 0:
        loss_id_A = identity_loss(G_BA(real_A), real_A)
        loss_id_B = identity_loss(G_AB(real_B), real_B)
        loss_identity = (loss_id_A + loss_id_B) / 2
    else:  # no identity loss (and domains may differ in channels): skip the two generator calls
        loss_identity = torch.zeros((), device=real_A.device)
    fake_B = G_AB(real_A)
    loss_GAN_AB = gan_loss(D_B(fake_B), True, gan_mode)
    fake_A = G_BA(real_B)
    loss_GAN_BA = gan_loss(D_A(fake_A), True, gan_mode)
    loss_GAN = (loss_GAN_AB + loss_GAN_BA) / 2
    recov_A = G_BA(fake_B)
    loss_cycle_A = cycle_loss(recov_A, real_A)
    recov_B = G_AB(fake_A)
    loss_cycle_B = cycle_loss(recov_B, real_B)
    loss_cycle = (loss_cycle_A + loss_cycle_B) / 2
    loss_G = loss_GAN + lambda_cyc * loss_cycle + lambda_id * loss_identity
    loss_G.backward()
    optimizers["G"].step()

    # Discriminator A
    optimizers["D_A"].zero_grad()
    loss_real = gan_loss(D_A(real_A), True, gan_mode)
    fake_A_ = _pool(buffers["A"], fake_A)
    loss_fake = gan_loss(D_A(fake_A_.detach()), False, gan_mode)
    loss_D_A = (loss_real + loss_fake) / 2
    if gan_mode == "wgangp":
        loss_D_A = loss_D_A + gradient_penalty(D_A, real_A, fake_A_, lambda_gp)
    loss_D_A.backward()
    optimizers["D_A"].step()

    # Discriminator B
    optimizers["D_B"].zero_grad()
    loss_real = gan_loss(D_B(real_B), True, gan_mode)
    fake_B_ = _pool(buffers["B"], fake_B)
    loss_fake = gan_loss(D_B(fake_B_.detach()), False, gan_mode)
    loss_D_B = (loss_real + loss_fake) / 2
    if gan_mode == "wgangp":
        loss_D_B = loss_D_B + gradient_penalty(D_B, real_B, fake_B_, lambda_gp)
    loss_D_B.backward()
    optimizers["D_B"].step()

    loss_D = (loss_D_A + loss_D_B) / 2
    return {
        "D": loss_D.detach(),
        "G": loss_G.detach(),
        "adv": loss_GAN.detach(),
        "cycle": loss_cycle.detach(),
        "identity": loss_identity.detach(),
    }


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class RunData:
    root: Path
    train: datasets.ImageDataset
    val: datasets.ImageDataset
    demo: bool


def choose_dataset(config: TrainConfig, dataset_name_given: bool) -> Path | None:
    """The dataset folder the flags name, or None for the built-in demo data.

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
        return root
    if config.dataset_name == DEMO_DATASET:
        return None
    root = Path("data") / config.dataset_name
    if root.exists():
        return root
    if not dataset_name_given:
        log.info("no dataset given and %s does not exist: training on the built-in demo data", root)
        config.dataset_name = DEMO_DATASET
        return None
    raise CycleGANError(
        f"--dataset_name {config.dataset_name}: {root} does not exist; put the dataset there "
        "(train/A and train/B, or trainA and trainB) or give its folder with --dataroot"
    )


def resolve_data(config: TrainConfig, root: Path | None, run_dir: Path) -> RunData:
    """Open the dataset (writing the demo data when ``root`` is None) and check every image."""
    demo = root is None
    if root is None:
        root = run_dir / "demo_data"
        if not datasets.has_split(root, "train"):
            datasets.write_demo_dataset(root, size=max(config.img_height, config.img_width))
    h, w = config.img_height, config.img_width
    options = dict(channels=config.channels_A, channels_B=config.channels_B, direction=config.direction,
                   max_dataset_size=config.max_dataset_size)
    train_set = datasets.ImageDataset(
        root,
        datasets.build_transforms(config.preprocess, h, w, config.load_size, not config.no_flip, config.channels_A),
        unaligned=not config.serial_batches, mode="train", **options,
    )
    val_mode = "test" if datasets.has_split(root, "test") else "train"
    val_set = datasets.ImageDataset(
        root, datasets.test_transforms(h, w, config.channels_A), unaligned=False, mode=val_mode, **options
    )
    workers = max(1, min(8, os.cpu_count() or 1))
    progress = sys.stderr.isatty()
    min_size = (w, h) if config.preprocess == "crop" else None
    problems = datasets.scan_images(sorted(set(train_set.files_A + train_set.files_B)), workers, progress, min_size)
    problems += datasets.scan_images(sorted(set(val_set.files_A + val_set.files_B) - set(train_set.files_A)
                                            - set(train_set.files_B)), workers, progress)
    files = set(train_set.files_A + train_set.files_B + val_set.files_A + val_set.files_B)
    if problems:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in problems)
        raise CycleGANError(
            f"{len(problems)} of {len(files)} image files cannot be read; fix or remove them:\n{listing}"
        )
    return RunData(root, train_set, val_set, demo)


def sample_images(nets: dict[str, nn.Module], batch: dict[str, torch.Tensor], path: Path, device: torch.device) -> None:
    """A grid with rows real_A, fake_B, real_B, fake_A."""
    G_AB, G_BA = nets["G_AB"], nets["G_BA"]
    G_AB.eval()
    G_BA.eval()
    with torch.no_grad():
        real_A = batch["A"].to(device)
        real_B = batch["B"].to(device)
        fake_B = G_AB(real_A)
        fake_A = G_BA(real_B)
    G_AB.train()
    G_BA.train()
    n = real_A.size(0)
    rows = [make_grid(x.cpu(), nrow=n) for x in (real_A, fake_B, real_B, fake_A)]
    save_image(torch.cat(rows, dim=1), path)


class Progress:
    """A tqdm bar on a terminal; otherwise a log line every tenth of an epoch."""

    def __init__(self, total: int, epoch: int, n_epochs: int, start_batches: int, total_batches: int) -> None:
        from tqdm import tqdm

        self.tty = sys.stderr.isatty()
        self.total, self.epoch, self.n_epochs = total, epoch, n_epochs
        self.every = max(1, total // 10)
        self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{n_epochs}", unit="batch", leave=False) if self.tty else None
        self.start_batches, self.total_batches = start_batches, total_batches

    def update(self, i: int, losses: dict[str, float], img_per_s: float, eta_s: float) -> None:
        text = (
            f"D {losses['D']:.4f} G {losses['G']:.4f} adv {losses['adv']:.4f} "
            f"cycle {losses['cycle']:.4f} identity {losses['identity']:.4f} | {img_per_s:.3g} img/s"
        )
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text} | ETA {format_eta(eta_s)}", refresh=False)
            self.bar.update(1)
        elif (i + 1) % self.every == 0 or i + 1 == self.total:
            log.info(
                "[Epoch %d/%d] [Batch %d/%d] %s | ETA %s",
                self.epoch + 1, self.n_epochs, i + 1, self.total, text, format_eta(eta_s),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def check_same_architecture(config: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    """Refuse to load a checkpoint into networks configured differently, listing every difference."""
    defaults = TrainConfig()
    diffs = [
        f"--{k} {getattr(config, k)} (checkpoint: {saved.get(k, getattr(defaults, k))})"
        for k in ARCHITECTURE_FIELDS
        if saved.get(k, getattr(defaults, k)) != getattr(config, k)
    ]
    if diffs:
        raise CycleGANError(
            f"{path} was trained with other network options; give the checkpoint's: " + ", ".join(diffs)
        )


def prepare_run_dir(config: TrainConfig, run_dir: Path) -> None:
    """Refuse to start a new run over an existing one unless asked to."""
    if config.epoch == 0 and (run_dir / "config.json").exists() and not config.overwrite:
        raise CycleGANError(
            f"run folder {run_dir} already holds a run (config.json): continue it with --epoch N, "
            "choose another --output, or pass --overwrite to start over in it"
        )


def train(config: TrainConfig, dataset_name_given: bool = True) -> Path:
    """Train as the config says; returns the run folder."""
    validate(config)
    device = resolve_device(config.device)
    data_root = choose_dataset(config, dataset_name_given)
    run_dir = Path(config.output) if config.output else Path("runs") / config.dataset_name
    prepare_run_dir(config, run_dir)
    start_states, start_from = None, None
    if config.epoch > 0:
        ckpt = checkpoint_path(run_dir, config.epoch)
        if not ckpt.is_file():
            saved = ", ".join(str(e) for e in list_checkpoints(run_dir)) or "none"
            raise CycleGANError(
                f"--epoch {config.epoch}: no checkpoint {ckpt} (epochs saved in {run_dir}: {saved})"
            )
        start_states, meta = load_checkpoint(ckpt)
        start_from = ckpt
        check_same_architecture(config, meta.get("config", {}), ckpt)

    data = resolve_data(config, data_root, run_dir)
    if config.seed is None:
        config.seed = random.SystemRandom().randrange(2**31)
    seed_everything(config.seed)

    nets = build_networks(config)
    if start_states is not None:
        for name in NETWORK_NAMES:
            nets[name].load_state_dict(start_states[name])
    for net in nets.values():
        net.to(device)
    optimizers = build_optimizers(nets, config)
    schedulers = build_schedulers(optimizers, config)
    buffers = {k: ReplayBuffer(config.pool_size) if config.pool_size > 0 else None for k in ("A", "B")}

    workers = min(config.n_cpu, os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        data.train, batch_size=config.batch_size, shuffle=not config.serial_batches, num_workers=workers,
        generator=generator,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    n_val = min(5, len(data.val))
    val_batch = torch.utils.data.default_collate([data.val[k] for k in range(n_val)])

    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    with atomic_write(run_dir / "config.json", "w") as f:
        json.dump(config.to_json(), f, indent=2)
    log.info(
        "training on %s (%d images in A, %d in B) on %s, run folder %s, seed %d",
        data.root, len(data.train.files_A), len(data.train.files_B), device, run_dir, config.seed,
    )

    if start_from is not None:
        log.info("starting from %s (epoch %d of %d)", start_from, config.epoch + 1, config.n_epochs)
    n_batches = len(loader)
    total_batches = (config.n_epochs - config.epoch) * n_batches
    done_batches = 0
    start = time.perf_counter()
    for epoch in range(config.epoch, config.n_epochs):
        progress = Progress(n_batches, epoch, config.n_epochs, done_batches, total_batches)
        loss_G_sum = 0.0
        for i, batch in enumerate(loader):
            t0 = time.perf_counter()
            real_A = batch["A"].to(device, non_blocking=True)
            real_B = batch["B"].to(device, non_blocking=True)
            losses = train_step(nets, optimizers, buffers, real_A, real_B, config.lambda_cyc, config.lambda_id,
                                config.gan_mode, config.lambda_gp)
            values = {k: float(v) for k, v in losses.items()}
            loss_G_sum += values["G"]
            step_s = time.perf_counter() - t0
            done_batches += 1
            elapsed = time.perf_counter() - start
            eta = elapsed / done_batches * (total_batches - done_batches)
            progress.update(i, values, real_A.size(0) / max(step_s, 1e-9), eta)
            batches_done = epoch * n_batches + i
            if batches_done % config.sample_interval == 0:
                sample_images(nets, val_batch, run_dir / "samples" / f"{batches_done:07d}.png", device)
        progress.close()
        step_schedulers(schedulers, loss_G_sum / max(1, n_batches))
        completed = epoch + 1
        if completed == config.n_epochs or (
            config.checkpoint_interval != -1 and completed % config.checkpoint_interval == 0
        ):
            path = save_networks(
                checkpoint_path(run_dir, completed), nets, {"epoch": completed, "config": config.to_json()}
            )
            log.info("saved %s", path)
    log.info("done: %d epochs in %s, run folder %s", config.n_epochs - config.epoch,
             format_eta(time.perf_counter() - start), run_dir)
    return run_dir


def setup_logging() -> None:
    """Log lines to stderr, once per process (a no-op when the application configured logging)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cyclegan.train`` and ``cyclegan train``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        config, explicit, print_config = parse_config(argv)
        if print_config:
            validate(config)
            print(describe(config), end="")
            return 0
        train(config, dataset_name_given="dataset_name" in explicit)
    except CycleGANError as exc:
        log.error("%s", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
