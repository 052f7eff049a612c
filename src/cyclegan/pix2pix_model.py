"""pix2pix (Isola et al., 2017) as the official repository trains it: paired data, one U-Net
generator G_AB with dropout, one PatchGAN discriminator D_B conditioned on the input (it sees
``cat(A, B)``), batch norm, the vanilla (cross-entropy) GAN loss and an L1 loss to the paired
target weighted by ``lambda_L1`` (100), no replay buffer.

One step, in the official order: ``fake_B = G(real_A)``; D's update on ``cat(real_A, fake_B)``
(detached) against fake and ``cat(real_A, real_B)`` against real, each half of its loss; then G's
update on ``GAN(D(cat(real_A, fake_B)), real) + lambda_L1 * L1(fake_B, real_B)`` with D frozen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cyclegan.distributed import unwrap
from cyclegan.errors import CycleGANError
from cyclegan.losses import gan_loss
from cyclegan.modelkit import Model, Precision, adam, frozen, full
from cyclegan.models import build_generator, define_D
from cyclegan.utils import ReplayBuffer

__all__ = ["Pix2Pix", "pix2pix_train_step"]


def pix2pix_train_step(nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                       real_A: torch.Tensor, real_B: torch.Tensor, lambda_L1: float, gan_mode: str = "vanilla", *,
                       amp_dtype: torch.dtype | None = None, scaler: Any = None) -> dict[str, torch.Tensor]:
    """One pix2pix step (module docstring); the detached loss terms ``D_B`` (= ``D``), ``G``,
    ``adv`` and ``L1``."""
    precision = Precision(real_A.device.type, amp_dtype, scaler)
    G, D = nets["G_AB"], nets["D_B"]
    G.train()
    with precision.autocast():
        fake_B = G(real_A)
    opt_D = optimizers["D_B"]
    opt_D.zero_grad(set_to_none=True)
    with precision.autocast():  # fake first, then real, each its own call (batch norm), as the official
        pred_fake = D(torch.cat([real_A, full(fake_B).detach()], 1))
        pred_real = D(torch.cat([real_A, real_B], 1))
    loss_D = (gan_loss(full(pred_fake), False, gan_mode) + gan_loss(full(pred_real), True, gan_mode)) / 2
    precision.backward(loss_D)
    precision.step(opt_D)
    D_g = unwrap(D)
    with frozen(D_g):
        optimizers["G"].zero_grad(set_to_none=True)
        with precision.autocast():
            loss_adv = gan_loss(full(D_g(torch.cat([real_A, fake_B], 1))), True, gan_mode)
        loss_L1 = nn.functional.l1_loss(full(fake_B), real_B)
        loss_G = loss_adv + lambda_L1 * loss_L1
        precision.backward(loss_G)
        precision.step(optimizers["G"])
    if scaler is not None:
        scaler.update()
    return {"D_B": loss_D.detach(), "D": loss_D.detach(), "G": loss_G.detach(), "adv": loss_adv.detach(),
            "L1": loss_L1.detach()}


class Pix2Pix(Model):
    name = "pix2pix"
    summary = ("paired translation A->B (Isola et al., 2017): a U-Net generator with dropout, a PatchGAN that "
               "sees the input with the output, the vanilla GAN loss plus 100 x L1 to the paired target")
    presets = {"netG": "unet_256", "netD": "basic", "norm": "batch", "gan_mode": "vanilla", "pool_size": 0,
               "use_dropout": True, "lambda_L1": 100.0, "lambda_id": 0.0}
    epochs = (200, 99)  # the official 100 + 100 (options: --n_epochs_decay mapping)
    network_names = ("G_AB", "D_B")
    generators = {"AtoB": "G_AB"}
    loss_names = ("adv", "L1")
    paired = True
    demo_presets = {"netG": "resnet"}  # its U-Net needs sides of 128 or 256: a ResNet generator at 32x32

    def check(self, config: Any) -> None:
        if config.lambda_L1 < 0:
            raise CycleGANError(f"--lambda_L1 {config.lambda_L1}: use 0 or more")
        if config.gan_mode == "wgangp":
            raise CycleGANError("--model pix2pix trains with --gan_mode vanilla (the official) or lsgan, not wgangp")

    def build_networks(self, config: Any) -> dict[str, nn.Module]:
        """G_AB, then the conditional D_B: it sees the input and the output stacked (channels of
        A plus channels of B)."""
        G = build_generator(config, "AtoB")
        D = define_D(config.netD, (config.channels_A + config.channels_B, config.img_height, config.img_width),
                     ndf=config.ndf, n_layers_D=config.n_layers_D, norm=config.norm, init_type=config.init_type,
                     init_gain=config.init_gain)
        return {"G_AB": G, "D_B": D}

    def build_optimizers(self, nets: dict[str, nn.Module], config: Any) -> dict[str, torch.optim.Optimizer]:
        betas = (config.b1, config.b2)
        return {"G": adam(nets["G_AB"].parameters(), config.lr, betas),
                "D_B": adam(nets["D_B"].parameters(), config.lr, betas)}

    def step(self, config: Any, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             buffers: dict[str, ReplayBuffer | None], real_A: torch.Tensor, real_B: torch.Tensor, *,
             amp_dtype: torch.dtype | None = None, scaler: Any = None) -> dict[str, torch.Tensor]:
        return pix2pix_train_step(nets, optimizers, real_A, real_B, config.lambda_L1, config.gan_mode,
                                  amp_dtype=amp_dtype, scaler=scaler)

    def sample_rows(self, nets: dict[str, nn.Module], real_A: torch.Tensor,
                    real_B: torch.Tensor) -> list[torch.Tensor]:
        """real A, G(A), and the paired truth B."""
        return [real_A, nets["G_AB"](real_A), real_B]
