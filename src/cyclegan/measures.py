"""The numbers ``cyclegan evaluate`` and scoring while training (``scoring``) compute, one code
for both: FID and KID on the FID Inception network's features (torchmetrics' statistics), and
PSNR, SSIM and L1 against paired truth. ``evaluate``'s docstring says where the Inception file
comes from and why torchmetrics."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from cyclegan.errors import CycleGANError
from cyclegan.images import tensor_to_image
from cyclegan.zoo import INCEPTION_FILE, INCEPTION_URL, inception_locations

__all__ = ["find_inception", "InceptionFeatures", "to_uint8", "fid_from_features", "image_features",
           "metrics_from_features", "compute_metrics", "paired_metrics"]


def find_inception(given: str | None) -> Path:
    """The Inception file to use, or a CycleGANError saying exactly where to put it."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise CycleGANError(f"--inception {path}: no such file. FID and KID need the FID Inception network "
                                f"{INCEPTION_FILE} (TorchScript, 91 MB): cyclegan download inception --output {path}")
        return path
    for path in inception_locations():
        if path.is_file():
            return path
    raise CycleGANError(
        f"FID and KID need the FID Inception network {INCEPTION_FILE} (TorchScript, 91 MB), and nothing is downloaded "
        f"without asking. Fetch it once (from {INCEPTION_URL}, checked against its SHA-256) with:\n"
        f"  cyclegan download inception\n"
        f"or pass --inception PATH (or set CYCLEGAN_INCEPTION). Looked in: "
        + ", ".join(str(p) for p in inception_locations())
    )


class InceptionFeatures(nn.Module):
    """The TorchScript FID Inception as a torchmetrics feature extractor: uint8 (N, 3, H, W) in,
    (N, 2048) pool features out."""

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__()
        self.device = device
        try:
            self.net = torch.jit.load(str(path), map_location=device).eval()
            with torch.no_grad():
                probe = self(torch.zeros(1, 3, 299, 299, dtype=torch.uint8))
        except (RuntimeError, ValueError) as exc:
            raise CycleGANError(f"--inception {path}: not the TorchScript FID Inception network ({exc})") from exc
        if probe.dim() != 2:
            raise CycleGANError(f"--inception {path}: gives features of shape {tuple(probe.shape)}, not (N, 2048)")
        self.num_features = int(probe.shape[1])  # 2048 for the real network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.to(self.device), return_features=True).float().cpu()


def to_uint8(tensor: torch.Tensor, size: int | None = 299) -> torch.Tensor:
    """(C, H, W) in [-1, 1] to uint8 (3, size, size): grey made RGB, resized bicubic in PIL."""
    image = tensor_to_image(tensor).convert("RGB")
    if size:
        image = image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID from two feature matrices (rows are images), by the formula, with SciPy's sqrtm."""
    from scipy import linalg

    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


class _GivenFeatures(nn.Module):
    """Feature vectors passed through as they are: torchmetrics' statistics on features already
    computed (cached real features, or features computed once for both FID and KID)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def image_features(images: Sequence[torch.Tensor], features: nn.Module, batch_size: int = 16) -> torch.Tensor:
    """The feature vectors (N, D) of ``images`` (each (C, H, W) in [-1, 1], any size) on
    ``features`` (uint8 (N, 3, 299, 299) in, as the FID Inception)."""
    out = [features(torch.stack([to_uint8(x) for x in images[start:start + batch_size]])).float()
           for start in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def metrics_from_features(real: torch.Tensor, fake: torch.Tensor, kid_subset_size: int = 100) -> dict[str, float]:
    """FID and KID (mean and std over 100 subsets) from the feature vectors of real and
    translated images, by torchmetrics. KID's subsets are drawn from a generator of their own
    (seeded 0): the same features give the same figure, and no caller's random state moves."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if len(fake) < 2 or len(real) < 2:
        raise CycleGANError(f"FID needs at least 2 images on each side (got {len(fake)} translated, {len(real)} real)")
    subset = min(kid_subset_size, len(fake), len(real))
    given = _GivenFeatures(int(real.shape[1]))
    with warnings.catch_warnings():  # KID keeps every feature vector: 8 KB an image, fine here
        warnings.simplefilter("ignore", UserWarning)
        # sync_on_compute off: under torchrun only rank 0 scores (torchmetrics would wait for the others)
        fid = FrechetInceptionDistance(feature=given, reset_real_features=True, sync_on_compute=False)
        kid = KernelInceptionDistance(feature=given, subset_size=subset, subsets=100, sync_on_compute=False)
    for vectors, is_real in ((real, True), (fake, False)):
        fid.update(vectors, real=is_real)
        kid.update(vectors, real=is_real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
            "n_fake": len(fake), "n_real": len(real), "kid_subset_size": subset}


def compute_metrics(fake: Sequence[torch.Tensor], real: Sequence[torch.Tensor], features: nn.Module,
                    kid_subset_size: int = 100, batch_size: int = 16) -> dict[str, float]:
    """FID and KID (mean and std over subsets) between ``fake`` and ``real`` images, each a
    (C, H, W) tensor in [-1, 1] of any size, on ``features`` (uint8 (N, 3, 299, 299) in)."""
    if len(fake) < 2 or len(real) < 2:
        raise CycleGANError(f"FID needs at least 2 images on each side (got {len(fake)} translated, {len(real)} real)")
    return metrics_from_features(image_features(real, features, batch_size), image_features(fake, features, batch_size),
                                 kid_subset_size)


def paired_metrics(fake: Sequence[torch.Tensor], truth: Sequence[torch.Tensor]) -> dict[str, float]:
    """Mean PSNR (dB), SSIM and L1 on [0, 1] of each translation against its ground truth."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    psnr, ssim, l1 = [], [], []
    for f, t in zip(fake, truth):
        a, b = ((f.float().clamp(-1, 1) + 1) / 2)[None], ((t.float().clamp(-1, 1) + 1) / 2)[None]
        if a.shape != b.shape:
            b = torch.nn.functional.interpolate(b, size=a.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
        psnr.append(float(peak_signal_noise_ratio(a, b, data_range=1.0)))
        ssim.append(float(structural_similarity_index_measure(a, b, data_range=1.0)))
        l1.append(float((a - b).abs().mean()))
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "l1": float(np.mean(l1)), "n_paired": len(l1)}
