"""What every model is made of: the ``Model`` interface that ``registry`` maps ``--model``
names to, and the pieces of a training step the models share (Adam, mixed precision, a
discriminator's update, batch-norm detection).

A model (``cyclegan_model``, ``cut_model``, ``pix2pix_model``) is one object that answers,
for a config, everything the rest of the program asks of it: its networks and optimizers, its
step, its presets and default epochs, its config checks, the names of its loss terms, the rows
of its sample grids, the directions it translates and whether it trains on pairs. No other
module compares a model's name (``tests/test_architecture.py`` holds it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cyclegan.distributed import unwrap
from cyclegan.losses import full, gan_loss, gradient_penalty
from cyclegan.utils import ReplayBuffer

__all__ = ["Model", "Precision", "adam", "full", "has_batch_norm", "discriminator_update", "frozen",
           "BATCH_NORMS"]


class Model:
    """The interface of a model family. ``config`` is an ``options.TrainConfig`` (typed ``Any``
    here: options sits above the models, it takes its ``--model`` choices from the registry)."""

    name: str = ""
    # What --model NAME means, for --help and the docs.
    summary: str = ""
    # Flag defaults the model sets unless given (the official settings of its paper).
    presets: dict[str, Any] = {}
    # (n_epochs, decay_epoch) when neither flag is given; None: the reference's.
    epochs: tuple[int, int] | None = None
    # The networks of a run, in the order they are built (their random draws) and saved.
    network_names: tuple[str, ...] = ()
    # direction -> the generator that translates it; a direction not here is not offered.
    generators: dict[str, str] = {}
    # The loss terms its step returns, in the order the progress line shows them.
    loss_names: tuple[str, ...] = ()
    # Trains on pairs (A/x with B/x, or aligned AB images), not on two unpaired folders.
    paired: bool = False
    # What `cyclegan demo` changes of the presets at 32x32 with 3 residual blocks.
    demo_presets: dict[str, Any] = {}

    def check(self, config: Any) -> None:
        """Refuse settings this model cannot train with (a CycleGANError naming the flag)."""

    def build_networks(self, config: Any) -> dict[str, nn.Module]:
        raise NotImplementedError

    def build_optimizers(self, nets: dict[str, nn.Module], config: Any) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def step(self, config: Any, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             buffers: dict[str, ReplayBuffer | None], real_A: torch.Tensor, real_B: torch.Tensor, *,
             amp_dtype: torch.dtype | None = None, scaler: Any = None) -> dict[str, torch.Tensor]:
        """One training step on a batch; the detached loss terms (``loss_names`` and ``D``, ``G``)."""
        raise NotImplementedError

    def sample_rows(self, nets: dict[str, nn.Module], real_A: torch.Tensor,
                    real_B: torch.Tensor) -> list[torch.Tensor]:
        """The rows of a sample grid (networks in eval mode, no gradients): real A, G_AB(A),
        real B, then what the model shows of B."""
        raise NotImplementedError

    @property
    def directions(self) -> tuple[str, ...]:
        return tuple(self.generators)


@dataclass
class Precision:
    """How a step runs its networks: autocast to ``amp_dtype`` (None: as they are), and the
    float16 gradient scaler."""

    device_type: str
    amp_dtype: torch.dtype | None = None
    scaler: Any = field(default=None)

    def autocast(self, enabled: bool = True) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=enabled)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: torch.optim.Optimizer) -> None:
        self.scaler.step(opt) if self.scaler is not None else opt.step()


def adam(params: Any, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where this torch and device have it (else ``foreach``): the
    same update rule as the reference's Adam, fewer passes over memory."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LazyBatchNorm1d,
               nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)


def has_batch_norm(net: nn.Module) -> bool:
    """Whether the network normalises over the batch (then a batched call is not the same as two calls)."""
    return any(isinstance(m, BATCH_NORMS) for m in unwrap(net).modules())


@contextlib.contextmanager
def frozen(*nets: nn.Module) -> Iterator[None]:
    """The networks' parameters out of autograd for the block (a generator update needs the
    discriminators' outputs, not their weight gradients); restored after."""
    params = [p for net in nets for p in net.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def discriminator_update(D: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                         pool: ReplayBuffer | None, gan_mode: str, lambda_gp: float,
                         precision: Precision) -> torch.Tensor:
    """One discriminator's loss on real and (pooled) fake images, in one call where the network
    allows it (not with batch norm), and its Adam update."""
    opt.zero_grad(set_to_none=True)
    fake = full(fake.detach())
    fake_ = pool.push_and_pop(fake) if pool is not None else fake.detach()
    with precision.autocast():
        if has_batch_norm(D):
            pred_real, pred_fake = D(real), D(fake_)
        else:
            pred_real, pred_fake = D(torch.cat([real, fake_])).split(real.size(0))
    loss_D = (gan_loss(full(pred_real), True, gan_mode) + gan_loss(full(pred_fake), False, gan_mode)) / 2
    if gan_mode == "wgangp":
        with precision.autocast(enabled=False):
            loss_D = loss_D + gradient_penalty(D, real, fake_, lambda_gp)
    precision.backward(loss_D)
    precision.step(opt)
    return loss_D
