"""The loss terms as plain functions.

Adversarial, by ``gan_mode``: ``lsgan`` (the reference's and the paper's: ``MSE(D(x), 1)`` for
real, ``MSE(D(x), 0)`` for fake), ``vanilla`` (binary cross-entropy on logits), ``wgangp``
(Wasserstein: ``-mean D(x)`` for real, ``mean D(x)`` for fake, with ``gradient_penalty``).
Cycle consistency and identity: L1.

PatchNCE (CUT, Park et al. 2020): ``patch_nce_loss`` of the projected features of sampled
locations of the output (queries) against those of the input at the same locations (keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["gan_loss", "gradient_penalty", "cycle_loss", "identity_loss", "patch_nce_loss", "full"]


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


def patch_nce_loss(feat_q: torch.Tensor, feat_k: torch.Tensor, batch_size: int, tau: float = 0.07) -> torch.Tensor:
    """PatchNCE per query patch, ``(batch_size * P,)``: cross-entropy of picking, among the P key
    patches of the same image, the one at the query's own location.

    ``feat_q`` and ``feat_k`` are ``(batch_size * P, dim)`` (image-major, as ``PatchSampleMLP``
    gives them), L2-normalised; the keys are not differentiated through. For query i of an image,
    the logits are ``q_i . k_i / tau`` (the positive) and ``q_i . k_j / tau`` for the other
    locations j of the same image (the negatives); the j = i entry of the negatives is set to
    -10 / tau, which removes it, as the official implementation does.

    Computed in float32 whatever the inputs and under autocast (as the official, which has no
    mixed precision): dividing by tau = 0.07 would magnify bfloat16's rounding of the logits
    about 14 times.
    """
    device = feat_q.device.type
    feat_q, feat_k = full(feat_q), full(feat_k.detach())
    if not _autocast_available(device):  # the meta device (memory planning): nothing to turn off
        return _patch_nce_float32(feat_q, feat_k, batch_size, tau)
    with torch.autocast(device, enabled=False):
        return _patch_nce_float32(feat_q, feat_k, batch_size, tau)


def full(x: torch.Tensor) -> torch.Tensor:
    """A half-precision (autocast) result in float32; anything else as it is."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _autocast_available(device: str) -> bool:
    available = getattr(torch.amp, "is_autocast_available", None)
    return available(device) if available is not None else device in ("cpu", "cuda")


def _patch_nce_float32(feat_q: torch.Tensor, feat_k: torch.Tensor, batch_size: int, tau: float) -> torch.Tensor:
    dim = feat_q.size(1)
    l_pos = (feat_q * feat_k).sum(dim=1, keepdim=True)
    q = feat_q.view(batch_size, -1, dim)
    k = feat_k.view(batch_size, -1, dim)
    patches = q.size(1)
    l_neg = torch.bmm(q, k.transpose(2, 1))
    diagonal = torch.eye(patches, device=feat_q.device, dtype=torch.bool)[None]
    l_neg = l_neg.masked_fill(diagonal, -10.0).view(-1, patches)
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    target = torch.zeros(logits.size(0), dtype=torch.long, device=feat_q.device)
    return F.cross_entropy(logits, target, reduction="none")
