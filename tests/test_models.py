"""The networks: shapes, the discriminator's output_shape, the reference's state-dict layout and a
strict load of weights saved by a literal copy of the reference code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

# The literal transcription of the reference design's models.py (PyTorch-GAN), kept as the oracle
# (tests/reference_models.py; the quality benchmark's reference arm trains it). Its only difference
# from ours is the padding of the 7x7 convolutions by `channels`.
from reference_models import Discriminator as RefDiscriminator
from reference_models import GeneratorResNet as RefGeneratorResNet

from cyclegan.models import Discriminator, GeneratorResNet, ResidualBlock, weights_init_normal



@pytest.mark.parametrize(
    "channels,height,width", [(3, 64, 64), (3, 32, 64), (3, 48, 80), (1, 64, 64), (1, 32, 48)]
)
def test_generator_keeps_shape(channels, height, width):
    g = GeneratorResNet((channels, height, width), 2)
    x = torch.rand(2, channels, height, width) * 2 - 1
    y = g(x)
    assert y.shape == x.shape
    assert y.abs().max() <= 1.0  # tanh output


@pytest.mark.parametrize(
    "channels,height,width",
    [(3, 32, 32), (3, 64, 64), (3, 256, 256), (3, 32, 64), (3, 64, 32), (1, 48, 80), (3, 37, 50), (3, 16, 47),
     (1, 100, 33)],
)
def test_discriminator_output_shape_matches_real_output(channels, height, width):
    d = Discriminator((channels, height, width))
    out = d(torch.randn(2, channels, height, width))
    assert tuple(out.shape[1:]) == d.output_shape
    assert d.output_shape == (1, height // 16, width // 16)


def test_discriminator_refuses_too_small_inputs():
    with pytest.raises(ValueError, match="at least 16"):
        Discriminator((3, 16, 16))
    with pytest.raises(ValueError, match="at least 16"):
        Discriminator((3, 8, 64))


def expected_generator_keys(n: int) -> list[str]:
    """The reference's state-dict keys, written out by layer index."""
    convs = [1, 4, 7] + [11 + n, 15 + n, 19 + n]
    keys = []
    for i in convs[:3]:
        keys += [f"model.{i}.weight", f"model.{i}.bias"]
    for b in range(n):
        for j in (1, 5):
            keys += [f"model.{10 + b}.block.{j}.weight", f"model.{10 + b}.block.{j}.bias"]
    for i in convs[3:]:
        keys += [f"model.{i}.weight", f"model.{i}.bias"]
    return keys


@pytest.mark.parametrize("n", [0, 3, 9])
def test_generator_state_dict_layout(n):
    assert list(GeneratorResNet((3, 64, 64), n).state_dict()) == expected_generator_keys(n)


def test_discriminator_state_dict_layout():
    keys = list(Discriminator((3, 64, 64)).state_dict())
    assert keys == [f"model.{i}.{p}" for i in (0, 2, 5, 8, 12) for p in ("weight", "bias")]


def test_reference_generator_weights_load_strictly_and_match(tmp_path):
    torch.manual_seed(0)
    ref = RefGeneratorResNet((3, 64, 64), 9)
    ref.apply(weights_init_normal)
    torch.save(ref.state_dict(), tmp_path / "G_AB_10.pth")  # what the reference code writes

    ours = GeneratorResNet((3, 64, 64), 9)
    ours.load_state_dict(torch.load(tmp_path / "G_AB_10.pth", weights_only=True), strict=True)
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


def test_reference_discriminator_weights_load_strictly_and_match(tmp_path):
    torch.manual_seed(1)
    ref = RefDiscriminator((3, 64, 96))
    ref.apply(weights_init_normal)
    torch.save(ref.state_dict(), tmp_path / "D_A_10.pth")
    ours = Discriminator((3, 64, 96))
    ours.load_state_dict(torch.load(tmp_path / "D_A_10.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    assert ours.output_shape == ref.output_shape


def test_one_channel_generator_is_fixed_where_the_reference_breaks():
    x = torch.rand(1, 1, 32, 32)
    assert GeneratorResNet((1, 32, 32), 1)(x).shape == x.shape
    # The reference pads the 7x7 convolutions by `channels` = 1, so its output shrinks.
    assert RefGeneratorResNet((1, 32, 32), 1)(x).shape != x.shape


def test_residual_block_adds_its_input():
    block = ResidualBlock(8)
    for p in block.parameters():
        nn.init.zeros_(p)
    x = torch.randn(1, 8, 6, 6)
    assert torch.equal(block(x), x)  # zero weights: the block's branch is zero


def test_weights_init_normal():
    torch.manual_seed(0)
    g = GeneratorResNet((3, 32, 32), 9)
    g.apply(weights_init_normal)
    weights = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, nn.Conv2d)])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert all(torch.count_nonzero(m.bias) == 0 for m in g.modules() if isinstance(m, nn.Conv2d))
    bn = nn.BatchNorm2d(1000)
    weights_init_normal(bn)
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.005)
    assert bn.weight.std().item() == pytest.approx(0.02, rel=0.1)
