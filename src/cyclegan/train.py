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

import argparse
import dataclasses
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
from cyclegan.losses import cycle_loss, gan_loss, identity_loss
from cyclegan.models import Discriminator, GeneratorResNet, weights_init_normal
from cyclegan.utils import LambdaLR, ReplayBuffer, atomic_write, make_grid, save_image, seed_everything

__all__ = ["TrainConfig", "get_args_parser", "config_from_args", "build_networks", "train_step", "train", "main"]

log = logging.getLogger("cyclegan.train")

DEMO_DATASET = "demo"


@dataclass
class TrainConfig:
    """Every setting of a run; stored as ``config.json`` in the run folder."""

    epoch: int = 0
    n_epochs: int = 200
    dataset_name: str = "monet2photo"
    batch_size: int = 1
    lr: float = 0.0002
    b1: float = 0.5
    b2: float = 0.999
    decay_epoch: int = 100
    n_cpu: int = 8
    img_height: int = 256
    img_width: int = 256
    channels: int = 3
    sample_interval: int = 100
    checkpoint_interval: int = -1
    n_residual_blocks: int = 9
    lambda_cyc: float = 10.0
    lambda_id: float = 5.0
    dataroot: str | None = None
    output: str | None = None
    device: str = "auto"
    seed: int | None = None
    overwrite: bool = False

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="cyclegan train",
        description="Train CycleGAN on two folders of unpaired images (the reference design and flags).",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--epoch", type=int, default=d.epoch,
                   help="epoch to start from; N > 0 loads the checkpoint saved after N epochs from the run folder")
    p.add_argument("--n_epochs", type=int, default=d.n_epochs, help="number of epochs of training")
    p.add_argument("--dataset_name", default=d.dataset_name,
                   help="dataset under data/<dataset_name>; 'demo' is the built-in procedural data, also used "
                        "when neither this flag nor --dataroot is given and data/monet2photo does not exist")
    p.add_argument("--batch_size", type=int, default=d.batch_size, help="size of the batches")
    p.add_argument("--lr", type=float, default=d.lr, help="adam: learning rate")
    p.add_argument("--b1", type=float, default=d.b1, help="adam: decay of first order momentum of gradient")
    p.add_argument("--b2", type=float, default=d.b2, help="adam: decay of second order momentum of gradient")
    p.add_argument("--decay_epoch", type=int, default=d.decay_epoch, help="epoch from which to start lr decay")
    p.add_argument("--n_cpu", type=int, default=d.n_cpu,
                   help="data-loading worker processes (at most the machine's CPU count; 0 loads in the main process)")
    p.add_argument("--img_height", type=int, default=d.img_height, help="size of image height (a multiple of 16)")
    p.add_argument("--img_width", type=int, default=d.img_width, help="size of image width (a multiple of 16)")
    p.add_argument("--channels", type=int, default=d.channels, help="number of image channels (1 or 3)")
    p.add_argument("--sample_interval", type=int, default=d.sample_interval,
                   help="interval (in batches) between sample grids written to <output>/samples")
    p.add_argument("--checkpoint_interval", type=int, default=d.checkpoint_interval,
                   help="interval (in epochs) between checkpoints; -1 saves only at the end")
    p.add_argument("--n_residual_blocks", type=int, default=d.n_residual_blocks,
                   help="number of residual blocks in generator")
    p.add_argument("--lambda_cyc", type=float, default=d.lambda_cyc, help="cycle loss weight")
    p.add_argument("--lambda_id", type=float, default=d.lambda_id, help="identity loss weight")
    p.add_argument("--dataroot", default=None,
                   help="folder holding train/A, train/B (and test/A, test/B), or trainA, trainB, testA, testB "
                        "(default: data/<dataset_name>)")
    p.add_argument("--output", default=None, help="run folder for samples, checkpoints and config "
                                                  "(default: runs/<dataset_name>)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                   help="where to train; auto takes CUDA when available")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of every random generator (default: a random seed, recorded in config.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output folder that already holds one")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def validate(config: TrainConfig) -> None:
    """Refuse settings that cannot work, naming the flag."""
    for flag in ("img_height", "img_width"):
        value = getattr(config, flag)
        if value < 16 or value % 16:
            raise CycleGANError(
                f"--{flag} {value} is not a multiple of 16 (at least 16): the discriminator halves the image "
                f"four times; use e.g. {max(16, (value + 8) // 16 * 16)}"
            )
    if config.img_height == 16 and config.img_width == 16:
        raise CycleGANError(
            "--img_height 16 --img_width 16 is too small: the discriminator's last instance norm needs more than "
            "one value per channel; make one side at least 32"
        )
    if config.channels not in (1, 3):
        raise CycleGANError(f"--channels {config.channels}: use 1 (grey) or 3 (RGB)")
    if config.batch_size < 1:
        raise CycleGANError(f"--batch_size {config.batch_size}: use 1 or more")
    if config.n_epochs < 1:
        raise CycleGANError(f"--n_epochs {config.n_epochs}: use 1 or more")
    if not 0 <= config.epoch < config.n_epochs:
        raise CycleGANError(f"--epoch {config.epoch} must be at least 0 and below --n_epochs {config.n_epochs}")
    if config.decay_epoch >= config.n_epochs or config.decay_epoch < 0:
        raise CycleGANError(
            f"--decay_epoch {config.decay_epoch} must be at least 0 and below --n_epochs {config.n_epochs}: "
            f"the learning rate decays linearly from --decay_epoch to zero at --n_epochs "
            f"(e.g. --decay_epoch {config.n_epochs // 2})"
        )
    if config.sample_interval < 1:
        raise CycleGANError(f"--sample_interval {config.sample_interval}: use 1 or more")
    if config.checkpoint_interval == 0 or config.checkpoint_interval < -1:
        raise CycleGANError(f"--checkpoint_interval {config.checkpoint_interval}: use -1 (end only) or 1 or more")
    if config.n_residual_blocks < 0:
        raise CycleGANError(f"--n_residual_blocks {config.n_residual_blocks}: use 0 or more")
    if config.n_cpu < 0:
        raise CycleGANError(f"--n_cpu {config.n_cpu}: use 0 or more")
    if config.lr <= 0:
        raise CycleGANError(f"--lr {config.lr}: use a positive learning rate")
    for flag in ("b1", "b2"):
        if not 0 <= getattr(config, flag) < 1:
            raise CycleGANError(f"--{flag} {getattr(config, flag)}: Adam's betas lie in [0, 1)")
    for flag in ("lambda_cyc", "lambda_id"):
        if getattr(config, flag) < 0:
            raise CycleGANError(f"--{flag} {getattr(config, flag)}: loss weights cannot be negative")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise CycleGANError("--device cuda: no CUDA device is available here; use --device cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


def build_networks(config: TrainConfig) -> dict[str, nn.Module]:
    """G_AB, G_BA, D_A, D_B for the config, initialised N(0, 0.02) as the reference does."""
    shape = (config.channels, config.img_height, config.img_width)
    nets: dict[str, nn.Module] = {
        "G_AB": GeneratorResNet(shape, config.n_residual_blocks),
        "G_BA": GeneratorResNet(shape, config.n_residual_blocks),
        "D_A": Discriminator(shape),
        "D_B": Discriminator(shape),
    }
    for net in nets.values():
        net.apply(weights_init_normal)
    return nets


def build_optimizers(nets: dict[str, nn.Module], config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    betas = (config.b1, config.b2)
    return {
        "G": torch.optim.Adam(itertools.chain(nets["G_AB"].parameters(), nets["G_BA"].parameters()),
                              lr=config.lr, betas=betas),
        "D_A": torch.optim.Adam(nets["D_A"].parameters(), lr=config.lr, betas=betas),
        "D_B": torch.optim.Adam(nets["D_B"].parameters(), lr=config.lr, betas=betas),
    }


def train_step(
    nets: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    buffers: dict[str, ReplayBuffer],
    real_A: torch.Tensor,
    real_B: torch.Tensor,
    lambda_cyc: float,
    lambda_id: float,
) -> dict[str, torch.Tensor]:
    """One step of the reference design; returns the detached loss terms."""
    G_AB, G_BA, D_A, D_B = (nets[n] for n in NETWORK_NAMES)
    target_shape = (real_A.size(0), *D_A.output_shape)
    valid = torch.ones(target_shape, device=real_A.device)
    fake = torch.zeros(target_shape, device=real_A.device)

    # Generators
    G_AB.train()
    G_BA.train()
    optimizers["G"].zero_grad()
    loss_id_A = identity_loss(G_BA(real_A), real_A)
    loss_id_B = identity_loss(G_AB(real_B), real_B)
    loss_identity = (loss_id_A + loss_id_B) / 2
    fake_B = G_AB(real_A)
    loss_GAN_AB = gan_loss(D_B(fake_B), valid)
    fake_A = G_BA(real_B)
    loss_GAN_BA = gan_loss(D_A(fake_A), valid)
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
    loss_real = gan_loss(D_A(real_A), valid)
    fake_A_ = buffers["A"].push_and_pop(fake_A)
    loss_fake = gan_loss(D_A(fake_A_.detach()), fake)
    loss_D_A = (loss_real + loss_fake) / 2
    loss_D_A.backward()
    optimizers["D_A"].step()

    # Discriminator B
    optimizers["D_B"].zero_grad()
    loss_real = gan_loss(D_B(real_B), valid)
    fake_B_ = buffers["B"].push_and_pop(fake_B)
    loss_fake = gan_loss(D_B(fake_B_.detach()), fake)
    loss_D_B = (loss_real + loss_fake) / 2
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
    shape = (config.img_height, config.img_width, config.channels)
    train_set = datasets.ImageDataset(
        root, datasets.reference_transforms(*shape), unaligned=True, mode="train", channels=config.channels
    )
    val_mode = "test" if datasets.has_split(root, "test") else "train"
    val_set = datasets.ImageDataset(
        root, datasets.test_transforms(*shape), unaligned=False, mode=val_mode, channels=config.channels
    )
    files = sorted(set(train_set.files_A + train_set.files_B + val_set.files_A + val_set.files_B))
    problems = datasets.scan_images(files, workers=max(1, min(8, os.cpu_count() or 1)), progress=sys.stderr.isatty())
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
        start_states, _ = load_checkpoint(ckpt)
        start_from = ckpt

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
    schedulers = {
        k: torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda=LambdaLR(config.n_epochs, config.epoch, config.decay_epoch).step
        )
        for k, opt in optimizers.items()
    }
    buffers = {"A": ReplayBuffer(), "B": ReplayBuffer()}

    workers = min(config.n_cpu, os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        data.train, batch_size=config.batch_size, shuffle=True, num_workers=workers, generator=generator,
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
        for i, batch in enumerate(loader):
            t0 = time.perf_counter()
            real_A = batch["A"].to(device, non_blocking=True)
            real_B = batch["B"].to(device, non_blocking=True)
            losses = train_step(nets, optimizers, buffers, real_A, real_B, config.lambda_cyc, config.lambda_id)
            values = {k: float(v) for k, v in losses.items()}
            step_s = time.perf_counter() - t0
            done_batches += 1
            elapsed = time.perf_counter() - start
            eta = elapsed / done_batches * (total_batches - done_batches)
            progress.update(i, values, real_A.size(0) / max(step_s, 1e-9), eta)
            batches_done = epoch * n_batches + i
            if batches_done % config.sample_interval == 0:
                sample_images(nets, val_batch, run_dir / "samples" / f"{batches_done:07d}.png", device)
        progress.close()
        for scheduler in schedulers.values():
            scheduler.step()
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
    parser = get_args_parser()
    args = parser.parse_args(argv)
    given = any(a == "--dataset_name" or a.startswith("--dataset_name=") for a in argv)
    setup_logging()
    try:
        train(config_from_args(args), dataset_name_given=given)
    except CycleGANError as exc:
        log.error("%s", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
