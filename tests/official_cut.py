"""The official CUT's networks (taesungp/contrastive-unpaired-translation, models/networks.py:
``get_filter``, ``Downsample``, ``Upsample``, ``ResnetBlock``, ``ResnetGenerator``,
``NLayerDiscriminator``), transcribed here as the tests' ground truth for ``cyclegan.models``:
the same layers in the same order (so the same state-dict keys), the same arithmetic, written
independently of the package. Only what the tests need: instance norm, reflection padding."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def get_filter(filt_size: int) -> torch.Tensor:
    taps = {1: [1.0], 2: [1.0, 1.0], 3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}
    a = np.array(taps[filt_size])
    filt = torch.Tensor(a[:, None] * a[None, :])
    return filt / torch.sum(filt)


class Downsample(nn.Module):
    def __init__(self, channels: int, filt_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        sizes = [int((filt_size - 1) / 2), int(np.ceil((filt_size - 1) / 2))] * 2
        self.stride = stride
        self.register_buffer("filt", get_filter(filt_size)[None, None, :, :].repeat((channels, 1, 1, 1)))
        self.pad = nn.ReflectionPad2d(sizes)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(inp), self.filt, stride=self.stride, groups=inp.shape[1])


class Upsample(nn.Module):
    def __init__(self, channels: int, filt_size: int = 4, stride: int = 2) -> None:
        super().__init__()
        self.filt_odd = filt_size % 2 == 1
        self.pad_size = int((filt_size - 1) / 2)
        self.stride = stride
        self.register_buffer("filt", (get_filter(filt_size) * stride**2)[None, None, :, :].repeat((channels, 1, 1, 1)))
        self.pad = nn.ReplicationPad2d([1, 1, 1, 1])

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        out = F.conv_transpose2d(self.pad(inp), self.filt, stride=self.stride, padding=1 + self.pad_size,
                                 groups=inp.shape[1])[:, :, 1:, 1:]
        return out if self.filt_odd else out[:, :, :-1, :-1]


class ResnetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Instance norm (so convolution biases), reflection padding, ``no_antialias`` and
    ``no_antialias_up`` as the official flags."""

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, n_blocks: int = 9, no_antialias: bool = False,
                 no_antialias_up: bool = False) -> None:
        super().__init__()
        model: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0, bias=True),
                                  nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            if no_antialias:
                model += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=True),
                          nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True)]
            else:
                model += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=1, padding=1, bias=True),
                          nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True), Downsample(ngf * mult * 2)]
        model += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            if no_antialias_up:
                model += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1,
                                             bias=True), nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
            else:
                model += [Upsample(ngf * mult), nn.Conv2d(ngf * mult, ngf * mult // 2, 3, stride=1, padding=1, bias=True),
                          nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor, layers: list[int] | None = None, encode_only: bool = False):
        if not layers:
            return self.model(x)
        feats, feat = [], x
        for layer_id, layer in enumerate(self.model):
            feat = layer(feat)
            if layer_id in layers:
                feats.append(feat)
            if layer_id == layers[-1] and encode_only:
                return feats
        return feat, feats


class NLayerDiscriminator(nn.Module):
    """Instance norm; ``no_antialias`` as the official flag."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, no_antialias: bool = False) -> None:
        super().__init__()
        if no_antialias:
            sequence: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        else:
            sequence = [nn.Conv2d(input_nc, ndf, 4, stride=1, padding=1), nn.LeakyReLU(0.2, True), Downsample(ndf)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            if no_antialias:
                sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, 4, stride=2, padding=1, bias=True),
                             nn.InstanceNorm2d(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
            else:
                sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, 4, stride=1, padding=1, bias=True),
                             nn.InstanceNorm2d(ndf * nf_mult), nn.LeakyReLU(0.2, True), Downsample(ndf * nf_mult)]
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, 4, stride=1, padding=1, bias=True),
                     nn.InstanceNorm2d(ndf * nf_mult), nn.LeakyReLU(0.2, True),
                     nn.Conv2d(ndf * nf_mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*sequence)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def official_lambda_rule(epoch: int, n_epochs: int, n_epochs_decay: int, epoch_count: int = 1) -> float:
    """The official ``--lr_policy linear`` (models/networks.py ``get_scheduler``)."""
    return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)


def official_is_finetuning(epoch: int, n_epochs: int, epoch_count: int = 1) -> bool:
    """The official data pipeline's phase for the 0-based training epoch ``epoch``: train.py sets
    the dataset's ``current_epoch`` to ``epoch_count + epoch`` and unaligned_dataset.py resizes to
    the crop size once it exceeds ``n_epochs``."""
    return epoch_count + epoch > n_epochs
