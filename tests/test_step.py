"""The fast training step against the literal reference step (``reference_step.py``): the same
mathematics (exactly, in float64; to 1e-5 in float32), with batched generator and discriminator
calls, frozen discriminators, fused Adam, channels_last and mixed precision."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from reference_step import reference_optimizers, reference_step
from torch import nn

from cyclegan.models import NETWORK_NAMES
from cyclegan.registry import build_networks
from cyclegan.options import TrainConfig
from cyclegan.perf import UpsampleConv2d, exact_fast_layers, prepare_networks, resolve_speed, step_flops
from cyclegan.step import batches_generator_calls, build_optimizers, train_step
from cyclegan.utils import ReplayBuffer

LR = 0.0002


def gradient_free(net: nn.Module) -> set[str]:
    """Biases of convolutions followed directly by an instance norm, which subtracts them again:
    their gradient is zero in exact arithmetic and rounding noise in float32, which Adam scales
    up to steps of about ``lr`` in either direction. They have no effect on any output."""
    names, prev = set(), None
    for name, module in net.named_modules():
        if list(module.children()):
            continue
        if isinstance(module, nn.InstanceNorm2d) and isinstance(prev[1], nn.Conv2d) and prev[1].bias is not None:
            names.add(f"{prev[0]}.bias")
        prev = (name, module)
    return names


def setup(config: TrainConfig, dtype: torch.dtype = torch.float32, prepare: str = "train"):
    """Equal networks (biases drawn too, so that no parameter starts at zero), our optimizers
    and the reference's, and equal replay buffers already full (so the swap path is taken).
    Ours are prepared as ``cyclegan train`` prepares them on the CPU (``prepare="train"``: the
    sub-pixel upsampling convolutions and the bit-identical fast layers), with the bit-identical
    layers only (``"exact"``: the reference's convolutions), or left as built (``"none"``); the
    reference's are as built."""
    torch.manual_seed(0)
    ours = build_networks(config)
    for net in ours.values():
        net.to(dtype)
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.data.normal_(0, 0.02)
    ref = copy.deepcopy(ours)
    if prepare == "train":
        cpu = torch.device("cpu")
        prepare_networks(ours, resolve_speed("auto", "auto", False, cpu), cpu)
        assert any(isinstance(m, UpsampleConv2d) for m in ours["G_AB"].modules())
    elif prepare == "exact":
        for net in ours.values():
            exact_fast_layers(net)
    pools = []
    for _ in range(2):
        pool = {k: ReplayBuffer(3, rng=random.Random(7)) for k in "AB"}
        pools.append(pool)
    gen = torch.Generator().manual_seed(1)
    for k, c in (("A", config.channels_A), ("B", config.channels_B)):
        for _ in range(3):
            image = torch.rand(1, c, config.img_height, config.img_width, generator=gen, dtype=dtype) * 2 - 1
            pools[0][k].data.append(image.clone())
            pools[1][k].data.append(image.clone())
    return ours, build_optimizers(ours, config), pools[0], ref, reference_optimizers(ref, LR), pools[1]


def batch(config: TrainConfig, gen: torch.Generator, dtype: torch.dtype = torch.float32):
    shape = (2, config.img_height, config.img_width)
    real_A = torch.rand(shape[0], config.channels_A, *shape[1:], generator=gen, dtype=dtype) * 2 - 1
    real_B = torch.rand(shape[0], config.channels_B, *shape[1:], generator=gen, dtype=dtype) * 2 - 1
    return real_A, real_B


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def test_one_fast_step_leaves_the_reference_steps_parameters_in_fp32():
    """With the reference's convolutions (all but the sub-pixel upsampling of ``cyclegan train``:
    the next test takes that on), float32 agrees to 1e-5 after one step: the batching, the
    frozen discriminators and fused Adam change nothing but the order of a few sums."""
    config = TrainConfig(img_height=32, img_width=48, n_residual_blocks=2)
    ours, opts, pools, ref, ref_opts, ref_pools = setup(config, prepare="exact")
    real_A, real_B = batch(config, torch.Generator().manual_seed(2))
    got = train_step(ours, opts, pools, real_A, real_B, 10.0, 5.0)
    want = reference_step(ref, ref_opts, ref_pools, real_A, real_B)
    for k in want:
        assert got[k].item() == pytest.approx(want[k].item(), rel=1e-5), k
    n_checked = 0
    for name in NETWORK_NAMES:
        free = gradient_free(ours[name])
        assert free, name  # the reference's networks have such biases: the rule below is exercised
        for (key, a), b in zip(ours[name].state_dict().items(), ref[name].state_dict().values()):
            if key in free:
                assert (a - b).abs().max() <= 2 * LR, (name, key)
            elif a.is_floating_point():
                assert relative(a, b) <= 1e-5, (name, key, relative(a, b))
                n_checked += 1
    assert n_checked > 30
    # The gradient-free biases change nothing: the networks compute the same function.
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    for name in NETWORK_NAMES:
        assert relative(ours[name](x), ref[name](x)) <= 1e-5, name


def gradient_errors(nets: dict[str, nn.Module], exact: dict[str, nn.Module]) -> dict[str, float]:
    """Per network, the largest relative distance of a parameter's gradient from float64's
    (the gradient-free biases left out)."""
    errors = {}
    for name in NETWORK_NAMES:
        free = gradient_free(nets[name])
        errors[name] = max(relative(p.grad.double(), p_exact.grad)
                           for (key, p), p_exact in zip(nets[name].named_parameters(), exact[name].parameters())
                           if key not in free)
    return errors


@pytest.mark.long
def test_the_training_step_is_as_close_to_exact_arithmetic_as_the_reference_step_in_fp32():
    """The step ``cyclegan train`` runs, sub-pixel upsampling convolutions included, against the
    reference step in float32 and in float64 (exact arithmetic, for these purposes), from the same
    weights.

    A change of convolution algorithm rounds differently, and at random initialisation the step
    is ill-conditioned: the float32 reference's own generator gradients are up to several 1e-3
    from the float64 ones here, and Adam's first update (about lr * sign(gradient)) turns such
    noise into flipped signs. So float32 results cannot agree to 1e-5 once any algorithm changes
    (as cudnn.benchmark changes them on a GPU). What this checks: the losses equal to 1e-5, and
    the gradients of each kind of network (generators, discriminators), summed over three
    batches, within twice the spread of valid float32 computations of the reference step (its two
    memory layouts). That is coarse: how far a generator's gradients land depends on the batch and
    the CPU's instruction set (on an AVX-512 machine ours were 2.7x the contiguous reference's
    distance on one batch and 0.1x on another; this test once compared one batch tensor by
    tensor and failed there). The precise check of the sub-pixel layer's own accuracy against
    float64 is test_perf's ``test_upsample_conv_in_float32_is_as_close_to_float64_...``.
    """
    config = TrainConfig(img_height=32, img_width=48, n_residual_blocks=2)
    ours_total = {"G": 0.0, "D": 0.0}
    noise_total = {"G": 0.0, "D": 0.0}
    for seed in (2, 3, 4):
        ours_errors, noise = one_step_errors(config, seed)
        for kind in ("G", "D"):
            ours_total[kind] += max(e for name, e in ours_errors.items() if name.startswith(kind))
            noise_total[kind] += max(e for errors in noise for name, e in errors.items() if name.startswith(kind))
    # the premise: the float32 reference's own distance from exact arithmetic, as said above
    assert noise_total["G"] > 3 * 1e-3, noise_total
    for kind in ("G", "D"):
        assert ours_total[kind] <= 2 * noise_total[kind] + 1e-6, (kind, ours_total, noise_total)


def one_step_errors(config: TrainConfig, seed: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    """One step from equal weights on batch ``seed``: the gradient errors (against float64) of
    ours and of the reference in its two layouts; the losses checked on the way."""
    ours, opts, pools, ref, ref_opts, ref_pools = setup(config)
    exact, exact_pools = copy.deepcopy(ref), copy.deepcopy(ref_pools)
    for net in exact.values():
        net.double()
    for pool in exact_pools.values():
        pool.data = [image.double() for image in pool.data]
    ref_cl, ref_cl_pools = copy.deepcopy(ref), copy.deepcopy(ref_pools)
    for net in ref_cl.values():
        net.to(memory_format=torch.channels_last)
    real_A, real_B = batch(config, torch.Generator().manual_seed(seed))
    got = train_step(ours, opts, pools, real_A, real_B, 10.0, 5.0)
    want = reference_step(ref, ref_opts, ref_pools, real_A, real_B)
    truth = reference_step(exact, reference_optimizers(exact, LR), exact_pools, real_A.double(), real_B.double())
    last = torch.channels_last
    reference_step(ref_cl, reference_optimizers(ref_cl, LR), ref_cl_pools, real_A.contiguous(memory_format=last),
                   real_B.contiguous(memory_format=last))
    for k in want:
        assert got[k].item() == pytest.approx(want[k].item(), rel=1e-5), k
        assert got[k].item() == pytest.approx(truth[k].item(), rel=1e-5), k
    # After the step each parameter holds the gradient of its last update: the generator loss's
    # for the generators, the discriminator loss's for the discriminators, in all three steps.
    return gradient_errors(ours, exact), [gradient_errors(ref, exact), gradient_errors(ref_cl, exact)]


@pytest.mark.parametrize("norm, lambda_id, batched", [("instance", 5.0, None), ("instance", 0.0, None),
                                                      ("instance", 5.0, False), ("batch", 5.0, None)])
def test_the_fast_step_is_the_reference_arithmetic_in_float64(norm, lambda_id, batched):
    """Without float32 rounding every parameter and loss agrees over several steps: three batched
    generator calls (two without the identity loss), or the reference's six with batch norm or
    unbatched (as large images on the CPU are)."""
    config = TrainConfig(img_height=32, img_width=32, n_residual_blocks=1, ngf=16, ndf=16, norm=norm)
    ours, opts, pools, ref, ref_opts, ref_pools = setup(config, torch.float64)
    gen = torch.Generator().manual_seed(2)
    for step in range(3):
        real_A, real_B = batch(config, gen, torch.float64)
        got = train_step(ours, opts, pools, real_A, real_B, 10.0, lambda_id, batch_generators=batched)
        want = reference_step(ref, ref_opts, ref_pools, real_A, real_B, 10.0, lambda_id)
        for k in ("D", "G", "adv", "cycle"):
            assert got[k].item() == pytest.approx(want[k].item(), rel=1e-11), (step, k)
    for name in NETWORK_NAMES:
        free = gradient_free(ours[name])
        for (key, a), b in zip(ours[name].state_dict().items(), ref[name].state_dict().values()):
            if key in free:  # float64 rounding noise, scaled by Adam
                assert (a - b).abs().max() <= 1e-8, (name, key)
            elif a.is_floating_point():
                assert relative(a, b) <= 1e-9, (name, key)
            else:
                assert torch.equal(a, b), (name, key)  # batch norm's step counters


def generator_calls(nets, run) -> list[tuple[str, int]]:
    """(network, images) of every generator call that ``run()`` makes, in order."""
    calls: list[tuple[str, int]] = []
    handles = [nets[name].register_forward_hook(lambda m, args, out, name=name: calls.append((name, args[0].size(0))))
               for name in ("G_AB", "G_BA")]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return calls


def test_generator_calls_are_batched_for_small_images_and_not_for_large_ones_on_the_cpu():
    config = TrainConfig(img_height=32, img_width=32, n_residual_blocks=1)
    ours, opts, pools, *_ = setup(config)
    real_A, real_B = batch(config, torch.Generator().manual_seed(2))  # 2 images a domain

    def step(lambda_id=5.0, **kw):
        return generator_calls(ours, lambda: train_step(ours, opts, pools, real_A, real_B, 10.0, lambda_id, **kw))

    assert step() == [("G_AB", 4), ("G_BA", 6), ("G_AB", 2)]
    assert step(lambda_id=0.0) == [("G_AB", 2), ("G_BA", 4), ("G_AB", 2)]
    assert step(batch_generators=False) == [("G_BA", 2), ("G_AB", 2), ("G_AB", 2), ("G_BA", 2), ("G_BA", 2),
                                            ("G_AB", 2)]  # the reference's six calls, in its order
    # The rule: on the CPU, a batched call's largest activation (ngf 64 at full resolution,
    # padded by 3 on each side, three image sets) within 32 MiB.
    G = ours["G_BA"]
    assert batches_generator_calls(G, torch.zeros(1, 3, 128, 128))  # 3 * 64 * 134^2 * 4 B = 13.1 MiB
    assert batches_generator_calls(G, torch.zeros(4, 3, 64, 64))  # 14.4 MiB
    assert not batches_generator_calls(G, torch.zeros(4, 3, 128, 128))  # 52.6 MiB
    assert not batches_generator_calls(G, torch.zeros(1, 3, 256, 256))  # 50.3 MiB
    assert batches_generator_calls(G, torch.zeros(1, 3, 256, 256), torch.bfloat16)  # 25.1 MiB
    assert batches_generator_calls(G, torch.zeros(1, 3, 256, 256, device="meta"))  # not the CPU: always


def test_channels_last_step_is_the_same_arithmetic():
    """In float64, so that the comparison is not lost in float32 rounding: at random initialisation
    the cycle loss's gradient is sensitive enough that any change of convolution algorithm moves
    it by about 1e-3 in float32 (both layouts are that far from the float64 gradient)."""
    config = TrainConfig(img_height=32, img_width=32, n_residual_blocks=1, ngf=16, ndf=16)
    ours, opts, pools, other, _, other_pools = setup(config, torch.float64)
    for net in other.values():
        net.to(memory_format=torch.channels_last)
    other_opts = build_optimizers(other, config)
    real_A, real_B = batch(config, torch.Generator().manual_seed(2), torch.float64)
    got = train_step(ours, opts, pools, real_A, real_B, 10.0, 5.0)
    want = train_step(other, other_opts, other_pools, real_A.contiguous(memory_format=torch.channels_last),
                      real_B.contiguous(memory_format=torch.channels_last), 10.0, 5.0)
    for k in want:
        assert got[k].item() == pytest.approx(want[k].item(), rel=1e-11), k
    assert next(other["G_AB"].parameters()).is_contiguous(memory_format=torch.channels_last)
    for name in NETWORK_NAMES:
        free = gradient_free(ours[name])
        for (key, a), b in zip(ours[name].state_dict().items(), other[name].state_dict().values()):
            assert (a - b).abs().max() <= 1e-8 if key in free else relative(a, b) <= 1e-9, (name, key)


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_mixed_precision_steps_track_float32(amp):
    """Autocast computes the networks in half precision, the losses and weights stay float32;
    float16 goes through a gradient scaler. The first step's losses are the float32 ones to
    half-precision accuracy, and training moves every network."""
    config = TrainConfig(img_height=32, img_width=32, n_residual_blocks=1, ngf=16, ndf=16)
    ours, opts, pools, ref, _, ref_pools = setup(config)
    ref_opts = build_optimizers(ref, config)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if amp is torch.float16 else None
    gen = torch.Generator().manual_seed(2)
    before = {n: [p.detach().clone() for p in ours[n].parameters()] for n in NETWORK_NAMES}
    for step in range(3):
        real_A, real_B = batch(config, gen)
        got = train_step(ours, opts, pools, real_A, real_B, 10.0, 5.0, amp_dtype=amp, scaler=scaler)
        want = train_step(ref, ref_opts, ref_pools, real_A, real_B, 10.0, 5.0)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in got.values())
        if step == 0:
            for k in ("G", "adv", "cycle", "identity", "D"):
                assert got[k].item() == pytest.approx(want[k].item(), rel=0.03), k
    for name in NETWORK_NAMES:
        assert all(p.dtype == torch.float32 for p in ours[name].parameters())
        assert all(not torch.equal(a, b) for a, b in zip(before[name], ours[name].parameters())), name
    if scaler is not None:
        assert 0 < scaler.get_scale() <= 2.0**10


def test_step_flops_counts_a_real_step_without_touching_the_random_state():
    from torch.utils.flop_counter import FlopCounterMode

    config = TrainConfig(img_height=32, img_width=48, n_residual_blocks=2, batch_size=2)
    state = torch.get_rng_state()
    counted = step_flops(config)
    assert torch.equal(state, torch.get_rng_state())
    ours, opts, pools, ref, ref_opts, ref_pools = setup(config, prepare="none")
    fast, fast_opts, fast_pools, *_ = setup(config)
    real_A, real_B = batch(config, torch.Generator().manual_seed(2))
    flops = {}
    for name, run in (("ours", lambda: train_step(ours, opts, pools, real_A, real_B, 10.0, 5.0)),
                      ("fast", lambda: train_step(fast, fast_opts, fast_pools, real_A, real_B, 10.0, 5.0)),
                      ("reference", lambda: reference_step(ref, ref_opts, ref_pools, real_A, real_B))):
        with FlopCounterMode(display=False) as mode:
            run()
        flops[name] = mode.get_total_flops()
    # The step of the networks as built: the reference's convolutions, less the discriminators'
    # weight gradients in the generator update.
    assert counted == flops["ours"]
    assert 0.95 * flops["reference"] < counted < flops["reference"]
    # As cyclegan train prepares them, the upsampling convolutions take 16 multiplications where
    # they took 36 (on the low-resolution grid padded by one: slightly more than 4/9 of them).
    assert 0.75 * counted < flops["fast"] < 0.9 * counted


@pytest.mark.long
def test_compiled_networks_step_as_eager_ones_and_keep_their_state_dict_keys():
    """``--compile`` compiles the networks in place. The ``aot_eager`` backend traces them as the
    default (inductor) does, through the frozen-discriminator and batch-size changes of the step,
    without inductor's minute of C++ compilation."""
    config = TrainConfig(img_height=32, img_width=32, n_residual_blocks=1, ngf=8, ndf=8)
    ours, opts, pools, other, _, other_pools = setup(config)
    keys = {name: list(net.state_dict()) for name, net in ours.items()}
    for net in other.values():
        net.compile(backend="aot_eager")
    other_opts = build_optimizers(other, config)
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        real_A, real_B = batch(config, gen)
        got = train_step(other, other_opts, other_pools, real_A, real_B, 10.0, 5.0)
        want = train_step(ours, opts, pools, real_A, real_B, 10.0, 5.0)
        for k in want:
            assert got[k].item() == pytest.approx(want[k].item(), rel=1e-5), k
    assert {name: list(net.state_dict()) for name, net in other.items()} == keys
