"""Networks only: the reference design's and the official CycleGAN repository's.

The reference design (PyTorch-GAN): ``GeneratorResNet``, ``ResidualBlock``, ``Discriminator``,
``weights_init_normal``. Module structure and state-dict keys are the reference's (``model.N...``
and ``model.N.block.M...``), so weights it saved load here with ``strict=True`` and give the same
outputs. One bug of the reference is fixed: its 7x7 convolutions are padded by ``channels``
instead of 3, which only works for 3-channel images; here they are padded by 3. The generator
takes the official options too (``ngf``, ``norm``, ``use_dropout``, ``upsample``); with their
defaults it is exactly the reference's.

The official repository (junyanz/pytorch-CycleGAN-and-pix2pix): ``ResnetGenerator`` (transposed
convolutions, ``model.N.conv_block.M`` keys), ``UnetGenerator``, ``NLayerDiscriminator``
(``basic`` is 3 layers: the 70x70 PatchGAN) and ``PixelDiscriminator``, built with the same
modules in the same order as there, so their parameter counts and keys are the official ones.
``define_G`` and ``define_D`` build any of them by name; ``build_generator`` and
``build_discriminator`` build them from a run's config (each model's ``build_networks``, and
inference, export and serve, go through them), and ``generator_multiple`` and
``discriminator_min_side`` say what image sizes they take.

The official CUT repository (taesungp/contrastive-unpaired-translation) anti-aliases both:
``BlurDownsample`` and ``BlurUpsample`` are its ``Downsample`` and ``Upsample`` (a fixed binomial
filter, kept as the buffer ``filt`` as there, so its files load with ``strict=True``). With
``antialias`` a downsampling is a stride-1 convolution, its norm and ReLU, then the blurred
stride-2 subsampling; with ``antialias_up`` an upsampling is the blurred 2x transposed filter,
then a 3x3 convolution, its norm and ReLU; the PatchGAN's strided convolutions become stride-1
ones each followed by the blurred subsampling.

Reflection padding is ``ReflectionPad2d`` (and ``pad``): torch's, except that under CPU autocast
it pads a bfloat16 activation in bfloat16 rather than in float32 (the same values, without two
copies of the activation).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

__all__ = [
    "ResidualBlock",
    "GeneratorResNet",
    "Discriminator",
    "weights_init_normal",
    "ResnetBlock",
    "ResnetGenerator",
    "UnetSkipConnectionBlock",
    "UnetGenerator",
    "NLayerDiscriminator",
    "PixelDiscriminator",
    "ReflectionPad2d",
    "pad",
    "BlurDownsample",
    "BlurUpsample",
    "encoder_layout",
    "get_norm_layer",
    "init_weights",
    "define_G",
    "define_D",
    "NETWORK_NAMES",
    "PatchSampleMLP",
    "nce_layer_indices",
    "encoder",
    "feature_channels",
    "encode_features",
    "NetworkConfig",
    "build_generator",
    "build_discriminator",
    "build_patch_mlp",
    "generator_multiple",
    "discriminator_min_side",
    "GENERATORS",
    "DISCRIMINATORS",
    "NORMS",
    "INIT_TYPES",
]

NETWORK_NAMES = ("G_AB", "G_BA", "D_A", "D_B")  # the four networks of a CycleGAN run, in the order they are built
# CUT and FastCUT: one generator G_AB, one discriminator D_B, and the PatchNCE projection head F.
CUT_NETWORK_NAMES = ("G_AB", "D_B", "F")
GENERATORS = ("resnet", "unet_128", "unet_256")
DISCRIMINATORS = ("reference", "basic", "n_layers", "pixel")
NORMS = ("instance", "batch", "none")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")

NormLayer = Callable[[int], nn.Module]


def get_norm_layer(norm: str = "instance") -> NormLayer:
    """The official norms: instance (no affine, no running stats), batch (affine, running stats), none."""
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {norm!r}: use one of {', '.join(NORMS)}")


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """The official initialisation: convolutions and linear layers by ``init_type`` (gain
    ``init_gain``), biases 0, batch norms N(1, ``init_gain``). ``normal`` with gain 0.02 is the
    reference's ``weights_init_normal``."""
    if init_type not in INIT_TYPES:
        raise ValueError(f"unknown init_type {init_type!r}: use one of {', '.join(INIT_TYPES)}")

    def init_func(m: nn.Module) -> None:
        classname = m.__class__.__name__
        if hasattr(m, "weight") and ("Conv" in classname or "Linear" in classname):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, init_gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=init_gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight, gain=init_gain)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias, 0.0)
        elif "BatchNorm2d" in classname:
            nn.init.normal_(m.weight, 1.0, init_gain)
            nn.init.constant_(m.bias, 0.0)

    net.apply(init_func)
    return net


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


def pad(x: torch.Tensor, sizes: Sequence[int], mode: str) -> torch.Tensor:
    """``F.pad`` that keeps ``x``'s dtype under CPU autocast. CPU autocast runs reflection and
    replication padding in float32, so each padded bfloat16 activation would be copied up to
    float32 and, by the convolution after it, back down: two activation-sized copies per pad, the
    same values. Padding the bfloat16 tensor itself gives those values without the copies."""
    if x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return nn.functional.pad(x, tuple(sizes), mode=mode)
    return nn.functional.pad(x, tuple(sizes), mode=mode)


class ReflectionPad2d(nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` that pads a bfloat16 activation in bfloat16 under CPU autocast
    (``pad``); everywhere else exactly the same module (TorchScript sees torch's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return nn.functional.pad(x, self.padding, "reflect")
        return self._pad(x)

    @torch.jit.unused
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return pad(x, self.padding, "reflect")


def binomial_filter(size: int) -> torch.Tensor:
    """The normalised 2-D binomial filter of ``size`` taps a side (3: [1, 2, 1] x [1, 2, 1] / 16)."""
    row = torch.tensor([float(math.comb(size - 1, k)) for k in range(size)], dtype=torch.float64)
    grid = row[:, None] * row[None, :]
    return (grid / grid.sum()).float()


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 subsampling (the official CUT's ``Downsample``, 3 taps): reflection
    padding of 1, then each channel convolved with the [1, 2, 1] x [1, 2, 1] / 16 filter at
    stride 2. A side of n becomes ceil(n / 2)."""

    def __init__(self, channels: int, size: int = 3) -> None:
        super().__init__()
        self.pad = (size - 1) // 2, size // 2, (size - 1) // 2, size // 2
        self.register_buffer("filt", binomial_filter(size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        filt = self.filt.to(x.dtype)
        padded = nn.functional.pad(x, self.pad, mode="reflect") if torch.jit.is_scripting() else self._pad(x)
        return nn.functional.conv2d(padded, filt, stride=2, groups=x.shape[1])

    @torch.jit.unused
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return pad(x, self.pad, "reflect")


class BlurUpsample(nn.Module):
    """Anti-aliased 2x upsampling (the official CUT's ``Upsample``, 4 taps): replication padding
    of 1, a transposed convolution of each channel with 4 x the [1, 3, 3, 1] x [1, 3, 3, 1] / 64
    filter at stride 2, the border trimmed back. A side of n becomes 2n."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("filt", (binomial_filter(size) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        filt = self.filt.to(x.dtype)
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="replicate") if torch.jit.is_scripting() else self._pad(x)
        y = nn.functional.conv_transpose2d(padded, filt, stride=2, padding=1 + (self.size - 1) // 2,
                                           groups=x.shape[1])[:, :, 1:, 1:]
        return y if self.size % 2 else y[:, :, :-1, :-1]

    @torch.jit.unused
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return pad(x, (1, 1, 1, 1), "replicate")


def _residual_layers(dim: int, norm_layer: NormLayer, use_dropout: bool, use_bias: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        ReflectionPad2d(1),
        nn.Conv2d(dim, dim, 3, bias=use_bias),
        norm_layer(dim),
        nn.ReLU(inplace=True),
    ]
    if use_dropout:
        layers.append(nn.Dropout(0.5))
    layers += [ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm_layer(dim)]
    return layers


class ResidualBlock(nn.Module):
    """``x + block(x)`` with two reflection-padded 3x3 convolutions and instance norms."""

    def __init__(
        self, in_features: int, norm_layer: NormLayer = nn.InstanceNorm2d, use_dropout: bool = False,
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(*_residual_layers(in_features, norm_layer, use_dropout, use_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetBlock(nn.Module):
    """The official residual block: the same layers, named ``conv_block``."""

    def __init__(self, dim: int, norm_layer: NormLayer, use_dropout: bool, use_bias: bool) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(*_residual_layers(dim, norm_layer, use_dropout, use_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _resnet_layers(
    in_channels: int, out_channels: int, n_blocks: int, ngf: int, norm_layer: NormLayer, use_dropout: bool,
    use_bias: bool, upsample: str, block: Callable[..., nn.Module], antialias: bool = False,
    antialias_up: bool = False,
) -> list[nn.Module]:
    """c7s1-ngf, d(2 ngf), d(4 ngf), n_blocks x R(4 ngf), u(2 ngf), u(ngf), c7s1-out, tanh; the
    downsamplings and upsamplings blurred (the official CUT's) with ``antialias``, ``antialias_up``."""
    if n_blocks < 0:
        raise ValueError(f"the number of residual blocks must be >= 0, got {n_blocks}")
    if upsample not in ("nearest", "transpose"):
        raise ValueError(f"upsample must be 'nearest' or 'transpose', got {upsample!r}")
    layers: list[nn.Module] = [
        ReflectionPad2d(3),
        nn.Conv2d(in_channels, ngf, 7, bias=use_bias),
        norm_layer(ngf),
        nn.ReLU(inplace=True),
    ]
    features = ngf
    for _ in range(2):  # downsampling
        layers += [
            nn.Conv2d(features, features * 2, 3, stride=1 if antialias else 2, padding=1, bias=use_bias),
            norm_layer(features * 2),
            nn.ReLU(inplace=True),
        ]
        if antialias:
            layers.append(BlurDownsample(features * 2))
        features *= 2
    layers += [block(features, norm_layer, use_dropout, use_bias) for _ in range(n_blocks)]
    for _ in range(2):  # upsampling
        if antialias_up:
            layers += [BlurUpsample(features), nn.Conv2d(features, features // 2, 3, stride=1, padding=1,
                                                         bias=use_bias)]
        elif upsample == "nearest":
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(features, features // 2, 3, stride=1, padding=1,
                                                              bias=use_bias)]
        else:
            layers.append(nn.ConvTranspose2d(features, features // 2, 3, stride=2, padding=1, output_padding=1,
                                             bias=use_bias))
        layers += [norm_layer(features // 2), nn.ReLU(inplace=True)]
        features //= 2
    layers += [ReflectionPad2d(3), nn.Conv2d(features, out_channels, 7), nn.Tanh()]
    return layers


class GeneratorResNet(nn.Module):
    """The reference generator: c7s1-64, d128, d256, ``num_residual_blocks`` x R256, u128, u64, c7s1-C.

    ``input_shape`` is ``(channels, height, width)``; only the channel count shapes the network,
    which accepts any height and width divisible by 4 (two stride-2 downsamplings, then two
    nearest-neighbour upsamplings). The keyword options are the official ones; their defaults
    give the reference network (``out_channels`` defaults to the input's channel count).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_residual_blocks: int,
        *,
        ngf: int = 64,
        norm: str = "instance",
        use_dropout: bool = False,
        upsample: str = "nearest",
        out_channels: int | None = None,
        antialias: bool = False,
        antialias_up: bool = False,
    ) -> None:
        super().__init__()
        channels = int(input_shape[0])
        # The reference keeps convolution biases with instance norm (affine-free), as here.
        norm_layer = nn.InstanceNorm2d if norm == "instance" else get_norm_layer(norm)
        self.model = nn.Sequential(*_resnet_layers(
            channels, out_channels or channels, num_residual_blocks, ngf, norm_layer, use_dropout,
            use_bias=norm != "batch", upsample=upsample, block=ResidualBlock, antialias=antialias,
            antialias_up=antialias_up,
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ResnetGenerator(nn.Module):
    """The official ResNet generator (``resnet_9blocks``, ``resnet_6blocks``): transposed-convolution
    upsampling, convolution biases only when the norm is instance norm, ``conv_block`` keys. With
    ``antialias`` and ``antialias_up``: the official CUT's (``no_antialias``, ``no_antialias_up``
    False there), whose layer indices ``--nce_layers 0,4,8,12,16`` name."""

    def __init__(
        self, input_nc: int, output_nc: int, ngf: int = 64, norm: str = "instance", use_dropout: bool = False,
        n_blocks: int = 9, upsample: str = "transpose", antialias: bool = False, antialias_up: bool = False,
    ) -> None:
        super().__init__()
        self.model = nn.Sequential(*_resnet_layers(
            input_nc, output_nc, n_blocks, ngf, get_norm_layer(norm), use_dropout,
            use_bias=norm == "instance", upsample=upsample, block=ResnetBlock, antialias=antialias,
            antialias_up=antialias_up,
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetSkipConnectionBlock(nn.Module):
    """One level of the official U-Net: down, the inner levels, up, concatenated with the input."""

    def __init__(
        self, outer_nc: int, inner_nc: int, input_nc: int | None = None, submodule: nn.Module | None = None,
        outermost: bool = False, innermost: bool = False, norm: str = "batch", use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        norm_layer = get_norm_layer(norm)
        use_bias = norm == "instance"
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, inplace=True)
        uprelu = nn.ReLU(inplace=True)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, norm_layer(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, norm_layer(inner_nc), submodule, uprelu, upconv, norm_layer(outer_nc)]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """The official U-Net (``unet_128``: 7 downsamplings, ``unet_256``: 8); height and width must be
    multiples of ``2 ** num_downs``."""

    def __init__(
        self, input_nc: int, output_nc: int, num_downs: int, ngf: int = 64, norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"a U-Net needs at least 5 downsamplings, got {num_downs}")
        self.num_downs = num_downs
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm=norm, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Discriminator(nn.Module):
    """The reference PatchGAN: C64-C128-C256-C512 (stride 2), then a 1-channel 4x4 convolution.

    The keyword options are the official ``ndf`` and ``norm``; their defaults give the reference's.

    ``output_shape`` is ``(1, height // 16, width // 16)``, the shape of one sample's output for
    the ``input_shape`` given; the loss targets are shaped by it. Inputs need height and width of
    at least 16.
    """

    def __init__(self, input_shape: Sequence[int], *, ndf: int = 64, norm: str = "instance") -> None:
        super().__init__()
        channels, height, width = (int(v) for v in input_shape)
        self.output_shape = self.output_shape_for(height, width)
        norm_layer = nn.InstanceNorm2d if norm == "instance" else get_norm_layer(norm)
        use_bias = norm != "batch"

        def discriminator_block(in_filters: int, out_filters: int, normalize: bool = True) -> list[nn.Module]:
            layers: list[nn.Module] = [
                nn.Conv2d(in_filters, out_filters, 4, stride=2, padding=1, bias=use_bias or not normalize)
            ]
            if normalize:
                layers.append(norm_layer(out_filters))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(
            *discriminator_block(channels, ndf, normalize=False),
            *discriminator_block(ndf, ndf * 2),
            *discriminator_block(ndf * 2, ndf * 4),
            *discriminator_block(ndf * 4, ndf * 8),
            nn.ZeroPad2d((1, 0, 1, 0)),
            nn.Conv2d(ndf * 8, 1, 4, padding=1),
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


class NLayerDiscriminator(nn.Module):
    """The official PatchGAN: ``n_layers`` stride-2 convolutions, a stride-1 one, a 1-channel output.
    With ``n_layers=3`` (``basic``) each output sees a 70x70 patch. With ``antialias`` (the
    official CUT's): each strided convolution is a stride-1 one followed by ``BlurDownsample``."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch",
                 antialias: bool = False) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        norm_layer = get_norm_layer(norm)
        use_bias = norm == "instance"
        stride = 1 if antialias else 2
        sequence: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=stride, padding=1), nn.LeakyReLU(0.2, True)]
        if antialias:
            sequence.append(BlurDownsample(ndf))
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            sequence += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
            if antialias:
                sequence.append(BlurDownsample(ndf * mult))
        prev, mult = mult, min(2**n_layers, 8)
        sequence += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=use_bias),
            norm_layer(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*sequence)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """The official 1x1 PatchGAN: classifies each pixel."""

    def __init__(self, input_nc: int, ndf: int = 64, norm: str = "batch") -> None:
        super().__init__()
        use_bias = norm == "instance"
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, 1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 1, stride=1, padding=0, bias=use_bias),
            get_norm_layer(norm)(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, 1, stride=1, padding=0, bias=use_bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def define_G(
    netG: str, input_nc: int, output_nc: int, *, n_blocks: int = 9, ngf: int = 64, norm: str = "instance",
    use_dropout: bool = False, upsample: str = "nearest", init_type: str | None = "normal", init_gain: float = 0.02,
    antialias: bool = False, antialias_up: bool = False,
) -> nn.Module:
    """A generator by name, initialised (``init_type=None``: left as torch's layers start).

    ``resnet`` with ``upsample="nearest"`` is the reference design's ``GeneratorResNet`` (its keys);
    with ``"transpose"`` the official ``ResnetGenerator`` (``resnet_9blocks``/``resnet_6blocks``);
    ``antialias``, ``antialias_up``: blurred down- and upsampling (the official CUT's; the U-Nets
    have none).
    """
    if netG == "resnet":
        if upsample == "nearest":
            net: nn.Module = GeneratorResNet((input_nc,), n_blocks, ngf=ngf, norm=norm, use_dropout=use_dropout,
                                             out_channels=output_nc, antialias=antialias, antialias_up=antialias_up)
        else:
            net = ResnetGenerator(input_nc, output_nc, ngf, norm, use_dropout, n_blocks, antialias=antialias,
                                  antialias_up=antialias_up)
    elif netG in ("unet_128", "unet_256"):
        net = UnetGenerator(input_nc, output_nc, 7 if netG == "unet_128" else 8, ngf, norm, use_dropout)
    else:
        raise ValueError(f"unknown generator {netG!r}: use one of {', '.join(GENERATORS)}")
    return net if init_type is None else init_weights(net, init_type, init_gain)


def define_D(
    netD: str, input_shape: Sequence[int], *, ndf: int = 64, n_layers_D: int = 3, norm: str = "instance",
    init_type: str = "normal", init_gain: float = 0.02, antialias: bool = False,
) -> nn.Module:
    """A discriminator by name, initialised: ``reference`` (the reference design's), ``basic``
    (70x70 PatchGAN), ``n_layers`` (``n_layers_D`` layers), ``pixel`` (1x1). ``antialias``: the
    PatchGANs' subsampling blurred (the official CUT's; ``reference`` has no such option, and
    ``pixel`` does not subsample)."""
    input_nc = int(input_shape[0])
    if antialias and netD == "reference":
        raise ValueError("the reference discriminator has no anti-aliased form: use basic or n_layers")
    if netD == "reference":
        net: nn.Module = Discriminator(input_shape, ndf=ndf, norm=norm)
    elif netD == "basic":
        net = NLayerDiscriminator(input_nc, ndf, 3, norm, antialias)
    elif netD == "n_layers":
        net = NLayerDiscriminator(input_nc, ndf, n_layers_D, norm, antialias)
    elif netD == "pixel":
        net = PixelDiscriminator(input_nc, ndf, norm)
    else:
        raise ValueError(f"unknown discriminator {netD!r}: use one of {', '.join(DISCRIMINATORS)}")
    return init_weights(net, init_type, init_gain)


def generator_multiple(netG: str) -> int:
    """What the height and width of a generator's input must be a multiple of: 4 for the ResNet
    generators (two stride-2 downsamplings), ``2 ** 7`` and ``2 ** 8`` for the U-Nets."""
    if netG in ("unet_128", "unet_256"):
        return 2 ** (7 if netG == "unet_128" else 8)
    return 4


def discriminator_min_side(netD: str, n_layers_D: int = 3) -> int:
    """The smallest square side a discriminator takes: ``3 * 2 ** n`` for an n-layer PatchGAN
    (``basic``: 3 layers), 32 for the reference's (its output is side // 16 a side, and its last
    instance norm needs more than one value), 1 for the pixel discriminator."""
    if netD in ("basic", "n_layers"):
        return 3 * 2 ** (3 if netD == "basic" else n_layers_D)
    return 32 if netD == "reference" else 1


class PatchSampleMLP(nn.Module):
    """CUT's projection head F: for each chosen generator layer, a two-layer MLP (Linear, ReLU,
    Linear to ``nc``) applied to the features of ``num_patches`` locations sampled at random, each
    output L2-normalised. The locations drawn for one set of features (the input's) are passed
    back as ``patch_ids`` for the other (the output's), so that the patches correspond."""

    def __init__(self, in_channels: Sequence[int], nc: int = 256) -> None:
        super().__init__()
        self.nc = nc
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in in_channels
        )

    def forward(self, feats: Sequence[torch.Tensor], num_patches: int,
                patch_ids: Sequence[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``feats[k]`` is ``(B, C_k, H_k, W_k)``; returns ``([(B * P_k, nc)], [locations])`` with
        ``P_k = min(num_patches, H_k * W_k)`` locations per image (the same for every image)."""
        if len(feats) != len(self.mlps):
            raise ValueError(f"PatchSampleMLP has {len(self.mlps)} heads, got {len(feats)} feature maps")
        out, ids = [], []
        for k, (feat, mlp) in enumerate(zip(feats, self.mlps)):
            flat = feat.permute(0, 2, 3, 1).flatten(1, 2)  # (B, H*W, C)
            if patch_ids is None:
                index = torch.randperm(flat.size(1), device=feat.device)[:min(num_patches, flat.size(1))]
            else:
                index = patch_ids[k]
            x = mlp(flat[:, index, :].flatten(0, 1)).float()  # normalised in float32 under autocast too
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-7))
            ids.append(index)
        return out, ids


def nce_layer_indices(text: str) -> tuple[int, ...]:
    """``--nce_layers "0,4,8,12,16"`` as sorted, distinct indices."""
    try:
        values = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--nce_layers {text!r}: give comma-separated layer indices, e.g. 0,4,8,12,16") from None
    if not values or values[0] < 0:
        raise ValueError(f"--nce_layers {text!r}: give comma-separated layer indices of 0 or more")
    return tuple(values)


def encoder_layout(n_blocks: int, antialias: bool = False) -> list[str]:
    """What each layer of a ResNet generator's encoder is, by index (the layers PatchNCE can
    read): 0 the reflection-padded image, 1-3 the 7x7 convolution, its norm and ReLU, then each
    downsampling's convolution, norm and ReLU (and with ``antialias`` its blurred subsampling:
    4 layers each, 3 without), then one layer per residual block. With ``antialias`` and 9 blocks
    (the official CUT's) ``0,4,8,12,16`` is the image, both downsamplings' convolutions and
    blocks 1 and 5; without, the same layers are ``0,4,7,10,14``."""
    names = ["the padded image", "the 7x7 conv", "its norm", "its ReLU"]
    for k in (1, 2):
        names += [f"downsampling {k}'s conv", f"downsampling {k}'s norm", f"downsampling {k}'s ReLU"]
        if antialias:
            names.append(f"downsampling {k}'s blur")
    return names + [f"residual block {b}" for b in range(1, n_blocks + 1)]


def encoder(G: nn.Module) -> nn.Sequential:
    """The layer sequence of a ResNet generator (``GeneratorResNet`` or ``ResnetGenerator``), whose
    first layers are the encoder that PatchNCE reads (``encoder_layout``)."""
    model = getattr(G, "model", None)
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"PatchNCE reads the layers of a ResNet generator; {type(G).__name__} has none")
    return model


def encode_features(G: nn.Module, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
    """The outputs of ``layers`` of ``encoder(G)`` for input ``x``; the layers after the last one
    asked for are not run. A feature that the next layer would overwrite in place is kept intact."""
    seq = list(encoder(G))
    wanted, last, feats = set(layers), max(layers), []
    for i, layer in enumerate(seq[: last + 1]):
        x = layer(x)
        if i in wanted:
            feats.append(x)
            if i < last and getattr(seq[i + 1], "inplace", False):
                x = x.clone()
    return feats


def feature_channels(G: nn.Module, layers: Sequence[int], in_channels: int) -> list[int]:
    """The channel count of the output of each of ``layers`` of ``encoder(G)``."""
    seq = list(encoder(G))
    if max(layers) >= len(seq):
        raise ValueError(f"layer {max(layers)} is beyond the generator's {len(seq)} layers")
    channels, out = in_channels, []
    for i, layer in enumerate(seq[: max(layers) + 1]):
        convs = [m for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        if convs and not isinstance(layer, (ResidualBlock, ResnetBlock)):
            channels = convs[-1].out_channels
        if i in layers:
            out.append(channels)
    return out


class NetworkConfig(Protocol):
    """The settings the builders read (``options.TrainConfig`` has them all)."""

    model: str
    nce_layers: str
    netF_nc: int
    netG: str
    upsample: str
    no_antialias: bool
    no_antialias_up: bool
    ngf: int
    use_dropout: bool
    n_residual_blocks: int
    netD: str
    n_layers_D: int
    ndf: int
    norm: str
    init_type: str
    init_gain: float
    img_height: int
    img_width: int

    @property
    def channels_A(self) -> int: ...

    @property
    def channels_B(self) -> int: ...


def build_generator(config: NetworkConfig, direction: str = "AtoB", initialise: bool = True) -> nn.Module:
    """G_AB (``AtoB``) or G_BA (``BtoA``) of a run, initialised as the config says (or, with
    ``initialise=False``, as torch's layers start, for weights about to be loaded: no random
    numbers drawn beyond the layers' own, and any ``init_type`` accepted)."""
    if direction not in ("AtoB", "BtoA"):
        raise ValueError(f"direction must be AtoB or BtoA, got {direction!r}")
    a, b = config.channels_A, config.channels_B
    source, target = (a, b) if direction == "AtoB" else (b, a)
    return define_G(config.netG, source, target, n_blocks=config.n_residual_blocks, ngf=config.ngf,
                    norm=config.norm, use_dropout=config.use_dropout, upsample=config.upsample,
                    init_type=config.init_type if initialise else None, init_gain=config.init_gain,
                    antialias=not config.no_antialias, antialias_up=not config.no_antialias_up)


def build_discriminator(config: NetworkConfig, domain: str) -> nn.Module:
    """D_A (``domain="A"``) or D_B of a run, initialised as the config says."""
    if domain not in ("A", "B"):
        raise ValueError(f"domain must be A or B, got {domain!r}")
    channels = config.channels_A if domain == "A" else config.channels_B
    return define_D(config.netD, (channels, config.img_height, config.img_width), ndf=config.ndf,
                    n_layers_D=config.n_layers_D, norm=config.norm, init_type=config.init_type,
                    init_gain=config.init_gain, antialias=not config.no_antialias)


def build_patch_mlp(config: NetworkConfig, G: nn.Module) -> PatchSampleMLP:
    """CUT's projection head F for generator ``G``, initialised as the config says."""
    layers = nce_layer_indices(config.nce_layers)
    net = PatchSampleMLP(feature_channels(G, layers, config.channels_A), config.netF_nc)
    return init_weights(net, config.init_type, config.init_gain)
