"""The loss terms of the reference design as plain functions.

Adversarial: least squares (LSGAN), ``MSE(D(x), 1)`` for real and ``MSE(D(x), 0)`` for fake.
Cycle consistency and identity: L1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gan_loss", "cycle_loss", "identity_loss"]


def gan_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss against a target map (``valid`` = ones or ``fake`` = zeros)."""
    return F.mse_loss(prediction, target)


def cycle_loss(recovered: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between an image and its reconstruction through both generators."""
    return F.l1_loss(recovered, real)


def identity_loss(same: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between an image and its image under the generator into its own domain."""
    return F.l1_loss(same, real)
