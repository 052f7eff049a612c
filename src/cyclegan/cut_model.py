"""CUT and FastCUT (Park et al., 2020) as the official CUT implementation trains them: one
generator G_AB, one discriminator D_B, and the projection head F of the patchwise contrastive
loss PatchNCE; FastCUT is CUT with lambda_NCE 10, no identity term and flip-equivariance.

One step (``cut_train_step``), in the official order: G(real_A) (and G(real_B) for the identity
term, in the same call), flipped left-right on half the steps under flip-equivariance; then D_B's
update on real_B and the detached fake_B; then one update of G and F on the adversarial loss and
PatchNCE (averaged with the identity PatchNCE when it is on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cyclegan.distributed import unwrap
from cyclegan.errors import CycleGANError
from cyclegan.losses import gan_loss, patch_nce_loss
from cyclegan.modelkit import Model, Precision, adam, discriminator_update, full
from cyclegan.models import (
    CUT_NETWORK_NAMES,
    build_discriminator,
    build_generator,
    build_patch_mlp,
    encode_features,
    encoder_layout,
    nce_layer_indices,
)
from cyclegan.utils import ReplayBuffer

__all__ = ["CUT", "NCESettings", "nce_loss", "cut_train_step"]


@dataclass(frozen=True)
class NCESettings:
    """What CUT's step reads of the config."""

    lambda_NCE: float = 1.0
    nce_idt: bool = True
    flip_equivariance: bool = False
    layers: tuple[int, ...] = (0, 4, 8, 12, 16)
    num_patches: int = 256
    tau: float = 0.07
    gan_mode: str = "lsgan"
    lambda_gp: float = 10.0

    @classmethod
    def of(cls, config: Any) -> "NCESettings":
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
        total = total + patch_nce_loss(q, k, source.size(0), settings.tau).mean() * settings.lambda_NCE
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
    loss_D = discriminator_update(D, optimizers["D_B"], real_B, fake_B, None, settings.gan_mode, settings.lambda_gp,
                                   precision)
    D_g = unwrap(D)
    frozen = [p for p in D_g.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optimizers["G"].zero_grad(set_to_none=True)
    optimizers["F"].zero_grad(set_to_none=True)
    with precision.autocast():
        loss_adv = gan_loss(full(D_g(fake_B)), True, settings.gan_mode)
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


class CUT(Model):
    """CUT, and with the FastCUT presets, FastCUT: the two differ only in their flag defaults."""

    network_names = CUT_NETWORK_NAMES
    generators = {"AtoB": "G_AB"}
    demo_presets = {"nce_layers": "0,4,8,12,14"}  # the image, both downsamplings, blocks 1 and 3

    def __init__(self, name: str, summary: str, presets: dict[str, Any], epochs: tuple[int, int],
                 loss_names: tuple[str, ...]) -> None:
        self.name, self.summary, self.presets, self.epochs, self.loss_names = name, summary, presets, epochs, loss_names

    def check(self, config: Any) -> None:
        if config.netG != "resnet":
            raise CycleGANError(f"--model {config.model} reads the encoder layers of a ResNet generator: use --netG "
                                f"resnet (or resnet_9blocks / resnet_6blocks), not {config.netG}")
        try:
            layers = nce_layer_indices(config.nce_layers)
        except ValueError as exc:
            raise CycleGANError(str(exc)) from None
        layout = encoder_layout(config.n_residual_blocks, not config.no_antialias)
        if layers[-1] >= len(layout):
            kind = "anti-aliased" if not config.no_antialias else "strided (--no_antialias)"
            valid = "; ".join(f"{i} {name}" for i, name in enumerate(layout))
            raise CycleGANError(
                f"--nce_layers {config.nce_layers}: layer {layers[-1]} is beyond the encoder of the {kind} ResNet "
                f"generator with {config.n_residual_blocks} residual blocks, whose features PatchNCE can sample: "
                f"0 to {len(layout) - 1} ({valid}); use more --n_residual_blocks or lower layers"
            )
        for flag in ("num_patches", "netF_nc"):
            if getattr(config, flag) < 1:
                raise CycleGANError(f"--{flag} {getattr(config, flag)}: use 1 or more")
        if config.nce_T <= 0:
            raise CycleGANError(f"--nce_T {config.nce_T}: use a positive temperature")
        if config.lambda_NCE < 0:
            raise CycleGANError(f"--lambda_NCE {config.lambda_NCE}: use 0 or more")
        if config.nce_idt and config.channels_A != config.channels_B:
            raise CycleGANError(
                f"--nce_idt true needs both domains to have the same channels (--input_nc {config.channels_A}, "
                f"--output_nc {config.channels_B}): pass --nce_idt false"
            )

    def build_networks(self, config: Any) -> dict[str, nn.Module]:
        G = build_generator(config, "AtoB")  # CUT_NETWORK_NAMES: the order of the random initialisation
        return {"G_AB": G, "D_B": build_discriminator(config, "B"), "F": build_patch_mlp(config, G)}

    def build_optimizers(self, nets: dict[str, nn.Module], config: Any) -> dict[str, torch.optim.Optimizer]:
        """One Adam each for G_AB, D_B and the projection head F, as the official CUT."""
        betas = (config.b1, config.b2)
        return {name: adam(nets[net].parameters(), config.lr, betas)
                for name, net in (("G", "G_AB"), ("D_B", "D_B"), ("F", "F"))}

    def step(self, config: Any, nets: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             buffers: dict[str, ReplayBuffer | None], real_A: torch.Tensor, real_B: torch.Tensor, *,
             amp_dtype: torch.dtype | None = None, scaler: Any = None) -> dict[str, torch.Tensor]:
        return cut_train_step(nets, optimizers, real_A, real_B, NCESettings.of(config), amp_dtype=amp_dtype,
                              scaler=scaler)

    def sample_rows(self, nets: dict[str, nn.Module], real_A: torch.Tensor,
                    real_B: torch.Tensor) -> list[torch.Tensor]:
        """G_AB(real_B) last: CUT's identity image (FastCUT's too, though it does not train on it),
        when the domains have the same channels."""
        G = nets["G_AB"]
        rows = [real_A, G(real_A), real_B]
        return rows + [G(real_B)] if real_A.size(1) == real_B.size(1) else rows


# The official CUT's networks and data pipeline, shared by CUT and FastCUT: its ResnetGenerator
# (conv_block keys) and PatchGAN, both anti-aliased, xavier initialisation, no replay buffer, the
# PatchNCE layers of the anti-aliased generator, and the fine-tuning phase of its data pipeline.
# Epochs (total, decay_epoch): the official 200 + 200 (CUT) and 150 + 50 (FastCUT) under the
# official rule 1 - max(0, e + 1 - n) / (n_decay + 1), which is the reference's LambdaLR decaying
# from n - 1 (options' --n_epochs_decay mapping).
OFFICIAL_CUT: dict[str, Any] = {"netD": "basic", "upsample": "transpose", "no_antialias": False,
                                "no_antialias_up": False, "init_type": "xavier", "pool_size": 0,
                                "nce_layers": "0,4,8,12,16", "finetune_phase": True}

CUT_MODEL = CUT("cut", "one generator A->B, one discriminator and the patchwise contrastive loss PatchNCE "
                "(Park et al., 2020), with its identity term on B",
                {**OFFICIAL_CUT, "lambda_NCE": 1.0, "nce_idt": True, "flip_equivariance": False}, (400, 199),
                ("adv", "nce", "nce_identity"))
FASTCUT_MODEL = CUT("fastcut", "CUT with lambda_NCE 10, no identity term and flip-equivariance",
                    {**OFFICIAL_CUT, "lambda_NCE": 10.0, "nce_idt": False, "flip_equivariance": True}, (200, 149),
                    ("adv", "nce"))
