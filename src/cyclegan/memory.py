"""What a training step keeps in memory, and how to keep less: recomputing the generators'
activations in backward (the flag keeps the common name, ``--activation_checkpointing``; the code
says *recompute*, so that it is never confused with checkpoint files: ``recompute_activations``,
``RecomputedSequential``, ``resolve_recompute``), the estimate of a step's activation memory,
and the advice when a GPU runs out.

``--activation_checkpointing``:

- ``off``: every activation is kept for the backward pass (the default);
- ``blocks``: the activations inside each residual block (each U-Net level) are recomputed in
  the backward pass instead of kept;
- ``full``: the generators keep only the tensors between a few segments (the layers before the
  residual blocks, groups of blocks, the layers after them) and recompute the rest, one segment
  at a time;
- ``auto``: ``full`` where the step's estimated activation memory would not fit the device's
  free memory (CUDA) or available memory (CPU), else ``off``.

Recomputation runs the same layers on the same inputs with the random state of the first pass
(``torch.utils.checkpoint``, non-reentrant, ``preserve_rng_state``), so a step computes the same
numbers: dropout draws the same masks, and the step is bit-identical on the CPU (tested). The
swap keeps every module and parameter (state dicts and optimizers are unchanged). The
discriminators are left as they are: their activations are a small part of a step's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cyclegan.errors import CycleGANError
from cyclegan.models import GeneratorResNet, ResidualBlock, ResnetBlock, ResnetGenerator, UnetSkipConnectionBlock
from cyclegan.options import TrainConfig
from cyclegan.registry import build_networks, get_model
from cyclegan.runtime import available_bytes

__all__ = ["RECOMPUTE_MODES", "RecomputedSequential", "recompute_activations", "saved_activation_bytes",
           "step_on_meta",
           "weight_bytes", "check_fits", "resolve_recompute", "memory_advice", "out_of_memory_advice"]

log = logging.getLogger("cyclegan.train")

RECOMPUTE_MODES = ("off", "blocks", "full", "auto")
BLOCKS = (ResidualBlock, ResnetBlock)

Segment = tuple[int, int, bool]  # children [start, end), recomputed in backward or not


def _run(children: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for child in children:
        x = child(x)
    return x


class _Segment:
    """One checkpointed segment's function: the first call (the forward) runs it as it is; a
    call after that (backward's recomputation) runs it with its batch norms' running statistics
    held, so that recomputing a segment does not count its batch twice."""

    def __init__(self, children: Sequence[nn.Module]) -> None:
        self.children = list(children)
        self.norms = [m for child in self.children for m in child.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.recomputing = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.recomputing or not self.norms:
            self.recomputing = True
            return _run(self.children, x)
        held = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in self.norms]
        try:
            return _run(self.children, x)
        finally:
            for m, mean, var, count in held:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class RecomputedSequential(nn.Sequential):
    """An ``nn.Sequential`` over the same children that runs them in segments, the checkpointed
    ones through ``torch.utils.checkpoint`` (while gradients are being recorded; otherwise, as
    in sampling and inference, it runs like a plain Sequential). Its children keep their names,
    so the state dict is the Sequential's."""

    def __init__(self, children: Sequence[nn.Module], segments: Sequence[Segment]) -> None:
        super().__init__(*children)
        covered = [i for start, end, _ in segments for i in range(start, end)]
        if covered != list(range(len(children))):
            raise ValueError(f"segments {segments} do not cover the {len(children)} children in order")
        self.segments = list(segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        children = list(self)
        for start, end, recompute in self.segments:
            part = children[start:end]
            if recompute and torch.is_grad_enabled():
                x = checkpoint(_Segment(part), x, use_reentrant=False, preserve_rng_state=True)
            else:
                x = _run(part, x)
        return x


def _resnet_segments(children: Sequence[nn.Module], mode: str) -> list[Segment]:
    """``blocks``: each residual block recomputed alone, the other layers kept. ``full``:
    everything recomputed, in segments that keep few tensors between them: the layers before
    the blocks, the blocks in groups of about the square root of their number, the layers
    after them. (What a segment keeps is its output; while it is recomputed in backward, its
    inside, one segment at a time: coarse segments keep the least.)"""
    blocks = [i for i, child in enumerate(children) if isinstance(child, BLOCKS)]
    if mode == "blocks":
        segments: list[Segment] = []
        start = 0
        for i in blocks:
            if start < i:
                segments.append((start, i, False))
            segments.append((i, i + 1, True))
            start = i + 1
        if start < len(children):
            segments.append((start, len(children), False))
        return segments
    if not blocks:
        return [(0, len(children), True)]
    first, last = blocks[0], blocks[-1] + 1
    group = max(1, math.isqrt(len(blocks) - 1) + 1)  # ceil(sqrt(n))
    cuts = [0, first, *range(first + group, last, group), last, len(children)]
    return [(start, end, True) for start, end in zip(cuts, cuts[1:]) if start < end]


def _unet_segments(children: Sequence[nn.Module]) -> list[Segment]:
    """A U-Net level recomputed as a whole, except a leading in-place activation: it rewrites
    the level's input, which the skip connection carries, so it must run once, outside."""
    first = children[0]
    if isinstance(first, (nn.ReLU, nn.LeakyReLU)) and first.inplace:
        return [(0, 1, False), (1, len(children), True)]
    return [(0, len(children), True)]


def recompute_activations(net: nn.Module, mode: str) -> nn.Module:
    """Make ``net`` recompute activations in backward as ``mode`` says (``off``, ``blocks`` or
    ``full``), in place; returns ``net``. Generators only: anything else is left as it is."""
    if mode not in ("off", "blocks", "full"):
        raise ValueError(f"activation checkpointing mode {mode!r}: use off, blocks or full")
    if mode == "off":
        return net
    for module in list(net.modules()):
        if isinstance(module, (GeneratorResNet, ResnetGenerator)) and type(module.model) is nn.Sequential:
            children = list(module.model)
            module.model = RecomputedSequential(children, _resnet_segments(children, mode))
        elif isinstance(module, UnetSkipConnectionBlock) and type(module.model) is nn.Sequential:
            children = list(module.model)
            module.model = RecomputedSequential(children, _unet_segments(children))
    return net


# What a pass on the meta device reads off a config depends only on the settings that shape the
# networks and the step. These (where the data and the run live, how long it runs, how often it
# logs, saves and scores) change none of it: configs that differ only in them share the figures.
_NOT_SHAPING = frozenset({
    "dataroot", "output", "dataset_name", "seed", "overwrite", "resume", "epoch", "n_epochs", "decay_epoch", "n_cpu",
    "sample_interval", "checkpoint_interval", "keep_checkpoints", "save_every_steps", "max_steps", "logger",
    "log_interval", "eval_every", "eval_every_steps", "keep_best", "early_stop",
})
_figures: dict[tuple[Any, ...], int] = {}


def remembered(what: str, config: TrainConfig, compute: Callable[[], int], *details: Any) -> int:
    """``compute()``, a figure read off ``config`` on the meta device, computed once per process
    for each ``what``, ``details`` and the settings of ``config`` that shape a step. A pass runs a
    whole step op by op in Python (docs/benchmarks.md, "The test suite", has its cost); a run asks
    for several figures of one config (its memory check, ``--activation_checkpointing auto``, the
    FLOPs of its speed line), and a process that starts runs one after another (tests, a notebook)
    asks again for each."""
    shaping = {k: v for k, v in config.to_json().items() if k not in _NOT_SHAPING}
    key = (what, json.dumps(shaping, sort_keys=True, default=str), *details)
    if key not in _figures:
        _figures[key] = compute()
    return _figures[key]


class _NoOptimizer:
    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self) -> None:
        pass


def saved_activation_bytes(config: TrainConfig, mode: str = "off", batch_size: int | None = None) -> int:
    """The most bytes of activations a step of ``config`` keeps for backward at once (tensors
    saved by autograd, each counted once while any node holds it; weights and input images left
    out), traced on the meta device: nothing is computed or allocated and no random state is
    used. A lower bound of the step's peak, which adds the weights, the gradients, the optimizer
    state and short-lived temporaries."""
    n = batch_size or config.batch_size
    return remembered("saved activation bytes", config, lambda: _saved_activation_bytes(config, mode, n), mode, n)


def _saved_activation_bytes(config: TrainConfig, mode: str, n: int) -> int:
    live = peak = 0
    # A tensor saved by several nodes is held once. Each held tensor is kept referenced until its
    # last holder lets it go, so that no other tensor can take its id meanwhile (ids are
    # addresses: a freed one comes back, and would make the count depend on the allocator).
    holders: dict[int, tuple[torch.Tensor, int]] = {}

    def pack(t: torch.Tensor) -> Any:
        nonlocal live, peak
        if t.is_leaf:  # weights and input images: held anyway, not activations
            return t
        _, count = holders.get(id(t), (t, 0))
        if count == 0:
            live += t.numel() * t.element_size()
            peak = max(peak, live)
        holders[id(t)] = (t, count + 1)
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        nonlocal live
        if t.is_leaf:
            return t
        _, count = holders.pop(id(t))
        if count > 1:
            holders[id(t)] = (t, count - 1)
        else:
            live -= t.numel() * t.element_size()
        return t

    step_on_meta(config, n, mode, around=lambda: torch.autograd.graph.saved_tensors_hooks(pack, unpack))
    return peak


def step_on_meta(config: TrainConfig, batch_size: int | None = None, mode: str = "off",
                 around: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext) -> None:
    """One training step of ``config`` on the meta device, for what can be read off its shapes
    (its memory here, its FLOPs in ``perf.step_flops``): the networks built with the
    ``--activation_checkpointing`` ``mode``, no optimizer updates, no replay buffers, the
    WGAN-GP penalty left out (its ``autograd.grad`` cannot be traced this way); ``around()`` is
    entered around the step alone. Nothing is computed and no random state is used."""
    n = batch_size or config.batch_size
    model = get_model(config.model)
    stand_in = dataclasses.replace(config, gan_mode="lsgan") if config.gan_mode == "wgangp" else config
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        nets = model.build_networks(config)
        for net in nets.values():
            recompute_activations(net, mode)
        real_A = torch.zeros(n, config.channels_A, config.img_height, config.img_width)
        real_B = torch.zeros(n, config.channels_B, config.img_height, config.img_width)
        optimizers: Any = {k: _NoOptimizer() for k in ("G", "D_A", "D_B", "F")}
        with around():
            model.step(stand_in, nets, optimizers, {"A": None, "B": None}, real_A, real_B)


def human_bytes(n: float) -> str:
    """``n`` bytes as MiB below a GiB, else GiB."""
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


def weight_bytes(config: TrainConfig) -> int:
    """The bytes of the run's weights, their gradients and Adam's two moments (four float32
    copies of every parameter), counted on the meta device."""

    def count() -> int:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            nets = build_networks(config)
        return 4 * 4 * sum(p.numel() for net in nets.values() for p in net.parameters())

    return remembered("weight bytes", config, count)


def check_fits(config: TrainConfig, device: torch.device, mode: str) -> None:
    """Refuse, before anything is allocated, a run whose weights and one step's activations
    (with the ``--activation_checkpointing`` ``mode``) exceed the device's free memory: a lower
    bound of what it needs, so nothing that could fit is refused."""
    need = weight_bytes(config) + saved_activation_bytes(config, mode)
    have = available_bytes(device)
    if need > have:
        raise CycleGANError(
            f"a training step at {config.img_height}x{config.img_width}, batch {config.batch_size}, --ngf {config.ngf} "
            f"--ndf {config.ndf}, --n_residual_blocks {config.n_residual_blocks} needs at least {human_bytes(need)}; "
            f"{device} has {human_bytes(have)} free: {memory_advice(config, mode, have)}"
        )


def resolve_recompute(config: TrainConfig, device: torch.device) -> str:
    """The mode a run uses: ``auto`` becomes ``full`` when the plain step's estimated activation
    memory (with a margin for everything else a step holds) would not fit, else ``off``."""
    mode = config.activation_checkpointing
    if mode != "auto":
        return mode
    need = int(saved_activation_bytes(config, "off") * 1.5)
    have = available_bytes(device)
    if need <= have:
        log.info("activation checkpointing off: a step needs about %.1f GiB, %.1f GiB are free", need / 2**30,
                 have / 2**30)
        return "off"
    log.info("activation checkpointing full: a step would need about %.1f GiB without it, %.1f GiB are free "
             "(about %.1f GiB with it)", need / 2**30, have / 2**30,
             saved_activation_bytes(config, "full") * 1.5 / 2**30)
    return "full"


def memory_advice(config: TrainConfig, mode: str, have: int) -> str:
    """What to change so that a step fits in ``have`` bytes: "try A, or B"."""
    if weight_bytes(config) > have / 2:  # the weights alone: nothing about activations helps
        return "try smaller networks (--ngf, --ndf, --n_residual_blocks)"
    advice = []
    if mode != "full":
        need = saved_activation_bytes(config, "full") * 1.5
        advice.append(f"--activation_checkpointing full (about {human_bytes(need)} of activations)")
    side = max(config.img_height, config.img_width)
    while side > 64 and saved_activation_bytes(
            TrainConfig(**{**config.to_json(), "img_height": side, "img_width": side}), mode) * 1.5 > have:
        side = side // 2 // 16 * 16  # the sizes --img_height takes: multiples of 16
    if side < max(config.img_height, config.img_width):
        advice.append(f"--img_height {side} --img_width {side} (crops; translate still works at full resolution)")
    if config.batch_size > 1:
        advice.append("a smaller --batch_size")
    return "try " + ", or ".join(advice or ["a smaller image size"])


def out_of_memory_advice(config: TrainConfig, device: torch.device, mode: str) -> CycleGANError:
    """The error a run gives when the device runs out of memory: what fits instead."""
    have = available_bytes(device) + (torch.cuda.memory_allocated(device) if device.type == "cuda" else 0)
    where = f"{config.img_height}x{config.img_width}, batch {config.batch_size}"
    return CycleGANError(
        f"out of memory on {device} training at {where} with --activation_checkpointing {mode} "
        f"({have / 2**30:.1f} GiB usable): {memory_advice(config, mode, have)}; then continue with --resume"
    )
