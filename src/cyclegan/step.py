"""What one training iteration computes: the optimizers and LR schedulers of a run, and
``train_step``.

One step, for a batch ``real_A``, ``real_B`` (the reference design's):

1. generators (one Adam over G_AB and G_BA): identity, GAN and cycle losses, each the mean of its
   two directions, ``loss_G = loss_GAN + lambda_cyc * loss_cycle + lambda_id * loss_identity``;
2. D_A (its own Adam): ``(MSE(D_A(real_A), 1) + MSE(D_A(pool_A(fake_A)), 0)) / 2``;
3. D_B likewise with ``real_B`` and the pool of past ``fake_B``.

The three learning rates follow ``LambdaLR`` (constant until ``--decay_epoch``, then linear
towards zero at ``--n_epochs``; or another ``--lr_policy``), stepped once per epoch.

``cut_train_step`` is the step of CUT and FastCUT (``--model cut|fastcut``), as the official CUT
implementation orders it: G(real_A) (and G(real_B) for the identity term, in the same call),
flipped left-right on half the steps under flip-equivariance; then D_B's update on real_B and
the detached fake_B; then one update of G and the projection head F on the adversarial loss and
PatchNCE (averaged with the identity PatchNCE when it is on).
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cyclegan.distributed import unwrap
from cyclegan.losses import cycle_loss, gan_loss, gradient_penalty, identity_loss, patch_nce_loss
from cyclegan.models import NETWORK_NAMES, encode_features, nce_layer_indices
from cyclegan.options import TrainConfig
from cyclegan.utils import LambdaLR, ReplayBuffer

__all__ = ["adam", "build_optimizers", "build_schedulers", "step_schedulers",
           "batches_generator_calls", "train_step", "NCESettings", "nce_loss", "cut_train_step", "run_step"]

def adam(params: Any, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where this torch and device have it (else ``foreach``): the
    same update rule as the reference's Adam, fewer passes over memory."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)


def build_optimizers(nets: dict[str, nn.Module], config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """Adam for the two generators together and one for each discriminator, as the reference
    (fused into one kernel where available: the same update, faster). CUT and FastCUT: one each
    for G_AB, D_B and the projection head F (``G``, ``D_B``, ``F``), as the official CUT."""
    betas = (config.b1, config.b2)
    if config.model != "cyclegan":
        return {name: adam(nets[net].parameters(), config.lr, betas)
                for name, net in (("G", "G_AB"), ("D_B", "D_B"), ("F", "F"))}
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


def _full(x: torch.Tensor) -> torch.Tensor:
    """A half-precision (autocast) result in float32; anything else as it is."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LazyBatchNorm1d,
               nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)


def has_batch_norm(net: nn.Module) -> bool:
    """Whether the network normalises over the batch (then a batched call is not the same as two calls)."""
    return any(isinstance(m, BATCH_NORMS) for m in unwrap(net).modules())


# glibc serves an allocation above 32 MiB (its largest mmap threshold) with a fresh mapping each
# time, whose pages the kernel zeroes and faults in again on every step; below it, freed memory
# is reused.
CPU_BATCHED_BYTES = 32 * 2**20


def batches_generator_calls(G: nn.Module, real: torch.Tensor, amp_dtype: torch.dtype | None = None) -> bool:
    """Whether ``train_step`` batches the calls of generator ``G`` on images like ``real`` (three
    images per call at most): always on a GPU; on the CPU while the largest activation of a
    batched call (``ngf`` channels at full resolution, reflection-padded) stays within
    ``CPU_BATCHED_BYTES``. Beyond it the convolutions are as fast one image set at a time, and
    batched ones would cost page faults (docs/benchmarks.md has the measurements)."""
    if real.device.type != "cpu":
        return True
    width = next((m.out_channels for m in unwrap(G).modules() if isinstance(m, nn.Conv2d)), real.size(1))
    itemsize = torch.finfo(amp_dtype).bits // 8 if amp_dtype is not None else real.element_size()
    n, _, h, w = real.shape
    return 3 * n * width * (h + 6) * (w + 6) * itemsize <= CPU_BATCHED_BYTES


@dataclass
class Precision:
    """How a step runs its networks: autocast to ``amp_dtype`` (None: as they are), and the
    float16 gradient scaler."""

    device_type: str
    amp_dtype: torch.dtype | None = None
    scaler: Any = None

    def autocast(self, enabled: bool = True) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=enabled)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: torch.optim.Optimizer) -> None:
        self.scaler.step(opt) if self.scaler is not None else opt.step()


def _generator_images(G_AB: nn.Module, G_BA: nn.Module, real_A: torch.Tensor, real_B: torch.Tensor,
                      use_id: bool, batched: bool) -> dict[str, torch.Tensor]:
    """fake_B, fake_A, the cycles recov_A and recov_B, and (``use_id``) the identity images
    same_A = G_BA(real_A) and same_B = G_AB(real_B). ``batched``: three calls, the images that
    share a network in one batch (exact: instance norm is per image); else the reference's six
    calls in its order."""
    n = real_A.size(0)
    out: dict[str, torch.Tensor] = {}
    if batched:
        if use_id:
            out["fake_B"], out["same_B"] = G_AB(torch.cat([real_A, real_B])).split(n)
            out["fake_A"], out["same_A"], out["recov_A"] = G_BA(torch.cat([real_B, real_A, out["fake_B"]])).split(n)
        else:
            out["fake_B"] = G_AB(real_A)
            out["fake_A"], out["recov_A"] = G_BA(torch.cat([real_B, out["fake_B"]])).split(n)
        out["recov_B"] = G_AB(out["fake_A"])
        return out
    if use_id:
        out["same_A"], out["same_B"] = G_BA(real_A), G_AB(real_B)
    out["fake_B"], out["fake_A"] = G_AB(real_A), G_BA(real_B)
    out["recov_A"], out["recov_B"] = G_BA(out["fake_B"]), G_AB(out["fake_A"])
    return out


def _generator_update(nets: dict[str, nn.Module], opt: torch.optim.Optimizer, real_A: torch.Tensor,
                      real_B: torch.Tensor, lambda_cyc: float, lambda_id: float, gan_mode: str,
                      precision: Precision, batch_generators: bool | None,
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Step 1: the generators' losses and Adam update; returns (images, losses)."""
    G_AB, G_BA, D_A, D_B = (nets[n] for n in NETWORK_NAMES)
    # The generator update needs the discriminators' outputs, not their weight gradients: freeze
    # them, and call the unwrapped modules so that DistributedDataParallel syncs each network once.
    D_A_g, D_B_g = unwrap(D_A), unwrap(D_B)
    frozen = [p for p in itertools.chain(D_A_g.parameters(), D_B_g.parameters()) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    G_AB.train()
    G_BA.train()
    opt.zero_grad(set_to_none=True)
    use_id = lambda_id > 0  # without it the domains may differ in channels: no identity images
    if batch_generators is None:
        batch_generators = batches_generator_calls(G_BA, real_A, precision.amp_dtype)
    batched = batch_generators and not (has_batch_norm(G_AB) or has_batch_norm(G_BA))
    with precision.autocast():
        images = _generator_images(G_AB, G_BA, real_A, real_B, use_id, batched)
        pred_fake_B, pred_fake_A = D_B_g(images["fake_B"]), D_A_g(images["fake_A"])
    if use_id:
        loss_identity = (identity_loss(_full(images["same_A"]), real_A)
                         + identity_loss(_full(images["same_B"]), real_B)) / 2
    else:
        loss_identity = torch.zeros((), device=real_A.device)
    loss_GAN = (gan_loss(_full(pred_fake_B), True, gan_mode) + gan_loss(_full(pred_fake_A), True, gan_mode)) / 2
    loss_cycle = (cycle_loss(_full(images["recov_A"]), real_A) + cycle_loss(_full(images["recov_B"]), real_B)) / 2
    loss_G = loss_GAN + lambda_cyc * loss_cycle + lambda_id * loss_identity
    precision.backward(loss_G)
    precision.step(opt)
    for p in frozen:
        p.requires_grad_(True)
    return images, {"G": loss_G, "adv": loss_GAN, "cycle": loss_cycle, "identity": loss_identity}


def _discriminator_update(D: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                          pool: ReplayBuffer | None, gan_mode: str, lambda_gp: float,
                          precision: Precision) -> torch.Tensor:
    """Steps 2 and 3: one discriminator's loss on real and (pooled) fake images, in one call
    where the network allows it, and its Adam update."""
    opt.zero_grad(set_to_none=True)
    fake = _full(fake.detach())
    fake_ = pool.push_and_pop(fake) if pool is not None else fake.detach()
    with precision.autocast():
        if has_batch_norm(D):
            pred_real, pred_fake = D(real), D(fake_)
        else:
            pred_real, pred_fake = D(torch.cat([real, fake_])).split(real.size(0))
    loss_D = (gan_loss(_full(pred_real), True, gan_mode) + gan_loss(_full(pred_fake), False, gan_mode)) / 2
    if gan_mode == "wgangp":
        with precision.autocast(enabled=False):
            loss_D = loss_D + gradient_penalty(D, real, fake_, lambda_gp)
    precision.backward(loss_D)
    precision.step(opt)
    return loss_D


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
    precision = Precision(real_A.device.type, amp_dtype, scaler)
    images, losses = _generator_update(nets, optimizers["G"], real_A, real_B, lambda_cyc, lambda_id, gan_mode,
                                       precision, batch_generators)
    loss_D_A = _discriminator_update(nets["D_A"], optimizers["D_A"], real_A, images["fake_A"], buffers["A"],
                                     gan_mode, lambda_gp, precision)
    loss_D_B = _discriminator_update(nets["D_B"], optimizers["D_B"], real_B, images["fake_B"], buffers["B"],
                                     gan_mode, lambda_gp, precision)
    if scaler is not None:
        scaler.update()
    return {
        "D_A": loss_D_A.detach(),
        "D_B": loss_D_B.detach(),
        "D": ((loss_D_A + loss_D_B) / 2).detach(),
        **{k: v.detach() for k, v in losses.items()},
    }


@dataclass(frozen=True)
class NCESettings:
    """What CUT's step reads of the config."""

    lambda_NCE: float = 1.0
    nce_idt: bool = True
    flip_equivariance: bool = False
    layers: tuple[int, ...] = (0, 4, 7, 10, 14)
    num_patches: int = 256
    tau: float = 0.07
    gan_mode: str = "lsgan"
    lambda_gp: float = 10.0

    @classmethod
    def of(cls, config: TrainConfig) -> "NCESettings":
        return cls(config.lambda_NCE, config.nce_idt, config.flip_equivariance, nce_layer_indices(config.nce_layers),
                   config.num_patches, config.nce_T, config.gan_mode, config.lambda_gp)


def nce_loss(G: nn.Module, F: nn.Module, source: torch.Tensor, target: torch.Tensor, settings: NCESettings,
             flipped: bool = False) -> torch.Tensor:
    """PatchNCE between G's encoder features of ``target`` (G's output; the queries) and of
    ``source`` (its input; the keys), at the same sampled locations, averaged over the layers and
    weighted by ``lambda_NCE``. ``flipped``: ``target`` came from a left-right flipped input, so its
    features are flipped back before they are compared."""
    G_ = unwrap(G)  # the encoder's layers one by one; F through its wrapper (DistributedDataParallel syncs it)
    feat_q = encode_features(G_, target, settings.layers)
    if flipped:
        feat_q = [f.flip(3) for f in feat_q]
    feat_k = encode_features(G_, source, settings.layers)
    pool_k, ids = F(feat_k, settings.num_patches)
    pool_q, _ = F(feat_q, settings.num_patches, ids)
    total = torch.zeros((), device=source.device)
    for q, k in zip(pool_q, pool_k):
        total = total + patch_nce_loss(_full(q), _full(k), source.size(0), settings.tau).mean() * settings.lambda_NCE
    return total / len(settings.layers)


def cut_train_step(nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer], real_A: torch.Tensor,
                   real_B: torch.Tensor, settings: NCESettings, *, amp_dtype: torch.dtype | None = None,
                   scaler: Any = None) -> dict[str, torch.Tensor]:
    """One CUT / FastCUT step (module docstring); returns the detached loss terms: ``D`` (= ``D_B``),
    ``G``, ``adv``, ``nce`` and, with the identity term, ``nce_identity``."""
    precision = Precision(real_A.device.type, amp_dtype, scaler)
    G, D, F = nets["G_AB"], nets["D_B"], nets["F"]
    n = real_A.size(0)
    G.train()
    real = torch.cat([real_A, real_B]) if settings.nce_idt else real_A
    flipped = settings.flip_equivariance and bool(torch.rand((), device="cpu") < 0.5)  # torch's CPU generator
    if flipped:
        real = real.flip(3)
    with precision.autocast():
        fake = G(real)
    fake_B = fake[:n]
    loss_D = _discriminator_update(D, optimizers["D_B"], real_B, fake_B, None, settings.gan_mode, settings.lambda_gp,
                                   precision)
    D_g = unwrap(D)
    frozen = [p for p in D_g.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizers["G"].zero_grad(set_to_none=True)
    optimizers["F"].zero_grad(set_to_none=True)
    with precision.autocast():
        loss_adv = gan_loss(_full(D_g(fake_B)), True, settings.gan_mode)
        losses = {"nce": nce_loss(G, F, real_A, fake_B, settings, flipped)}
        if settings.nce_idt:
            losses["nce_identity"] = nce_loss(G, F, real_B, fake[n:], settings, flipped)
    nce_both = (losses["nce"] + losses["nce_identity"]) / 2 if settings.nce_idt else losses["nce"]
    loss_G = loss_adv + nce_both
    precision.backward(loss_G)
    precision.step(optimizers["G"])
    precision.step(optimizers["F"])
    for p in frozen:
        p.requires_grad_(True)
    if scaler is not None:
        scaler.update()
    return {"D_B": loss_D.detach(), "D": loss_D.detach(), "G": loss_G.detach(), "adv": loss_adv.detach(),
            **{k: v.detach() for k, v in losses.items()}}


def run_step(config: TrainConfig, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             buffers: dict[str, ReplayBuffer | None], real_A: torch.Tensor, real_B: torch.Tensor, *,
             amp_dtype: torch.dtype | None = None, scaler: Any = None) -> dict[str, torch.Tensor]:
    """The training step of the config's ``--model``."""
    if config.model == "cyclegan":
        return train_step(nets, optimizers, buffers, real_A, real_B, config.lambda_cyc, config.lambda_id,
                          config.gan_mode, config.lambda_gp, amp_dtype=amp_dtype, scaler=scaler)
    return cut_train_step(nets, optimizers, real_A, real_B, NCESettings.of(config), amp_dtype=amp_dtype,
                          scaler=scaler)
