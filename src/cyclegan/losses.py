"""The loss terms as plain functions.

Adversarial, by ``gan_mode``: ``lsgan`` (the reference's and the paper's: ``MSE(D(x), 1)`` for
real, ``MSE(D(x), 0)`` for fake), ``vanilla`` (binary cross-entropy on logits), ``wgangp``
(Wasserstein: ``-mean D(x)`` for real, ``mean D(x)`` for fake, with ``gradient_penalty``).
Cycle consistency and identity: L1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["gan_loss", "gradient_penalty", "cycle_loss", "identity_loss"]


def gan_loss(prediction: torch.Tensor, target_is_real: bool, gan_mode: str = "lsgan") -> torch.Tensor:
    """The adversarial loss of a discriminator's output against "real" or "fake"."""
    if gan_mode == "lsgan":
        target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
        return F.mse_loss(prediction, target)
    if gan_mode == "vanilla":
        target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
        return F.binary_cross_entropy_with_logits(prediction, target)
    if gan_mode == "wgangp":
        return -prediction.mean() if target_is_real else prediction.mean()
    raise ValueError(f"unknown gan_mode {gan_mode!r}: use lsgan, vanilla or wgangp")


def gradient_penalty(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0
) -> torch.Tensor:
    """WGAN-GP: ``weight * mean((||grad D(x)|| - 1)^2)`` at random mixes ``x`` of real and fake images."""
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = discriminator(mixed)
    (grad,) = torch.autograd.grad(out, mixed, grad_outputs=torch.ones_like(out), create_graph=True)
    norms = (grad.flatten(1) + 1e-16).norm(2, dim=1)
    return weight * ((norms - 1) ** 2).mean()


def cycle_loss(recovered: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between an image and its reconstruction through both generators."""
    return F.l1_loss(recovered, real)


def identity_loss(same: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between an image and its image under the generator into its own domain."""
    return F.l1_loss(same, real)
