"""CycleGAN (Zhu et al., 2017) as the reference design trains it: two ResNet generators G_AB and
G_BA, two PatchGAN discriminators D_A and D_B, least-squares adversarial losses, cycle and
identity losses, a replay buffer of past fakes per domain.

One step, for a batch ``real_A``, ``real_B``:

1. generators (one Adam over G_AB and G_BA): identity, GAN and cycle losses, each the mean of its
   two directions, ``loss_G = loss_GAN + lambda_cyc * loss_cycle + lambda_id * loss_identity``;
2. D_A (its own Adam): ``(MSE(D_A(real_A), 1) + MSE(D_A(pool_A(fake_A)), 0)) / 2``;
3. D_B likewise with ``real_B`` and the pool of past ``fake_B``.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from cyclegan.distributed import unwrap
from cyclegan.losses import cycle_loss, gan_loss, identity_loss
from cyclegan.modelkit import Model, Precision, adam, discriminator_update, full, has_batch_norm
from cyclegan.models import NETWORK_NAMES, build_discriminator, build_generator
from cyclegan.utils import ReplayBuffer

__all__ = ["CycleGAN", "train_step", "batches_generator_calls", "CPU_BATCHED_BYTES"]


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
        loss_identity = (identity_loss(full(images["same_A"]), real_A)
                         + identity_loss(full(images["same_B"]), real_B)) / 2
    else:
        loss_identity = torch.zeros((), device=real_A.device)
    loss_GAN = (gan_loss(full(pred_fake_B), True, gan_mode) + gan_loss(full(pred_fake_A), True, gan_mode)) / 2
    loss_cycle = (cycle_loss(full(images["recov_A"]), real_A) + cycle_loss(full(images["recov_B"]), real_B)) / 2
    loss_G = loss_GAN + lambda_cyc * loss_cycle + lambda_id * loss_identity
    precision.backward(loss_G)
    precision.step(opt)
    for p in frozen:
        p.requires_grad_(True)
    return images, {"G": loss_G, "adv": loss_GAN, "cycle": loss_cycle, "identity": loss_identity}


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
    loss_D_A = discriminator_update(nets["D_A"], optimizers["D_A"], real_A, images["fake_A"], buffers["A"],
                                     gan_mode, lambda_gp, precision)
    loss_D_B = discriminator_update(nets["D_B"], optimizers["D_B"], real_B, images["fake_B"], buffers["B"],
                                     gan_mode, lambda_gp, precision)
    if scaler is not None:
        scaler.update()
    return {
        "D_A": loss_D_A.detach(),
        "D_B": loss_D_B.detach(),
        "D": ((loss_D_A + loss_D_B) / 2).detach(),
        **{k: v.detach() for k, v in losses.items()},
    }


class CycleGAN(Model):
    name = "cyclegan"
    summary = "two generators, two discriminators, cycle and identity losses (Zhu et al., 2017)"
    network_names = NETWORK_NAMES
    generators = {"AtoB": "G_AB", "BtoA": "G_BA"}
    loss_names = ("adv", "cycle", "identity")

    def build_networks(self, config: Any) -> dict[str, nn.Module]:
        return {  # NETWORK_NAMES: the order of the random initialisation
            "G_AB": build_generator(config, "AtoB"),
            "G_BA": build_generator(config, "BtoA"),
            "D_A": build_discriminator(config, "A"),
            "D_B": build_discriminator(config, "B"),
        }

    def build_optimizers(self, nets: dict[str, nn.Module], config: Any) -> dict[str, torch.optim.Optimizer]:
        """Adam for the two generators together and one for each discriminator, as the reference."""
        betas = (config.b1, config.b2)
        return {
            "G": adam(itertools.chain(nets["G_AB"].parameters(), nets["G_BA"].parameters()), config.lr, betas),
            "D_A": adam(nets["D_A"].parameters(), config.lr, betas),
            "D_B": adam(nets["D_B"].parameters(), config.lr, betas),
        }

    def step(self, config: Any, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             buffers: dict[str, ReplayBuffer | None], real_A: torch.Tensor, real_B: torch.Tensor, *,
             amp_dtype: torch.dtype | None = None, scaler: Any = None) -> dict[str, torch.Tensor]:
        return train_step(nets, optimizers, buffers, real_A, real_B, config.lambda_cyc, config.lambda_id,
                          config.gan_mode, config.lambda_gp, amp_dtype=amp_dtype, scaler=scaler)

    def sample_rows(self, nets: dict[str, nn.Module], real_A: torch.Tensor,
                    real_B: torch.Tensor) -> list[torch.Tensor]:
        return [real_A, nets["G_AB"](real_A), real_B, nets["G_BA"](real_B)]
