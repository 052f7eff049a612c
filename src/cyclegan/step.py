"""What one training iteration computes, for any ``--model``: the optimizers and learning-rate
schedulers of a run, and ``run_step``, which asks the config's model (``registry``) for its step.

The learning rates follow ``LambdaLR`` (constant until ``--decay_epoch``, then linear towards zero
at ``--n_epochs``; or another ``--lr_policy``), stepped once per epoch. The models' own steps live
with them: ``cyclegan_model.train_step``, ``cut_model.cut_train_step``,
``pix2pix_model.pix2pix_train_step`` (imported here too, where the tests and benchmarks find them).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from cyclegan.cut_model import NCESettings, cut_train_step, nce_loss
from cyclegan.cyclegan_model import batches_generator_calls, train_step
from cyclegan.modelkit import adam
from cyclegan.options import TrainConfig
from cyclegan.registry import get_model
from cyclegan.utils import LambdaLR, ReplayBuffer

__all__ = ["adam", "build_optimizers", "lr_factor", "build_schedulers", "step_schedulers", "batches_generator_calls",
           "train_step", "NCESettings", "nce_loss", "cut_train_step", "run_step"]


def build_optimizers(nets: dict[str, nn.Module], config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """The Adam optimizers of the config's model (fused into one kernel where available: the same
    update, faster): CycleGAN's ``G`` (both generators), ``D_A``, ``D_B``; CUT's ``G``, ``D_B``,
    ``F``; pix2pix's ``G``, ``D_B``."""
    return get_model(config.model).build_optimizers(nets, config)


def lr_factor(config: TrainConfig, epoch: int) -> float | None:
    """The fraction of ``--lr`` that ``--lr_policy`` gives ``epoch`` epochs after the run's start
    (``--epoch``, 0 unless restarted; a scheduler's ``last_epoch``): ``linear`` the reference's
    ``LambdaLR``, ``step`` a tenth every ``--lr_decay_iters`` epochs, ``cosine`` half a cosine
    over ``--n_epochs``; None for ``plateau``, whose rate follows the losses. The one statement of
    the policies: the schedulers (``build_schedulers``) and a resumed run's changed flags
    (``resume.apply_schedule_changes``) both compute the rate with it."""
    at = config.epoch + epoch
    if config.lr_policy == "linear":
        return LambdaLR(config.n_epochs, config.epoch, config.decay_epoch).step(epoch)
    if config.lr_policy == "step":
        return 0.1 ** (at // config.lr_decay_iters)
    if config.lr_policy == "cosine":
        return (1 + math.cos(math.pi * min(at, config.n_epochs) / config.n_epochs)) / 2
    if config.lr_policy == "plateau":
        return None
    raise ValueError(f"unknown lr_policy {config.lr_policy!r}")


def build_schedulers(optimizers: dict[str, torch.optim.Optimizer], config: TrainConfig) -> dict[str, Any]:
    """One scheduler per optimizer for ``--lr_policy``, stepped per epoch: ``lr_factor`` of the
    config as a ``LambdaLR`` (a restarted run's rate continues from ``--epoch``), or for
    ``plateau`` the reference's ``ReduceLROnPlateau``."""
    schedulers: dict[str, Any] = {}
    for name, opt in optimizers.items():
        if config.lr_policy == "plateau":
            schedulers[name] = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.2,
                                                                          threshold=0.01, patience=5)
        else:
            lr_factor(config, 0)  # an unknown policy fails here, not at the first epoch's end
            schedulers[name] = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=functools.partial(lr_factor, config))
    return schedulers


def step_schedulers(schedulers: dict[str, Any], metric: float) -> None:
    """The end-of-epoch step; ``plateau`` watches ``metric`` (the epoch's mean generator loss)."""
    for sched in schedulers.values():
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(metric)
        else:
            sched.step()


def run_step(config: TrainConfig, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             buffers: dict[str, ReplayBuffer | None], real_A: torch.Tensor, real_B: torch.Tensor, *,
             amp_dtype: torch.dtype | None = None, scaler: Any = None) -> dict[str, torch.Tensor]:
    """The training step of the config's ``--model``."""
    return get_model(config.model).step(config, nets, optimizers, buffers, real_A, real_B, amp_dtype=amp_dtype,
                                        scaler=scaler)
