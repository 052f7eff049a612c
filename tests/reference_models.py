"""The reference design's networks, its weight initialisation, replay buffer and learning-rate
rule, transcribed: the oracle of ``tests/test_models.py`` (state-dict layout, strict loads) and the
quality benchmark's reference arm (``benchmarks/quality.py``), which so owes nothing to
``cyclegan.models``: what the seed's ``models.py`` and ``utils.py`` build, layer by layer and in the
same order (so the same seed draws the same initial weights).

Transcribed from the reference implementation (PyTorch-GAN, ``implementations/cyclegan``), which
docs/architecture.md and ``../shared/DESIGN.md`` describe: a ResNet generator (reflection pad of
``channels`` pixels and a 7x7 convolution to 64 filters, two stride-2 3x3 convolutions, residual
blocks of two reflection-padded 3x3 convolutions, two nearest 2x upsamplings each followed by a 3x3
convolution, a 7x7 convolution to the image and tanh; instance norm and ReLU between), and a
PatchGAN of four 4x4 stride-2 blocks (64, 128, 256, 512; no norm in the first; LeakyReLU 0.2) and a
zero pad (1, 0, 1, 0) before the last 4x4 convolution to one channel.
"""

from __future__ import annotations

import random

import torch
from torch import nn

__all__ = ["ResidualBlock", "GeneratorResNet", "Discriminator", "weights_init_normal", "ReplayBuffer", "LambdaLR"]


def weights_init_normal(m: nn.Module) -> None:
    """N(0, 0.02) for every convolution's weights and zero biases; N(1, 0.02) for batch norms."""
    name = m.__class__.__name__
    if "Conv" in name:
        torch.nn.init.normal_(m.weight.data, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            torch.nn.init.constant_(m.bias.data, 0.0)
    elif "BatchNorm2d" in name:
        torch.nn.init.normal_(m.weight.data, 1.0, 0.02)
        torch.nn.init.constant_(m.bias.data, 0.0)


class ResidualBlock(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(features, features, 3), nn.InstanceNorm2d(features), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(features, features, 3), nn.InstanceNorm2d(features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class GeneratorResNet(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_residual_blocks: int) -> None:
        super().__init__()
        channels = input_shape[0]
        features = 64
        layers: list[nn.Module] = [nn.ReflectionPad2d(channels), nn.Conv2d(channels, features, 7),
                                   nn.InstanceNorm2d(features), nn.ReLU(inplace=True)]
        for _ in range(2):  # downsampling
            layers += [nn.Conv2d(features, features * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(features * 2),
                       nn.ReLU(inplace=True)]
            features *= 2
        layers += [ResidualBlock(features) for _ in range(num_residual_blocks)]
        for _ in range(2):  # upsampling
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(features, features // 2, 3, stride=1, padding=1),
                       nn.InstanceNorm2d(features // 2), nn.ReLU(inplace=True)]
            features //= 2
        layers += [nn.ReflectionPad2d(channels), nn.Conv2d(features, channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Discriminator(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.output_shape = (1, height // 2**4, width // 2**4)

        def block(n_in: int, n_out: int, normalize: bool = True) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(n_in, n_out, 4, stride=2, padding=1)]
            if normalize:
                layers.append(nn.InstanceNorm2d(n_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(
            *block(channels, 64, normalize=False), *block(64, 128), *block(128, 256), *block(256, 512),
            nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(512, 1, 4, padding=1),
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.model(img)


class ReplayBuffer:
    """The reference's buffer of 50 past fakes: each new image goes in while there is room; once
    full, half the time (by ``random``) it replaces a random stored one, which is returned."""

    def __init__(self, max_size: int = 50) -> None:
        assert max_size > 0, "Empty buffer or trying to create a black hole. Be careful."
        self.max_size = max_size
        self.data: list[torch.Tensor] = []

    def push_and_pop(self, data: torch.Tensor) -> torch.Tensor:
        to_return = []
        for element in data.data:
            element = torch.unsqueeze(element, 0)
            if len(self.data) < self.max_size:
                self.data.append(element)
                to_return.append(element)
            elif random.uniform(0, 1) > 0.5:
                i = random.randint(0, self.max_size - 1)
                to_return.append(self.data[i].clone())
                self.data[i] = element
            else:
                to_return.append(element)
        return torch.cat(to_return)


class LambdaLR:
    """The reference's rule: 1 until ``decay_start_epoch``, then linearly to 0 at ``n_epochs``."""

    def __init__(self, n_epochs: int, offset: int, decay_start_epoch: int) -> None:
        assert (n_epochs - decay_start_epoch) > 0, "Decay must start before the training session ends!"
        self.n_epochs, self.offset, self.decay_start_epoch = n_epochs, offset, decay_start_epoch

    def step(self, epoch: int) -> float:
        return 1.0 - max(0, epoch + self.offset - self.decay_start_epoch) / (self.n_epochs - self.decay_start_epoch)
