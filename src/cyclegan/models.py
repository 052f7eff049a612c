"""The networks of the reference design: a ResNet generator and a 70x70 PatchGAN discriminator.

Module structure and state-dict keys are those of the reference code (``model.N...`` and
``model.N.block.M...``), so weights it saved load here with ``strict=True`` and give the same
outputs. One bug of the reference is fixed: its 7x7 convolutions are padded by ``channels``
instead of 3, which only works for 3-channel images; here they are padded by 3.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ResidualBlock", "GeneratorResNet", "Discriminator", "weights_init_normal"]


def weights_init_normal(m: nn.Module) -> None:
    """Initialise like the reference: convolutions N(0, 0.02), batch norms N(1, 0.02).

    Meant for ``net.apply(weights_init_normal)``.
    """
    classname = m.__class__.__name__
    if "Conv" in classname:
        nn.init.normal_(m.weight, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.constant_(m.bias, 0.0)
    elif "BatchNorm2d" in classname:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0.0)


class ResidualBlock(nn.Module):
    """``x + block(x)`` with two reflection-padded 3x3 convolutions and instance norms."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(in_features, in_features, 3),
            nn.InstanceNorm2d(in_features),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(in_features, in_features, 3),
            nn.InstanceNorm2d(in_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class GeneratorResNet(nn.Module):
    """The reference generator: c7s1-64, d128, d256, ``num_residual_blocks`` x R256, u128, u64, c7s1-C.

    ``input_shape`` is ``(channels, height, width)``; only the channel count shapes the network,
    which accepts any height and width divisible by 4 (two stride-2 downsamplings, then two
    nearest-neighbour upsamplings).
    """

    def __init__(self, input_shape: Sequence[int], num_residual_blocks: int) -> None:
        super().__init__()
        channels = int(input_shape[0])
        if num_residual_blocks < 0:
            raise ValueError(f"num_residual_blocks must be >= 0, got {num_residual_blocks}")
        out_features = 64
        model: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, out_features, 7),
            nn.InstanceNorm2d(out_features),
            nn.ReLU(inplace=True),
        ]
        in_features = out_features
        for _ in range(2):  # downsampling
            out_features *= 2
            model += [
                nn.Conv2d(in_features, out_features, 3, stride=2, padding=1),
                nn.InstanceNorm2d(out_features),
                nn.ReLU(inplace=True),
            ]
            in_features = out_features
        model += [ResidualBlock(out_features) for _ in range(num_residual_blocks)]
        for _ in range(2):  # upsampling
            out_features //= 2
            model += [
                nn.Upsample(scale_factor=2),
                nn.Conv2d(in_features, out_features, 3, stride=1, padding=1),
                nn.InstanceNorm2d(out_features),
                nn.ReLU(inplace=True),
            ]
            in_features = out_features
        model += [nn.ReflectionPad2d(3), nn.Conv2d(out_features, channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Discriminator(nn.Module):
    """The reference PatchGAN: C64-C128-C256-C512 (stride 2), then a 1-channel 4x4 convolution.

    ``output_shape`` is ``(1, height // 16, width // 16)``, the shape of one sample's output for
    the ``input_shape`` given; the loss targets are shaped by it. Inputs need height and width of
    at least 16.
    """

    def __init__(self, input_shape: Sequence[int]) -> None:
        super().__init__()
        channels, height, width = (int(v) for v in input_shape)
        self.output_shape = self.output_shape_for(height, width)

        def discriminator_block(in_filters: int, out_filters: int, normalize: bool = True) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(in_filters, out_filters, 4, stride=2, padding=1)]
            if normalize:
                layers.append(nn.InstanceNorm2d(out_filters))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(
            *discriminator_block(channels, 64, normalize=False),
            *discriminator_block(64, 128),
            *discriminator_block(128, 256),
            *discriminator_block(256, 512),
            nn.ZeroPad2d((1, 0, 1, 0)),
            nn.Conv2d(512, 1, 4, padding=1),
        )

    @staticmethod
    def output_shape_for(height: int, width: int) -> tuple[int, int, int]:
        """The output shape for an input of ``height`` x ``width``.

        Each stride-2 4x4 convolution with padding 1 maps n to n // 2; the zero pad and the last
        4x4 convolution with padding 1 keep the size, so the output is n // 16 on each side.
        """
        if height < 16 or width < 16 or (height // 16) * (width // 16) < 2:
            raise ValueError(
                f"the discriminator needs inputs of at least 16 on each side and 32 on one, got {height}x{width}"
            )
        return (1, height // 16, width // 16)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.model(img)
