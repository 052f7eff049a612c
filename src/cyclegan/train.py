"""The training step and loop of the reference design, with the reference's flags.

    python -m cyclegan.train --dataroot DIR [flags]      (or: cyclegan train ...)

One step, for a batch ``real_A``, ``real_B``:

1. generators (one Adam over G_AB and G_BA): identity, GAN (LSGAN) and cycle losses, each the mean
   of its two directions, ``loss_G = loss_GAN + lambda_cyc * loss_cycle + lambda_id * loss_identity``;
2. D_A (its own Adam): ``(MSE(D_A(real_A), 1) + MSE(D_A(pool_A(fake_A)), 0)) / 2``;
3. D_B likewise with ``real_B`` and the pool of past ``fake_B``.

The three learning rates follow ``LambdaLR`` (constant until ``--decay_epoch``, then linear
towards zero at ``--n_epochs``; or another ``--lr_policy``), stepped once per epoch. The options
are in ``options.py``; under torchrun the networks are wrapped in DistributedDataParallel
(``distributed.py``). The loop saves run checkpoints (``checkpoint.py``) from which ``--resume``
continues exactly, and stops cleanly on SIGINT/SIGTERM and on a non-finite loss.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cyclegan import datasets
from cyclegan.checkpoint import (
    NETWORK_NAMES,
    checkpoint_path,
    list_checkpoints,
    list_run_checkpoints,
    load_checkpoint,
    load_latest_run_checkpoint,
    load_run_checkpoint,
    clean_run_checkpoints,
    resume_dir,
    save_networks,
    save_run_checkpoint,
    set_aside,
)
from cyclegan.distributed import any_rank, barrier, broadcast_int, init_distributed, shutdown, unwrap, wrap
from cyclegan.errors import CycleGANError, TrainingDiverged, TrainingStopped
from cyclegan.losses import cycle_loss, gan_loss, gradient_penalty, identity_loss
from cyclegan.models import define_D, define_G
from cyclegan.logger import make_logger
from cyclegan.report import write_report
from cyclegan.perf import adam, matmul_peak_gflops, prepare_networks, resolve_speed, step_flops
from cyclegan.options import ARCHITECTURE_FIELDS, INVOCATION_FIELDS, TrainConfig, describe, get_args_parser, parse_config, validate
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
    """Adam for the two generators together and one for each discriminator, as the reference
    (fused into one kernel where available: the same update, faster)."""
    betas = (config.b1, config.b2)
    return {
        "G": adam(itertools.chain(nets["G_AB"].parameters(), nets["G_BA"].parameters()), config.lr, betas),
        "D_A": adam(nets["D_A"].parameters(), config.lr, betas),
        "D_B": adam(nets["D_B"].parameters(), config.lr, betas),
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


def _full(x: torch.Tensor) -> torch.Tensor:
    """A half-precision (autocast) result in float32; anything else as it is."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def has_batch_norm(net: nn.Module) -> bool:
    """Whether the network normalises over the batch (then a batched call is not the same as two calls)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in unwrap(net).modules())


# glibc serves an allocation above 32 MiB (its largest mmap threshold) with a fresh mapping each
# time, whose pages the kernel zeroes and faults in again on every step; below it, freed memory
# is reused.
CPU_BATCHED_BYTES = 32 * 2**20


def batches_generator_calls(G: nn.Module, real: torch.Tensor, amp_dtype: torch.dtype | None = None) -> bool:
    """Whether ``train_step`` batches the calls of generator ``G`` on images like ``real`` (three
    images per call at most): always on a GPU; on the CPU while the largest activation of a
    batched call (``ngf`` channels at full resolution, reflection-padded) stays within
    ``CPU_BATCHED_BYTES``. Beyond it the convolutions are as fast one image set at a time,
    and batched ones would cost page faults (at 256x256 batch 1 on this project's 2-core CPU:
    ours 0.99x the reference's img/s batched, 1.02x not)."""
    if real.device.type != "cpu":
        return True
    width = next((m.out_channels for m in unwrap(G).modules() if isinstance(m, nn.Conv2d)), real.size(1))
    itemsize = torch.finfo(amp_dtype).bits // 8 if amp_dtype is not None else real.element_size()
    n, _, h, w = real.shape
    return 3 * n * width * (h + 6) * (w + 6) * itemsize <= CPU_BATCHED_BYTES


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
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: Any = None,
    batch_generators: bool | None = None,
) -> dict[str, torch.Tensor]:
    """One step of the reference design, computed faster; returns the detached loss terms.

    The mathematics is the reference step's (``tests/reference_step.py`` keeps a literal
    transcription, and a test holds the two to 1e-5): the same losses of the same images, the
    same three Adam updates. What differs is how it is computed:

    - generator calls that share a network are batched: ``G_AB([real_A, real_B])`` gives fake_B
      and the identity image, ``G_BA([real_B, real_A, fake_B])`` gives fake_A, the identity image
      and the cycle of A, ``G_AB(fake_A)`` the cycle of B; three calls instead of six. Instance
      norm is per image, so this is exact; networks with batch norm are called image set by image
      set, as the reference does, and so are large images on the CPU (``batch_generators``
      None: ``batches_generator_calls`` decides; True or False: as given, unless batch norm);
    - the discriminators are frozen during the generator update (the reference computes their
      weight gradients there, then zeroes them), and see real and fake in one call;
    - ``amp_dtype`` (bfloat16 or float16) runs the networks under autocast, the losses in float32;
      float16 takes a ``torch.amp.GradScaler`` as ``scaler``.

    A buffer of None is a disabled replay buffer (``--pool_size 0``). With ``gan_mode="wgangp"``
    each discriminator loss adds the gradient penalty (computed in float32).
    """
    G_AB, G_BA, D_A, D_B = (nets[n] for n in NETWORK_NAMES)
    n = real_A.size(0)

    def autocast(enabled: bool = True) -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(real_A.device.type, dtype=amp_dtype, enabled=enabled)

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def step(opt: torch.optim.Optimizer) -> None:
        scaler.step(opt) if scaler is not None else opt.step()

    # The generator update needs the discriminators' outputs, not their weight gradients: freeze
    # them, and call the unwrapped modules so that DistributedDataParallel syncs each network once.
    D_A_g, D_B_g = unwrap(D_A), unwrap(D_B)
    frozen = [p for p in itertools.chain(D_A_g.parameters(), D_B_g.parameters()) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)

    # Generators
    G_AB.train()
    G_BA.train()
    optimizers["G"].zero_grad(set_to_none=True)
    use_id = lambda_id > 0  # without it the domains may differ in channels: no identity images
    if batch_generators is None:
        batch_generators = batches_generator_calls(G_BA, real_A, amp_dtype)
    with autocast():
        if batch_generators and not (has_batch_norm(G_AB) or has_batch_norm(G_BA)):
            if use_id:
                fake_B, same_B = G_AB(torch.cat([real_A, real_B])).split(n)
                fake_A, same_A, recov_A = G_BA(torch.cat([real_B, real_A, fake_B])).split(n)
            else:
                fake_B = G_AB(real_A)
                fake_A, recov_A = G_BA(torch.cat([real_B, fake_B])).split(n)
            recov_B = G_AB(fake_A)
        else:  # the reference's calls, in its order
            if use_id:
                same_A, same_B = G_BA(real_A), G_AB(real_B)
            fake_B, fake_A = G_AB(real_A), G_BA(real_B)
            recov_A, recov_B = G_BA(fake_B), G_AB(fake_A)
        pred_fake_B, pred_fake_A = D_B_g(fake_B), D_A_g(fake_A)
    if use_id:
        loss_identity = (identity_loss(_full(same_A), real_A) + identity_loss(_full(same_B), real_B)) / 2
    else:
        loss_identity = torch.zeros((), device=real_A.device)
    loss_GAN = (gan_loss(_full(pred_fake_B), True, gan_mode) + gan_loss(_full(pred_fake_A), True, gan_mode)) / 2
    loss_cycle = (cycle_loss(_full(recov_A), real_A) + cycle_loss(_full(recov_B), real_B)) / 2
    loss_G = loss_GAN + lambda_cyc * loss_cycle + lambda_id * loss_identity
    backward(loss_G)
    step(optimizers["G"])
    for p in frozen:
        p.requires_grad_(True)

    # Discriminators: real and (pooled) fake in one call where the network allows it
    losses_D = []
    for D, real, fake, pool, name in ((D_A, real_A, fake_A, buffers["A"], "D_A"),
                                      (D_B, real_B, fake_B, buffers["B"], "D_B")):
        optimizers[name].zero_grad(set_to_none=True)
        fake_ = _pool(pool, _full(fake.detach()))
        with autocast():
            if has_batch_norm(D):
                pred_real, pred_fake = D(real), D(fake_)
            else:
                pred_real, pred_fake = D(torch.cat([real, fake_])).split(n)
        loss_D = (gan_loss(_full(pred_real), True, gan_mode) + gan_loss(_full(pred_fake), False, gan_mode)) / 2
        if gan_mode == "wgangp":
            with autocast(enabled=False):
                loss_D = loss_D + gradient_penalty(D, real, fake_, lambda_gp)
        backward(loss_D)
        step(optimizers[name])
        losses_D.append(loss_D)
    if scaler is not None:
        scaler.update()

    return {
        "D_A": losses_D[0].detach(),
        "D_B": losses_D[1].detach(),
        "D": ((losses_D[0] + losses_D[1]) / 2).detach(),
        "G": loss_G.detach(),
        "adv": loss_GAN.detach(),
        "cycle": loss_cycle.detach(),
        "identity": loss_identity.detach(),
    }


# The step itself, for the FLOP count (which must count it even where a caller wraps train_step).
_train_step = train_step


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
    if config.preprocess in ("none", "scale_width"):  # sizes vary: the discriminator's minimum
        layers = {"basic": 3, "n_layers": config.n_layers_D}.get(config.netD, 0)
        side = max(32, 3 * 2**layers)
        min_size, min_label = (side, side), "the discriminator's minimum"
    else:
        min_size, min_label = (w, h), "the crop (--img_width x --img_height)"
    files = sorted(set(train_set.files_A + train_set.files_B + val_set.files_A + val_set.files_B))
    problems = datasets.scan_images(files, workers, progress, min_size, min_label)
    if problems:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in problems)
        if config.bad_images == "error":
            raise CycleGANError(
                f"{len(problems)} of {len(files)} image files cannot be used; fix or remove them, or pass "
                f"--bad_images skip to leave them out:\n{listing}"
            )
        log.warning("leaving out %d of %d image files (--bad_images skip):\n%s", len(problems), len(files), listing)
        bad = {path for path, _ in problems}
        for ds in (train_set, val_set):
            ds.exclude(bad)
            for folder, kept in ((ds.dir_A, ds.files_A), (ds.dir_B, ds.files_B)):
                if not kept:
                    raise CycleGANError(f"{folder}: no usable image is left once the bad files are left out")
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
    images = [x.cpu() for x in (real_A, fake_B, real_B, fake_A)]
    if len({x.size(1) for x in images}) > 1:  # grey and colour domains: show grey as RGB
        images = [x.expand(-1, 3, -1, -1) if x.size(1) == 1 else x for x in images]
    rows = [make_grid(x, nrow=n) for x in images]
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

    def update(self, i: int, losses: dict[str, float], img_per_s: float, peak_fraction: float, eta_s: float) -> None:
        text = (
            f"D {losses['D']:.4f} G {losses['G']:.4f} adv {losses['adv']:.4f} "
            f"cycle {losses['cycle']:.4f} identity {losses['identity']:.4f} | {img_per_s:.3g} img/s | "
            f"{peak_fraction:.0%} of peak"
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
    """Refuse to start a new run over an existing one unless asked to; with ``--overwrite``, clear
    the old run's checkpoints and samples so that nothing of it can be mistaken for the new one."""
    if config.epoch == 0 and (run_dir / "config.json").exists():
        if not config.overwrite:
            raise CycleGANError(
                f"run folder {run_dir} already holds a run (config.json): continue it with --resume, "
                "choose another --output, or pass --overwrite to start over in it"
            )
        for name in ("checkpoints", "samples"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        (run_dir / "diverged_batch.txt").unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy and torch (and CUDA), as tensors and plain containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def buffers_state(buffers: dict[str, ReplayBuffer | None]) -> dict[str, Any]:
    return {
        k: None if b is None else {"data": torch.cat(b.data).cpu() if b.data else None, "rng": b.rng.getstate()}
        for k, b in buffers.items()
    }


def load_buffers_state(buffers: dict[str, ReplayBuffer | None], state: dict[str, Any], device: torch.device) -> None:
    for k, b in buffers.items():
        saved = state.get(k)
        if b is None or saved is None:
            continue
        b.data = [] if saved["data"] is None else [x.to(device) for x in saved["data"].split(1)][: b.max_size]
        b.rng.setstate(saved["rng"])


class StopSignals:
    """SIGINT / SIGTERM: the first asks training to stop after the current step; a second stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        self.pid = os.getpid()

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a data-loader worker (forked with this handler): the main process decides
            return
        if self.signum is not None:  # second signal: default behaviour, now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning("%s received: stopping after this step (send it again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def resume_config(
    config: TrainConfig, explicit: set[str], is_main: bool = True
) -> tuple[TrainConfig, Path, Path, dict, dict, dict]:
    """The config of the run to resume, overridden by the flags given now; its checkpoint; the
    flags that changed."""
    given = Path(config.resume).resolve() if config.resume != "latest" else None
    if given is not None and (given / "checkpoints").is_dir():  # a run folder
        config.output, given = str(given), None
    if given is None:
        run_dir = Path(config.output) if config.output else Path("runs") / config.dataset_name
        if is_main:
            clean_run_checkpoints(run_dir)
        path, states, state = load_latest_run_checkpoint(run_dir, warn=log.warning if is_main else None,
                                                         set_aside_damaged=is_main)
    else:
        if given.suffix == ".safetensors" and given.name.startswith("epoch_"):
            raise CycleGANError(
                f"--resume {given}: that file holds the networks only; continue from it with --epoch "
                f"{given.stem.removeprefix('epoch_')} (or resume from a folder under checkpoints/resume)"
            )
        states, state = load_run_checkpoint(given)
        path = given if given.is_dir() else given.parent
        run_dir = Path(config.output) if "output" in explicit else path.parent.parent.parent
        if is_main:  # checkpoints after the one resumed from belong to an abandoned future
            for newer in list_run_checkpoints(run_dir):
                if int(newer.name.removeprefix("step_")) > state["step"]:
                    log.warning("set aside %s (newer than the checkpoint resumed from)",
                                set_aside(newer, "abandoned"))
    saved = state["config"]
    defaults = TrainConfig().to_json()
    merged = {**defaults, **{k: v for k, v in saved.items() if k in defaults and k not in INVOCATION_FIELDS}}
    changed = {k: getattr(config, k) for k in explicit if k in defaults and getattr(config, k) != merged.get(k)}
    changed.pop("resume", None)
    check_same_architecture(TrainConfig(**{**merged, **changed}), saved, path)
    for k, v in changed.items():
        if k not in ("output", *INVOCATION_FIELDS):
            log.info("on resume: --%s %s (the run had %s)", k, v, merged.get(k))
    merged.update(changed)
    merged["resume"], merged["output"] = config.resume, str(run_dir)
    return TrainConfig(**merged), run_dir, path, states, state, changed


SCHEDULE_FIELDS = ("lr", "b1", "b2", "n_epochs", "decay_epoch", "lr_policy", "lr_decay_iters")


def apply_schedule_changes(optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                           config: TrainConfig, old_lr: float) -> None:
    """After loading a run's optimizer and scheduler states, make flags changed on resume count:
    betas, the base learning rate and the schedule, with the rate of the current epoch recomputed."""
    for name, opt in optimizers.items():
        sched = schedulers[name]
        epoch = getattr(sched, "last_epoch", 0)
        for k, group in enumerate(opt.param_groups):
            group["betas"] = (config.b1, config.b2)
            group["initial_lr"] = config.lr
            if config.lr_policy == "linear":
                group["lr"] = config.lr * LambdaLR(config.n_epochs, config.epoch, config.decay_epoch).step(epoch)
            elif config.lr_policy == "step":
                sched.step_size = config.lr_decay_iters
                group["lr"] = config.lr * 0.1 ** (epoch // config.lr_decay_iters)
            elif config.lr_policy == "cosine":
                sched.T_max = config.n_epochs
                group["lr"] = config.lr * (1 + math.cos(math.pi * min(epoch, config.n_epochs) / config.n_epochs)) / 2
            else:  # plateau: keep its reductions, rescaled to the new base rate
                group["lr"] = group["lr"] * config.lr / old_lr
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [config.lr] * len(opt.param_groups)
        if hasattr(sched, "_last_lr"):
            sched._last_lr = [g["lr"] for g in opt.param_groups]


def train(config: TrainConfig, dataset_name_given: bool = True, explicit: set[str] | None = None) -> Path:
    """Train as the config says; returns the run folder. Raises ``TrainingStopped`` after a
    signal (having saved), ``TrainingDiverged`` on a non-finite loss, ``CycleGANError`` on bad input."""
    explicit = set() if explicit is None else explicit
    net_states = state = None
    start_from: Path | None = None
    changed: dict[str, Any] = {}
    if config.resume:
        is_main = int(os.environ.get("RANK", "0")) == 0
        config, run_dir, start_from, net_states, state, changed = resume_config(config, explicit, is_main)
        validate(config)
        dataset_name_given = True
    else:
        validate(config)
    device = resolve_device(config.device)
    env, device = init_distributed(device)
    if not env.is_main:
        logging.getLogger("cyclegan").setLevel(logging.WARNING)
    data_root = choose_dataset(config, dataset_name_given)
    if not config.resume:
        run_dir = Path(config.output) if config.output else Path("runs") / config.dataset_name
        if env.is_main:
            prepare_run_dir(config, run_dir)
    if config.epoch > 0 and not config.resume:  # the reference's restart: weights only
        ckpt = checkpoint_path(run_dir, config.epoch)
        if not ckpt.is_file():
            saved = ", ".join(str(e) for e in list_checkpoints(run_dir)) or "none"
            raise CycleGANError(
                f"--epoch {config.epoch}: no checkpoint {ckpt} (epochs saved in {run_dir}: {saved})"
            )
        net_states, meta = load_checkpoint(ckpt)
        start_from = ckpt
        check_same_architecture(config, meta.get("config", {}), ckpt)

    if env.enabled and data_root is None:  # the demo data: written once, by rank 0
        if env.is_main:
            resolve_data(config, data_root, run_dir)
        barrier(env)
    data = resolve_data(config, data_root, run_dir)
    if config.seed is None:  # every rank must draw the same data order: rank 0's choice
        config.seed = broadcast_int(random.SystemRandom().randrange(2**31), env, device)
    seed_everything(config.seed + env.rank)  # per-rank model randomness; rank 0's weights are broadcast

    speed = resolve_speed(config.amp, config.channels_last, config.compile, device)
    nets = build_networks(config)
    if net_states is not None:
        for name in NETWORK_NAMES:
            nets[name].load_state_dict(net_states[name])
    prepare_networks(nets, speed, device)
    optimizers = build_optimizers(nets, config)
    trained = {name: wrap(net, env, device) for name, net in nets.items()}
    scaler = torch.amp.GradScaler(device.type) if speed.amp_dtype is torch.float16 else None
    schedulers = build_schedulers(optimizers, config)
    buffers = {k: ReplayBuffer(config.pool_size) if config.pool_size > 0 else None for k in ("A", "B")}

    start_epoch, start_batch, step, loss_G_sum = config.epoch, 0, 0, 0.0
    if state is not None:
        for k, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for k, sched in schedulers.items():
            sched.load_state_dict(state["schedulers"][k])
        load_buffers_state(buffers, state["buffers"], device)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        loss_G_sum = state.get("loss_G_sum", 0.0)
        set_rng_state(state["rng"])
        if any(k in changed for k in SCHEDULE_FIELDS):
            apply_schedule_changes(optimizers, schedulers, config, state["config"].get("lr", config.lr))
        if start_epoch >= config.n_epochs:
            log.info("the run in %s is already finished (%d epochs); pass a larger --n_epochs to continue it",
                     run_dir, config.n_epochs)
            return run_dir

    workers = min(config.n_cpu, os.cpu_count() or 1)
    sampler = datasets.EpochSampler(len(data.train), config.seed, shuffle=not config.serial_batches,
                                    rank=env.rank, world_size=env.world_size, batch_size=config.batch_size)
    loader = DataLoader(
        data.train, batch_size=config.batch_size, sampler=sampler, num_workers=workers,
        generator=torch.Generator().manual_seed(config.seed),  # workers' seeds drawn from it, not the global RNG
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    n_val = min(5, len(data.val))
    val_batch = torch.utils.data.default_collate([data.val[k] for k in range(n_val)])

    if env.is_main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        with atomic_write(run_dir / "config.json", "w") as f:
            json.dump(config.to_json(), f, indent=2)
    log.info(
        "training on %s (%d images in A, %d in B) on %s, run folder %s, seed %d",
        data.root, len(data.train.files_A), len(data.train.files_B), device, run_dir, config.seed,
    )
    if env.enabled:
        log.info("%d processes (torchrun): batch %d per process, global batch %d", env.world_size,
                 config.batch_size, config.batch_size * env.world_size)
    if start_from is not None:
        log.info("starting from %s (epoch %d of %d, step %d)", start_from, start_epoch + 1, config.n_epochs, step)

    def save_run(epoch: int, batch: int) -> Path | None:
        if not env.is_main:
            return None
        run_state = {
            "format": 1, "epoch": epoch, "batch": batch, "step": step, "loss_G_sum": loss_G_sum,
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "buffers": buffers_state(buffers), "rng": rng_state(), "config": config.to_json(),
            "scaler": scaler.state_dict() if scaler is not None else None,
        }
        try:
            return save_run_checkpoint(run_dir, step, nets, run_state, keep=config.keep_checkpoints)
        except OSError as exc:
            raise CycleGANError(
                f"could not save a checkpoint in {resume_dir(run_dir)} ({exc.strerror or exc}); the previous "
                "checkpoints are intact: free some space and continue with --resume"
            ) from exc

    run_logger = make_logger(run_dir, config.logger, config.to_json(), env.is_main)
    n_batches = len(loader)
    layout = torch.channels_last if speed.channels_last else torch.contiguous_format
    # The fraction of the machine's measured matrix-multiply peak the step reaches (nanoGPT's MFU).
    flops = step_flops(config) if env.is_main else 0
    peak = matmul_peak_gflops(device, speed.amp_dtype or torch.float32) if env.is_main else 0.0
    log.info("speed: %s; a step is %.3g GFLOP; measured %s matrix-multiply peak %.0f GFLOP/s", speed.describe(),
             flops / 1e9, speed.amp_name if speed.amp_dtype else "fp32", peak)
    total_batches = (config.n_epochs - start_epoch) * n_batches - start_batch
    done_batches = 0
    start = time.perf_counter()
    with StopSignals() as stop, contextlib.closing(run_logger):
        for epoch in range(start_epoch, config.n_epochs):
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                loss_G_sum = 0.0
            sampler.set_epoch(epoch, first * config.batch_size)
            progress = Progress(n_batches, epoch, config.n_epochs, done_batches, total_batches)
            stopping = False
            i = first - 1
            t0 = time.perf_counter()
            for i, batch in enumerate(loader, start=first):
                real_A = batch["A"].to(device, non_blocking=True, memory_format=layout)
                real_B = batch["B"].to(device, non_blocking=True, memory_format=layout)
                losses = train_step(trained, optimizers, buffers, real_A, real_B, config.lambda_cyc, config.lambda_id,
                                    config.gan_mode, config.lambda_gp, amp_dtype=speed.amp_dtype, scaler=scaler)
                values = {k: float(v) for k, v in losses.items()}
                bad = [k for k, v in values.items() if not math.isfinite(v)]
                if bad:
                    report = run_dir / "diverged_batch.txt"
                    with atomic_write(report, "w") as f:
                        f.write(f"step {step + 1}, epoch {epoch + 1}, batch {i + 1}: loss {', '.join(bad)} "
                                f"is not finite\n")
                        f.writelines(f"A {p}\n" for p in batch["A_path"])
                        f.writelines(f"B {p}\n" for p in batch["B_path"])
                    last = list_run_checkpoints(run_dir)
                    raise TrainingDiverged(
                        f"loss {', '.join(bad)} became {values[bad[0]]} at step {step + 1} (epoch {epoch + 1}, batch "
                        f"{i + 1}); the batch's files are listed in {report}. The last good checkpoint is "
                        f"{last[-1] if last else 'none'}: lower --lr, check those images, and --resume"
                    )
                step += 1
                loss_G_sum += values["G"]
                now = time.perf_counter()
                step_s, t0 = now - t0, now  # the step and the wait for its batch
                done_batches += 1
                elapsed = time.perf_counter() - start
                eta = elapsed / done_batches * (total_batches - done_batches)
                progress.update(i, values, real_A.size(0) * env.world_size / max(step_s, 1e-9),
                                flops / max(step_s, 1e-9) / 1e9 / max(peak, 1e-9), eta)
                if step % config.log_interval == 0 or i + 1 == n_batches:
                    run_logger.scalars(step, {
                        **values, "lr_G": optimizers["G"].param_groups[0]["lr"],
                        "lr_D": optimizers["D_A"].param_groups[0]["lr"],
                        "img_s": real_A.size(0) * env.world_size / max(step_s, 1e-9),
                        "peak_fraction": flops / max(step_s, 1e-9) / 1e9 / max(peak, 1e-9),
                    }, epoch=epoch + 1, batch=i + 1)
                batches_done = epoch * n_batches + i
                if batches_done % config.sample_interval == 0 and env.is_main:
                    grid = run_dir / "samples" / f"{batches_done:07d}.png"
                    sample_images(nets, val_batch, grid, device)
                    run_logger.image(batches_done, grid)
                stopping = any_rank(stop.signum is not None, env, device) or (
                    config.max_steps is not None and step >= config.max_steps)
                if i + 1 < n_batches and (stopping or (config.save_every_steps and step % config.save_every_steps == 0)):
                    save_run(epoch, i + 1)
                if stopping:
                    break
            progress.close()
            if i + 1 == n_batches:  # the epoch is complete
                step_schedulers(schedulers, loss_G_sum / max(1, n_batches))
                completed = epoch + 1
                if env.is_main and (completed == config.n_epochs or (
                    config.checkpoint_interval != -1 and completed % config.checkpoint_interval == 0
                )):
                    path = save_networks(
                        checkpoint_path(run_dir, completed), nets, {"epoch": completed, "config": config.to_json()}
                    )
                    log.info("saved %s", path)
                save_run(completed, 0)
            if stopping:
                # Every rank has stopped at the same step: leave together, as at the end of training,
                # so that none tears its process group down while another still saves.
                barrier(env)
                resume_cmd = f"cyclegan train --resume --output {run_dir}"
                if config.max_steps is None or step < config.max_steps:  # a signal, here or on another rank
                    signum = stop.signum or signal.SIGTERM
                    raise TrainingStopped(
                        f"stopped by {signal.Signals(signum).name} at step {step}; continue with: {resume_cmd}",
                        128 + signum,
                    )
                log.info("stopped at --max_steps %d; continue with: %s", step, resume_cmd)
                return run_dir
    barrier(env)
    log.info("done: %d epochs in %s, run folder %s", config.n_epochs - start_epoch,
             format_eta(time.perf_counter() - start), run_dir)
    if env.is_main:
        log.info("report: %s", write_report(run_dir))
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
        train(config, dataset_name_given="dataset_name" in explicit, explicit=explicit)
    except TrainingStopped as exc:
        log.warning("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.warning("interrupted before training started")
        return 130
    except CycleGANError as exc:
        log.error("%s", exc)
        return exc.exit_code
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
