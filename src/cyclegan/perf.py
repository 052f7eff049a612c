"""How fast a training step runs: the speed settings of a run, the faster layers that compute
the same function, and the measures of its speed.

- ``resolve_speed``: what ``--amp``, ``--channels_last`` and ``--compile`` mean on the device
  found (``auto`` picks what is fastest and safe there), and the CUDA backend switches (TF32,
  cudnn.benchmark).
- ``prepare_networks``: moves the networks to the device in the layout the settings ask for,
  swaps in faster layers that compute the same function (``subpixel_upsample_convs``: equal to
  rounding; ``exact_fast_layers``: bit for bit), and compiles them if asked.
- ``matmul_peak_gflops``: the machine's measured matrix-multiply rate, the yardstick of
  ``peak_fraction`` (as nanoGPT's MFU, but against a measured peak, not a datasheet's).
- ``step_flops``: the floating-point operations of one training step for a config, counted with
  ``torch.utils.flop_counter`` on the meta device (nothing is computed, no random state is used).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cyclegan.errors import CycleGANError
from cyclegan.memory import recompute_activations, remembered, step_on_meta

__all__ = ["Speed", "cpu_native_bf16", "resolve_speed", "prepare_networks", "exact_fast_layers",
           "subpixel_upsample_convs", "UpsampleConv2d", "matmul_peak_gflops", "step_flops"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


@dataclass(frozen=True)
class Speed:
    """The resolved speed settings of a run."""

    amp_dtype: torch.dtype | None
    channels_last: bool
    compile: bool
    why: str = ""  # what --amp auto went by, said in the log
    warning: str = ""  # a choice that will cost the run, said in the log as a warning

    @property
    def amp_name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[self.amp_dtype]

    def describe(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return f"amp {self.amp_name}{why}, channels_last {'on' if self.channels_last else 'off'}, " \
               f"compile {'on' if self.compile else 'off'}"


CPUINFO = Path("/proc/cpuinfo")
# Whether --amp auto picks bfloat16 on a CPU with native bfloat16 arithmetic: yes, since the
# quality benchmark that can tell (benchmarks/quality.py --preset tell, 5 seeds an arm) showed
# ours-bf16 within the interval of ours-float32, level to the hundredth of a dB (docs/benchmarks.md,
# "A quality benchmark that can tell"). Set False, auto is float32 on every CPU.
AUTO_BF16_ON_CPU = True


def cpu_native_bf16(cpuinfo: Path = CPUINFO) -> str | None:
    """The feature that gives this CPU native bfloat16 arithmetic, read from its flags (never
    guessed by timing): ``AMX`` (Intel Sapphire Rapids and later), ``AVX-512 BF16`` (Intel Cooper
    Lake, AMD Zen 4 and later), ``Arm BF16`` (Armv8.6 ``bf16``); None without one, or where the
    flags cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    if "bf16" in flags:
        return "Arm BF16"
    return None


def resolve_speed(amp: str, channels_last: str, compile: bool, device: torch.device,
                  started: str | None = None) -> Speed:
    """``auto`` on CUDA: bfloat16 autocast where the GPU has it (else float32) and channels_last;
    on the CPU: bfloat16 autocast where the CPU has native bfloat16 (``cpu_native_bf16``) and
    ``AUTO_BF16_ON_CPU`` says the quality benchmark allows it, else float32, the exact reference
    arithmetic; the default layout.

    ``started``: for a resumed run, the precision ``auto`` chose when it started (``amp_used`` in
    its config). ``auto`` keeps it where this device has it natively, so that a run resumed on
    another machine, or by a version whose ``auto`` chooses otherwise, goes on as it began;
    ``--amp`` given on resume switches.

    On CUDA this also turns on TF32 matrix multiplies and ``cudnn.benchmark``."""
    cuda = device.type == "cuda"
    why = warning = ""
    if amp == "auto":
        native = "" if cuda else cpu_native_bf16()
        has_bf16 = torch.cuda.is_bf16_supported() if cuda else native is not None
        if cuda:
            dtype = torch.bfloat16 if has_bf16 else None
        else:
            dtype = torch.bfloat16 if AUTO_BF16_ON_CPU and native else None
            if dtype:
                why = f"auto: native bfloat16 ({native})"
            else:
                why = f"auto: float32, though this CPU has native bfloat16 ({native}): --amp bf16 uses it" if native \
                    else "auto: no native bfloat16 on this CPU"
        chosen = "bf16" if dtype else "off"
        if started in ("off", "bf16") and started != chosen:
            if started == "off" or has_bf16:
                dtype = AMP_DTYPES[started]
                why = f"auto: {'float32' if started == 'off' else 'bfloat16'}, as the run started (its amp_used; " \
                      f"--amp {chosen} switches)"
            else:
                why = f"{why or 'auto: ' + chosen}; the run started in bfloat16, which this {device.type.upper()} " \
                      "does not compute natively"
    elif amp in AMP_DTYPES:
        dtype = AMP_DTYPES[amp]
        if dtype is torch.bfloat16 and not cuda and cpu_native_bf16() is None:
            warning = ("--amp bf16: this CPU has no native bfloat16 (no AMX, AVX-512 BF16 or Arm BF16 in its flags), "
                       "so bf16 is emulated, many times slower than float32: use --amp off (or auto)")
        if dtype is torch.bfloat16 and cuda and not torch.cuda.is_bf16_supported():
            raise CycleGANError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use --amp fp16 "
                                "or --amp off")
    else:
        raise CycleGANError(f"--amp {amp}: use auto, bf16, fp16 or off")
    if channels_last not in ("auto", "on", "off"):
        raise CycleGANError(f"--channels_last {channels_last}: use auto, on or off")
    layout = cuda if channels_last == "auto" else channels_last == "on"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return Speed(dtype, layout, compile, why, warning)


def exact_fast_layers(net: nn.Module) -> nn.Module:
    """Swap layers of ``net`` for ones that compute the same numbers, bit for bit, with less
    work; in place, and returns ``net``. There are no parameters in them: the state dict, its keys
    and everything saved stay as they are.

    An in-place ReLU or LeakyReLU right after an ``InstanceNorm2d`` in a ``Sequential`` becomes
    out of place. The instance norm's output is a view, and an in-place operation on a view makes
    autograd copy that gradient twice in backward (``CopySlices``); its input has no other user,
    so the result is the same. Other in-place activations are left alone: in the official U-Net,
    for example, they modify tensors that skip connections also carry."""
    for parent in net.modules():
        if isinstance(parent, nn.Sequential):
            previous = None
            for child in parent:
                if (isinstance(child, (nn.ReLU, nn.LeakyReLU)) and child.inplace
                        and isinstance(previous, nn.InstanceNorm2d)):
                    child.inplace = False
                previous = child
    return net


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The four 2x2 kernels that a 3x3 kernel (zero padding 1) becomes after a nearest 2x
    upsampling, one per output phase (row parity a, column parity b), in the order 00, 01, 10,
    11 along the output channels. Output row 2i takes input rows i-1 (kernel row 0) and i (rows
    1 + 2); row 2i+1 takes rows i (rows 0 + 1) and i+1 (row 2); columns alike."""
    w0, w1, w2 = weight.unbind(2)
    rows = (torch.stack([w0, w1 + w2], 2), torch.stack([w0 + w1, w2], 2))
    kernels = []
    for r in rows:
        c0, c1, c2 = r.unbind(3)
        kernels += [torch.stack([c0, c1 + c2], 3), torch.stack([c0 + c1, c2], 3)]
    return torch.cat(kernels)


class _Interleave(torch.autograd.Function):
    """The four phase outputs, each (h+1) x (w+1) on the padded low-resolution grid, woven into
    one 2h x 2w image: phase (a, b) gives the output pixels (2i+a, 2j+b) from its (i+a, j+b)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, c = z.size(0), z.size(1) // 4
        phases = z.view(n, 2, 2, c, h + 1, w + 1)
        out = z.new_empty(n, c, 2 * h, 2 * w)
        woven = out.view(n, c, h, 2, w, 2)
        for a in (0, 1):
            for b in (0, 1):
                woven[:, :, :, a, :, b].copy_(phases[:, a, b, :, a:a + h, b:b + w])
        ctx.hw = (h, w)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        h, w = ctx.hw
        grad = grad.contiguous()
        n, c = grad.size(0), grad.size(1)
        phases = grad.new_zeros(n, 2, 2, c, h + 1, w + 1)
        woven = grad.view(n, c, h, 2, w, 2)
        for a in (0, 1):
            for b in (0, 1):
                phases[:, a, b, :, a:a + h, b:b + w].copy_(woven[:, :, :, a, :, b])
        return phases.view(n, 4 * c, h + 1, w + 1), None, None


class UpsampleConv2d(nn.Conv2d):
    """A nearest 2x upsampling followed by this 3x3 convolution (stride 1, zero padding 1),
    computed on the CPU as four 2x2 convolutions of the low-resolution input, one per output
    phase, in one call: 16 multiplications per input channel for every four output pixels
    instead of 36. The same function of the same parameters, and the same gradients, in exact
    arithmetic; in float32 the sums are taken in another order (as a GPU library's Winograd or
    FFT convolution takes them), so results agree to rounding, not bit for bit.

    Elsewhere (a GPU, another layout, ``torch.compile``) it upsamples and convolves as
    ``nn.Upsample`` and ``nn.Conv2d`` do. Its parameters are the convolution's own."""

    @classmethod
    def sharing(cls, conv: nn.Conv2d) -> "UpsampleConv2d":
        """A layer over ``conv``'s parameters (the same objects: optimizers built before still
        update them), in its train or eval mode."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        layer.weight = conv.weight
        layer.bias = conv.bias
        return layer.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous()
                and not torch.jit.is_scripting() and not torch.compiler.is_compiling()):
            h, w = x.shape[-2:]
            bias = None if self.bias is None else self.bias.repeat(4)
            z = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1)), _phase_kernels(self.weight), bias)
            return _Interleave.apply(z, h, w)
        return super().forward(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


def _nearest_2x(m: nn.Module) -> bool:
    if type(m) is not nn.Upsample or m.mode != "nearest" or m.size is not None or m.recompute_scale_factor:
        return False
    factors = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor,)
    return all(f == 2 for f in factors)


def _plain_3x3_conv(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


def subpixel_upsample_convs(net: nn.Module) -> nn.Module:
    """In every ``Sequential`` of ``net``, a nearest 2x upsampling directly followed by a plain
    3x3 convolution (stride 1, zero padding 1) becomes ``nn.Identity`` and ``UpsampleConv2d``: the
    same function with 2.25x fewer multiplications, equal to rounding (see ``UpsampleConv2d``).
    In place; returns ``net``. The new layer takes the convolution's place under its name and over
    its parameters (the same objects), so the state dict, its keys and optimizers built before are
    unchanged; hooks registered on the old convolution module are not carried over.

    The reference generator's two upsampling layers are such pairs (docs/benchmarks.md has what
    they gain)."""
    for parent in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        children = list(parent.named_children())
        for (first, up), (second, conv) in zip(children, children[1:]):
            if _nearest_2x(up) and _plain_3x3_conv(conv):
                setattr(parent, first, nn.Identity())
                setattr(parent, second, UpsampleConv2d.sharing(conv))
    return net


def prepare_networks(nets: dict[str, torch.nn.Module], speed: Speed, device: torch.device,
                     recompute: str = "off") -> None:
    """Move ``nets`` to ``device`` in the layout of ``speed``, in place, with the layers of
    ``subpixel_upsample_convs`` and ``exact_fast_layers`` and the ``--activation_checkpointing``
    mode (``memory.recompute_activations``); compile them if asked (in place too: the modules,
    parameters and state-dict keys stay as they are). Build the optimizers before or after: the
    parameters stay the same objects."""
    for net in nets.values():
        subpixel_upsample_convs(net)
        exact_fast_layers(net)
        recompute_activations(net, recompute)
        net.to(device, memory_format=torch.channels_last if speed.channels_last else torch.contiguous_format)
    if speed.compile:
        for net in nets.values():
            net.compile()


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32,
                       sizes: tuple[int, ...] | None = None, seconds: float = 0.1) -> float:
    """The machine's matrix-multiply rate on ``device`` in ``dtype``, in GFLOP/s: the best over
    square ``sizes`` (by default 1024 on the CPU, 4096 and 8192 on a GPU) of the median rate,
    each size timed for about ``seconds``. (float16 on a CPU, which emulates it at about
    1 GFLOP/s, is timed at 256.) The benchmarks pass more sizes and time.

    float32 on the CPU is timed with NumPy's BLAS, not torch's: torch multiplies float32
    matrices on the CPU with Intel MKL, and an MKL product of this size timed while other
    processes load the machine leaves MKL computing later, small products of the same process
    in another order (seen in about one run in five under load). A training run that measured
    its peak that way would not repeat another run bit for bit. bfloat16 and float16 go through
    oneDNN, which keeps no such state, and a GPU through its own libraries.

    Measured once per process for each set of arguments: the rate is the machine's, and a process
    that starts run after run need not time it again (``measure_matmul_peak`` does)."""
    key = (str(device), dtype, sizes, seconds)
    if key not in _peaks:
        _peaks[key] = measure_matmul_peak(device, dtype, sizes, seconds)
    return _peaks[key]


_peaks: dict[tuple[Any, ...], float] = {}


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32,
                        sizes: tuple[int, ...] | None = None, seconds: float = 0.1) -> float:
    """``matmul_peak_gflops``, timed now (the benchmarks time it before and after their runs)."""
    if sizes is None:
        if device.type == "cuda":
            sizes = (4096, 8192)
        else:
            sizes = (256,) if dtype is torch.float16 else (1024,)
    best = 0.0
    for n in sizes:
        product = _numpy_product(n) if device.type == "cpu" and dtype is torch.float32 else \
            _torch_product(n, device, dtype)
        for _ in range(2):
            product()
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
            t = time.perf_counter()
            product()
            times.append(time.perf_counter() - t)
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
    return best


def _numpy_product(n: int) -> Callable[[], None]:
    """One float32 ``n`` x ``n`` matrix product by NumPy's BLAS, as a call."""
    import numpy as np

    rng = np.random.default_rng(0)  # the run's random state stays untouched
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)

    def product() -> None:
        np.matmul(a, b)

    return product


def _torch_product(n: int, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    """One ``dtype`` ``n`` x ``n`` matrix product by torch on ``device``, finished, as a call."""
    gen = torch.Generator(device=device).manual_seed(0)  # the run's random state stays untouched
    a = torch.rand(n, n, device=device, generator=gen).to(dtype)
    b = torch.rand(n, n, device=device, generator=gen).to(dtype)

    def product() -> None:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return product


def step_flops(config: Any, batch_size: int | None = None) -> int:
    """FLOPs of one training step of ``config`` (forward and backward of every network call;
    the optimizer's element-wise work is not counted), from shapes alone on the meta device.
    The WGAN-GP penalty's extra discriminator passes are not counted (the flop counter cannot
    follow ``autograd.grad``), so for ``wgangp`` this is a lower bound."""
    from torch.utils.flop_counter import FlopCounterMode

    def count() -> int:
        counter = FlopCounterMode(display=False)
        step_on_meta(config, batch_size, around=lambda: counter)
        return int(counter.get_total_flops())

    return remembered("step flops", config, count, batch_size or config.batch_size)
