"""A network of the FID Inception's shape (Inception v3 up to its 2048-wide pool: the same
layers, channels, kernels and strides), with random weights, saved as TorchScript with the
interface of the real file (``forward(uint8 images, return_features=True)``). Its cost is the
real network's, since a convolution's time does not depend on its weights; its features mean
nothing. ``benchmarks/scoring.py --cost`` times FID scoring with it where the 91 MB file is not
at hand (this project downloads nothing without being asked)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def conv(cin: int, cout: int, kernel, stride: int = 1, padding=0) -> nn.Sequential:
    """Inception's unit: a convolution without bias, batch norm (eps 1e-3), ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout, eps=1e-3),
                         nn.ReLU(inplace=True))


class BlockA(nn.Module):
    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.b1 = conv(cin, 64, 1)
        self.b5 = nn.Sequential(conv(cin, 48, 1), conv(48, 64, 5, padding=2))
        self.b3 = nn.Sequential(conv(cin, 64, 1), conv(64, 96, 3, padding=1), conv(96, 96, 3, padding=1))
        self.bp = conv(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b5(x), self.b3(x), self.bp(F.avg_pool2d(x, 3, 1, 1))], 1)


class BlockB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b3 = conv(cin, 384, 3, stride=2)
        self.bd = nn.Sequential(conv(cin, 64, 1), conv(64, 96, 3, padding=1), conv(96, 96, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b3(x), self.bd(x), F.max_pool2d(x, 3, 2)], 1)


class BlockC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.b1 = conv(cin, 192, 1)
        self.b7 = nn.Sequential(conv(cin, c7, 1), conv(c7, c7, (1, 7), padding=(0, 3)),
                                conv(c7, 192, (7, 1), padding=(3, 0)))
        self.bd = nn.Sequential(conv(cin, c7, 1), conv(c7, c7, (7, 1), padding=(3, 0)),
                                conv(c7, c7, (1, 7), padding=(0, 3)), conv(c7, c7, (7, 1), padding=(3, 0)),
                                conv(c7, 192, (1, 7), padding=(0, 3)))
        self.bp = conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b7(x), self.bd(x), self.bp(F.avg_pool2d(x, 3, 1, 1))], 1)


class BlockD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b3 = nn.Sequential(conv(cin, 192, 1), conv(192, 320, 3, stride=2))
        self.b7 = nn.Sequential(conv(cin, 192, 1), conv(192, 192, (1, 7), padding=(0, 3)),
                                conv(192, 192, (7, 1), padding=(3, 0)), conv(192, 192, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b3(x), self.b7(x), F.max_pool2d(x, 3, 2)], 1)


class BlockE(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = conv(cin, 320, 1)
        self.b3 = conv(cin, 384, 1)
        self.b3a, self.b3b = conv(384, 384, (1, 3), padding=(0, 1)), conv(384, 384, (3, 1), padding=(1, 0))
        self.bd = nn.Sequential(conv(cin, 448, 1), conv(448, 384, 3, padding=1))
        self.bda, self.bdb = conv(384, 384, (1, 3), padding=(0, 1)), conv(384, 384, (3, 1), padding=(1, 0))
        self.bp = conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, z = self.b3(x), self.bd(x)
        return torch.cat([self.b1(x), self.b3a(y), self.b3b(y), self.bda(z), self.bdb(z),
                          self.bp(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionShaped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv(3, 32, 3, stride=2), conv(32, 32, 3), conv(32, 64, 3, padding=1),
                                  nn.MaxPool2d(3, 2), conv(64, 80, 1), conv(80, 192, 3), nn.MaxPool2d(3, 2))
        self.blocks = nn.Sequential(BlockA(192, 32), BlockA(256, 64), BlockA(288, 64), BlockB(288),
                                    BlockC(768, 128), BlockC(768, 160), BlockC(768, 160), BlockC(768, 192),
                                    BlockD(768), BlockE(1280), BlockE(2048))

    def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = (x - 128) / 128
        return self.blocks(self.stem(x)).mean((2, 3))


def write_inception_shaped(path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.script(InceptionShaped().eval()).save(str(path))
    return path
