"""The benchmark's measure of a step's memory, the layers swapped in for speed that must compute
the same numbers bit for bit, and the sub-pixel upsampling convolution, the same function with
fewer multiplications."""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from train_step import cpu_step_memory  # noqa: E402

from cyclegan import models, perf  # noqa: E402
from cyclegan.models import NETWORK_NAMES  # noqa: E402
from cyclegan.registry import build_networks  # noqa: E402
from cyclegan.options import TrainConfig  # noqa: E402
from cyclegan.perf import UpsampleConv2d, exact_fast_layers, subpixel_upsample_convs  # noqa: E402
from cyclegan.step import build_optimizers, train_step  # noqa: E402
from cyclegan.utils import ReplayBuffer  # noqa: E402


def test_step_memory_counts_what_a_step_allocates_beyond_what_was_live_before():
    mib = 2**18  # float32 elements in 1 MiB
    state: dict[str, torch.Tensor | None] = {"kept": torch.empty(16 * mib)}

    def step() -> None:
        state["kept"] = None  # frees 16 MiB kept from before the step (as zero_grad frees gradients)
        a = torch.empty(4 * mib)
        b = torch.empty(8 * mib)
        state["kept"] = torch.empty(16 * mib)  # live: -16 + 4 + 8 + 16 = 12 MiB, the peak
        del a, b

    # Without the profiled step before the measured one, the free of the block allocated before
    # profiling would be unknown to the profiler and the peak read as 28.
    assert cpu_step_memory(step) == pytest.approx(12.0, abs=0.01)


def test_exact_fast_layers_keep_the_state_dict_and_the_official_unets_in_place_skips():
    G = models.GeneratorResNet((3, 32, 32), 2)
    D = models.Discriminator((3, 32, 32))
    unet = models.define_G("unet_128", 3, 3, norm="instance")
    before = {id(net): list(net.state_dict()) for net in (G, D, unet)}
    unet_before = copy.deepcopy(unet)
    relus = [m for m in unet.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    for net in (G, D, unet):
        assert exact_fast_layers(net) is net
        assert list(net.state_dict()) == before[id(net)]
    # after each instance norm: out of place (generator: c7s1, d, d, 2 x R, u, u; discriminator: 3)
    assert sum(isinstance(m, nn.ReLU) and not m.inplace for m in G.modules()) == 7
    assert sum(isinstance(m, nn.LeakyReLU) and not m.inplace for m in D.modules()) == 3
    assert next(m for m in D.modules() if isinstance(m, nn.LeakyReLU)).inplace  # the first: after a convolution
    # The U-Net's activations act in place on tensors its skip connections carry: left alone.
    assert relus and all(m.inplace for m in relus)
    x = torch.rand(1, 3, 128, 128)
    assert torch.equal(unet(x), unet_before(x))


@pytest.mark.parametrize("discriminator", ["reference", "basic"])
def test_training_steps_with_the_exact_fast_layers_are_bit_identical(discriminator):
    """Two steps of the float32 training step, from the same weights and data: every parameter of
    all four networks, and every loss, equal to the last bit with and without the swap."""
    config = TrainConfig(img_height=32, img_width=32, n_residual_blocks=2, batch_size=2, netD=discriminator)
    torch.manual_seed(0)
    plain = build_networks(config)
    fast = copy.deepcopy(plain)
    for net in fast.values():
        exact_fast_layers(net)
    assert any(isinstance(m, nn.ReLU) and not m.inplace for m in fast["G_AB"].modules())
    runs = []
    for nets in (plain, fast):
        opts = build_optimizers(nets, config)
        buffers = {k: ReplayBuffer(2, rng=random.Random(7)) for k in "AB"}
        gen = torch.Generator().manual_seed(2)
        losses = []
        for _ in range(2):
            real_A, real_B = (torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
            losses.append(train_step(nets, opts, buffers, real_A, real_B, 10.0, 5.0))
        runs.append(losses)
    for got, want in zip(runs[1], runs[0]):
        assert {k: v.item() for k, v in got.items()} == {k: v.item() for k, v in want.items()}
    for name in NETWORK_NAMES:
        for (key, a), b in zip(fast[name].state_dict().items(), plain[name].state_dict().values()):
            assert torch.equal(a, b), (name, key)


def upsample_then_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.conv2d(nn.Upsample(scale_factor=2)(x), conv.weight, conv.bias, padding=1)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-13), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape, out_channels, bias", [((2, 5, 7, 9), 4, True), ((1, 3, 1, 1), 2, True),
                                                       ((3, 16, 6, 4), 8, False)])
def test_upsample_conv_is_upsampling_then_convolving_in_value_and_every_gradient(dtype, tolerance, shape,
                                                                                 out_channels, bias):
    """The four-phase 2x2 convolutions against ``nn.Upsample`` then the 3x3 convolution: equal to
    float64 rounding (the same function, not an approximation of it), and to float32 rounding."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], out_channels, 3, padding=1, bias=bias).to(dtype)
    with torch.no_grad():
        conv.weight.normal_(generator=gen)
        if bias:
            conv.bias.normal_(generator=gen)
    fast = UpsampleConv2d.sharing(copy.deepcopy(conv))
    x = torch.randn(shape, generator=gen, dtype=dtype)
    grad = torch.randn(shape[0], out_channels, 2 * shape[2], 2 * shape[3], generator=gen, dtype=dtype)
    grad = grad.contiguous(memory_format=torch.channels_last)  # a gradient in another layout is taken too
    results = []
    for layer, run in ((conv, lambda x_: upsample_then_conv(conv, x_)), (fast, fast)):
        x_ = x.clone().requires_grad_(True)
        y = run(x_)
        y.backward(grad)
        results.append([y, x_.grad] + [p.grad for p in layer.parameters()])
    assert results[1][0].shape == results[0][0].shape and results[1][0].is_contiguous()
    for got, want in zip(results[1], results[0]):
        assert ((got - want).norm() / want.norm()).item() <= tolerance


@pytest.mark.parametrize("in_channels, out_channels, size", [(64, 32, 12), (32, 16, 24), (128, 64, 8)])
def test_upsample_conv_in_float32_is_as_close_to_float64_as_upsample_and_conv(in_channels, out_channels, size):
    """Accuracy, not only agreement: against the float64 result, the float32 output and every
    gradient of the sub-pixel layer are at most twice as far as those of the plain layers (here
    they are closer: fewer multiplications, and the summed taps are exact enough). A layer that
    rounded anything to half precision would be hundreds of times further."""
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    x = torch.randn(2, in_channels, size, size * 3 // 2, generator=gen)
    grad = torch.randn(2, out_channels, 2 * size, size * 3, generator=gen)

    def run(layer: nn.Module, forward, dtype: torch.dtype) -> list[torch.Tensor]:
        layer = copy.deepcopy(layer).to(dtype)
        x_ = x.to(dtype).requires_grad_(True)
        y = forward(layer, x_)
        y.backward(grad.to(dtype))
        return [y, x_.grad, layer.weight.grad, layer.bias.grad]

    exact = run(conv, upsample_then_conv, torch.float64)
    plain = run(conv, upsample_then_conv, torch.float32)
    fast = run(UpsampleConv2d.sharing(conv), lambda layer, x_: layer(x_), torch.float32)
    for name, f, p, e in zip(("output", "input grad", "weight grad", "bias grad"), fast, plain, exact):
        fast_error = ((f.double() - e).norm() / e.norm()).item()
        plain_error = ((p.double() - e).norm() / e.norm()).item()
        assert fast_error <= 2 * plain_error + 1e-9, (name, fast_error, plain_error)


def test_upsample_conv_outside_its_fast_path_is_upsample_and_conv_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1)
    fast = copy.deepcopy(conv)
    fast.__class__ = UpsampleConv2d
    x = torch.randn(2, 4, 5, 6, generator=gen).contiguous(memory_format=torch.channels_last)
    assert torch.equal(fast(x), upsample_then_conv(conv, x))


def test_subpixel_swap_takes_only_nearest_2x_upsampling_before_a_plain_3x3_convolution():
    torch.manual_seed(0)
    G = models.GeneratorResNet((3, 32, 32), 2)
    keys, params = list(G.state_dict()), list(G.parameters())
    x = torch.rand(2, 3, 32, 32)
    before = G(x)
    assert subpixel_upsample_convs(G) is G
    assert list(G.state_dict()) == keys
    assert all(a is b for a, b in zip(G.parameters(), params))  # optimizers built before still hold them
    assert sum(type(m) is UpsampleConv2d for m in G.modules()) == 2
    assert not any(isinstance(m, nn.Upsample) for m in G.modules())
    assert ((G(x) - before).norm() / before.norm()).item() < 1e-5  # the same function, to float32 rounding
    # Left alone: the official generator's transposed convolutions, and pairs that are not the pattern.
    official = models.define_G("resnet", 3, 3, n_blocks=2, upsample="transpose")
    others = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(3, 3, 3, padding=0),
                           nn.Upsample(scale_factor=3), nn.Conv2d(3, 3, 3, padding=1),
                           nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(3, 3, 3, padding=1),
                           nn.Upsample(scale_factor=2), nn.Conv2d(3, 3, 3, stride=2, padding=1),
                           nn.Upsample(scale_factor=2), nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    for net in (official, others):
        subpixel_upsample_convs(net)
        assert not any(isinstance(m, UpsampleConv2d) for m in net.modules())
    assert sum(isinstance(m, nn.Upsample) for m in others.modules()) == 5
    pair = subpixel_upsample_convs(nn.Sequential(nn.Upsample(scale_factor=(2, 2)), nn.Conv2d(3, 3, 3, padding=1)))
    assert [type(m) for m in pair] == [nn.Identity, UpsampleConv2d]


def mkl_calls(code: str) -> str:
    """What Intel MKL reports of its calls (MKL_VERBOSE) while a fresh interpreter runs ``code``."""
    import os
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MKL_VERBOSE": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_cpu_float32_peak_is_timed_without_mkl_whose_timed_products_change_later_results():
    # An MKL product of 1024 x 1024 timed under load left MKL computing the step's small products
    # in another order in about one run in five: a run then no longer repeated another bit for
    # bit (the flaky resume test of issue 23). The peak is timed by NumPy's BLAS instead.
    assert "SGEMM" in mkl_calls("import torch; torch.rand(64, 64) @ torch.rand(64, 64)")  # the probe sees MKL
    out = mkl_calls("import torch; from cyclegan.perf import matmul_peak_gflops as peak; "
                    "print('peak', peak(torch.device('cpu'), torch.float32))")
    assert "peak" in out and float(out.split("peak")[-1]) > 0
    assert "SGEMM" not in out and "GEMM" not in out


# ---------------------------------------------------------------------------------------------
# bfloat16 on the CPU: read from the CPU's flags, chosen by --amp auto where the benchmark allows


CPUINFO_X86 = "processor\t: {k}\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n\n"


def test_the_peak_is_timed_once_per_process_for_each_device_and_dtype(monkeypatch):
    timed = []
    monkeypatch.setattr(perf, "_peaks", {})
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda *args: timed.append(args) or 100.0 + len(timed))
    cpu = torch.device("cpu")
    assert perf.matmul_peak_gflops(cpu) == perf.matmul_peak_gflops(cpu) == 101.0
    assert perf.matmul_peak_gflops(cpu, torch.bfloat16) == 102.0
    assert perf.matmul_peak_gflops(cpu, sizes=(64,)) == 103.0
    assert len(timed) == 3


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse2 avx2 avx512f avx512bw amx_tile amx_bf16 amx_int8 avx512_bf16", "AMX"),
    ("fpu sse2 avx2 avx512f avx512bw avx512_bf16", "AVX-512 BF16"),  # Cooper Lake, Zen 4
    ("fpu sse2 avx2 avx512f avx512bw avx512_vnni", None),  # Ice Lake: AVX-512, no bf16
    ("fpu sse2 avx2 fma", None),
])
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    from cyclegan.perf import cpu_native_bf16

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(CPUINFO_X86.format(k=k, flags=flags) for k in range(2)))
    assert cpu_native_bf16(cpuinfo) == expected


def test_native_bfloat16_on_arm_and_where_nothing_can_be_read(tmp_path):
    from cyclegan.perf import cpu_native_bf16

    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha2 crc32 atomics bf16 i8mm\n")
    assert cpu_native_bf16(arm) == "Arm BF16"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n")
    assert cpu_native_bf16(arm) is None
    assert cpu_native_bf16(tmp_path / "missing") is None  # not Linux: no flags, no guess


@pytest.mark.parametrize("native", ["AMX", None])
@pytest.mark.parametrize("allowed", [True, False])
def test_amp_auto_on_the_cpu_follows_the_capability_and_the_benchmark(monkeypatch, native, allowed):
    """--amp auto takes bf16 only on a CPU with native bf16 and only where the quality benchmark
    allowed it (perf.AUTO_BF16_ON_CPU); an explicit --amp is what it says either way."""
    monkeypatch.setattr(perf, "cpu_native_bf16", lambda cpuinfo=perf.CPUINFO: native)
    monkeypatch.setattr(perf, "AUTO_BF16_ON_CPU", allowed)
    cpu = torch.device("cpu")
    auto = perf.resolve_speed("auto", "auto", False, cpu)
    assert auto.amp_dtype is (torch.bfloat16 if native and allowed else None)
    assert ("native bfloat16 (AMX)" in auto.describe()) == bool(native)  # the log says what auto went by
    explicit = perf.resolve_speed("bf16", "auto", False, cpu)
    assert explicit.amp_dtype is torch.bfloat16
    # asked for where it is emulated (many times slower): still done, with a warning that says so
    assert ("emulated" in explicit.warning and "--amp off" in explicit.warning) == (not native)
    assert perf.resolve_speed("off", "auto", False, cpu).amp_dtype is None
    assert not auto.warning


@pytest.mark.parametrize("native", ["AMX", None])
def test_amp_auto_keeps_the_precision_a_resumed_run_started_with_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(perf, "cpu_native_bf16", lambda cpuinfo=perf.CPUINFO: native)
    monkeypatch.setattr(perf, "AUTO_BF16_ON_CPU", True)
    cpu = torch.device("cpu")
    began_off = perf.resolve_speed("auto", "auto", False, cpu, started="off")
    assert began_off.amp_dtype is None
    assert ("as the run started" in began_off.why) == (native is not None)  # else auto chose float32 anyway
    # a new run (nothing started), an explicit --amp, and a precision auto never picks: as before
    assert perf.resolve_speed("auto", "auto", False, cpu).amp_dtype is (torch.bfloat16 if native else None)
    assert perf.resolve_speed("off", "auto", False, cpu, started="bf16").amp_dtype is None
    assert perf.resolve_speed("auto", "auto", False, cpu, started="fp16").amp_dtype is (
        torch.bfloat16 if native else None)
    began_bf16 = perf.resolve_speed("auto", "auto", False, cpu, started="bf16")
    if native:
        assert began_bf16.amp_dtype is torch.bfloat16 and began_bf16.why == "auto: native bfloat16 (AMX)"
        monkeypatch.setattr(perf, "AUTO_BF16_ON_CPU", False)  # a version whose auto is float32 keeps it too
        kept = perf.resolve_speed("auto", "auto", False, cpu, started="bf16")
        assert kept.amp_dtype is torch.bfloat16 and "as the run started" in kept.why and "--amp off" in kept.why
    else:  # not emulated many times slower: float32, and the log says why
        assert began_bf16.amp_dtype is None and "the run started in bfloat16" in began_bf16.why


def stock_pads(net: nn.Module) -> nn.Module:
    """``net`` with every padding layer of ours swapped back for torch's ``nn.ReflectionPad2d``."""
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, models.ReflectionPad2d):
                setattr(parent, name, nn.ReflectionPad2d(child.padding))
    return net


@pytest.mark.parametrize("generator", ["resnet_reference", "resnet_official", "resnet_cut"])
def test_padding_stays_in_bfloat16_under_cpu_autocast_with_the_same_numbers(generator):
    """CPU autocast runs torch's reflection padding in float32: every padded bf16 activation
    copied up and back down. Our pads keep bf16 there (no copy), give the very same forward values
    and the same input gradient to bf16 rounding, and are torch's own outside autocast."""
    torch.manual_seed(0)
    flavour = generator.partition("_")[2]
    if flavour == "reference":
        net = models.GeneratorResNet((3, 16, 16), 1)
    else:
        net = models.ResnetGenerator(3, 3, ngf=8, n_blocks=1, antialias=flavour == "cut",
                                     antialias_up=flavour == "cut")
    stock = stock_pads(copy.deepcopy(net))
    x = torch.randn(2, 3, 16, 16)
    seen: list[tuple[torch.dtype, torch.dtype]] = []  # (in, out) of every pad
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype))) for m in net.modules()
             if isinstance(m, models.ReflectionPad2d)]
    outputs, grads = [], []
    for candidate in (net, stock):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = candidate(xi)
        y.float().square().sum().backward()
        outputs.append(y)
        grads.append(xi.grad)
    for h in hooks:
        h.remove()
    # the image comes in float32 and its pad keeps it so; every later pad takes and gives bf16
    assert seen[0] == (torch.float32, torch.float32) and set(seen[1:]) == {(torch.bfloat16, torch.bfloat16)}
    assert torch.equal(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=2e-2 * grads[1].abs().max().item())
    with torch.no_grad():  # no autocast: exactly torch's module
        assert torch.equal(net(x), stock(x))
    padded = models.pad(x.bfloat16(), (1, 1, 1, 1), "replicate")  # bf16 in, bf16 out, anywhere
    assert padded.dtype is torch.bfloat16 and torch.equal(padded, nn.functional.pad(x.bfloat16(), (1, 1, 1, 1),
                                                                                    mode="replicate"))


def test_the_step_profile_sorts_operators_by_kind_and_counts_conversions():
    import profile_step

    conv = nn.Conv2d(3, 4, 3)
    opt = torch.optim.Adam(conv.parameters())
    x = torch.rand(1, 3, 16, 16)

    def step(cast: bool) -> None:
        opt.zero_grad()
        y = nn.functional.instance_norm(conv(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")))
        (y.to(torch.float64) if cast else y).square().mean().backward()  # a conversion forward, one back
        opt.step()

    step(True)
    seconds, with_cast = profile_step.breakdown(lambda: step(True))
    _, without = profile_step.breakdown(lambda: step(False))
    assert (with_cast, without) == (2, 0)  # not Adam's step counts or the scalars of arithmetic
    for kind in ("convolution forward", "convolution backward", "instance norm", "padding", "optimizer",
                 "copies and casts"):
        assert seconds[kind] > 0, kind
    # The kernels a bf16 step calls where oneDNN has them and where it has not (a CPU without bf16).
    assert profile_step.kind_of("aten::mkldnn_convolution") == "convolution forward"
    assert profile_step.kind_of("aten::_slow_conv2d_forward") == "convolution forward"
    assert profile_step.kind_of("aten::_slow_conv2d_backward") == "convolution backward"
    assert profile_step.kind_of("aten::add") == profile_step.OTHER


def test_the_step_profile_runs_the_step_in_each_layout_asked_for():
    import profile_step

    rows = profile_step.measure(32, 1, ["ours"], ["contiguous", "channels_last"], steps=1)
    assert [profile_step.label(r["kind"], r["layout"]) for r in rows] == ["float32", "float32, channels_last"]
    contiguous, channels_last = rows
    assert contiguous["casts"] == 0  # a float32 step in the default layout converts no tensor
    assert channels_last["casts"] > 0  # channels_last weights: torch 2.13 converts their gradients to it
    for row in rows:
        assert row["step_s"] > 0 and row["flops"] > 0 and sum(row["seconds"].values()) > 0
