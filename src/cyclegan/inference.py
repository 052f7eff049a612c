"""Load a trained generator from whatever file people have, and run it on whole images.

``load_generator(path, direction)`` takes:

- a run folder (its newest checkpoint: ``checkpoints/epoch_N.safetensors`` or a run checkpoint
  under ``checkpoints/resume``; or with ``epoch`` (``--epoch``) ``best``, the networks
  ``--keep_best`` kept, or an epoch's file), a run checkpoint folder, or an ``epoch_N.safetensors`` file:
  ``G_AB`` for ``AtoB``, ``G_BA`` for ``BtoA``, built from the run's config;
- one generator's weights, ``.pth`` or ``.safetensors``: the reference code's ``G_AB_N.pth``, the
  official repository's ``latest_net_G_A.pth`` (its ``ResnetGenerator``: transposed-convolution
  upsampling, ``conv_block`` keys; instance-norm running statistics of old files are dropped), an
  official pix2pix ``latest_net_G.pth`` (its ``UnetGenerator``: nested ``model.model.1.model.3...``
  keys; ``unet_128`` or ``unet_256`` by the nesting depth, batch, instance or no norm), an official
  CUT ``latest_net_G.pth`` (its anti-aliased ``ResnetGenerator``, told by the blur filters' ``filt``
  buffers), or an exported ``.safetensors``. The architecture, depth or block count, width, norm and
  channels are read off the keys and shapes. Files are read with ``weights_only=True``: nothing in
  them is executed. Every generator runs in eval mode: a pix2pix U-Net's batch norms use their
  running statistics and its dropout is off, as the official ``test.py --eval`` runs it (without
  ``--eval`` the official script normalises with each image's own statistics and keeps dropout on,
  so its outputs differ and vary; see docs/inference.md).

``translate_image`` pads an image by reflection to what the generator needs (a multiple of 4 for
the ResNet generators) and crops the result back, so a 501x333 photo comes back 501x333; with
``tile`` it translates overlapping tiles and blends their seams linearly. ``OnnxGenerator``
runs a file made by ``cyclegan export --format onnx`` with onnxruntime, as a ``Generator``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cyclegan.checkpoint import (
    best_checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_run_checkpoint,
    load_state_dict_file,
    newest_checkpoint,
)
from cyclegan.errors import CycleGANError
from cyclegan.models import BlurDownsample, BlurUpsample, UnetGenerator, build_generator, generator_multiple
from cyclegan.options import TrainConfig
from cyclegan.registry import get_model, model_of_saved
from cyclegan.zoo import find_model, pretrained_path

__all__ = ["Generator", "OnnxGenerator", "load_generator", "run_folder_checkpoint", "generator_from_state_dict",
           "translate_image", "add_epoch_flag"]


@dataclass
class Generator:
    """A generator ready to run: ``net`` in eval mode, its channel counts, the multiple that
    image sides must have, and what it was loaded from."""

    net: nn.Module
    in_channels: int
    out_channels: int
    multiple: int
    source: str
    arch: str
    train_size: tuple[int, int] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def directions(self) -> tuple[str, ...]:
        """The directions the run it comes from translates (its model's); a bare weights file: one."""
        return model_of_saved(self.config).directions if self.config else ("AtoB",)


class OnnxGenerator:
    """An exported generator run by onnxruntime, with the interface of ``Generator``."""

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise CycleGANError("--backend onnxruntime needs onnxruntime: pip install 'cyclegan[export]'") from exc
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad files
            raise CycleGANError(f"--checkpoint {path}: not an ONNX model onnxruntime can load ({exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        info = self.session.get_inputs()[0]
        self.input_name = info.name
        self.in_channels = int(meta.get("in_channels", info.shape[1] if isinstance(info.shape[1], int) else 3))
        self.out_channels = int(meta.get("out_channels", 3))
        self.multiple = int(meta.get("multiple", 4))
        self.train_size = None
        self.source = str(path)
        # A scientific run's value ranges (cyclegan export writes them), read as a run's config is:
        # data_A is this generator's input, data_B its output, whichever direction was exported.
        try:
            self.config: dict[str, Any] = json.loads(meta["domains"]) if "domains" in meta else {}
        except ValueError:
            raise CycleGANError(f"--checkpoint {path}: its 'domains' metadata is not JSON; export it again") from None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})
        return torch.from_numpy(out)


def _from_run(states: dict[str, dict[str, torch.Tensor]], saved: dict[str, Any], direction: str,
              source: str) -> Generator:
    """One generator of a run's checkpoint, built from the run's config as training built it."""
    config = TrainConfig.from_json(saved, source)
    model = get_model(config.model)
    name = model.generators.get(direction)
    if name is None or name not in states:
        offered = ", ".join(model.directions)
        raise CycleGANError(
            f"--direction {direction}: {source} is a --model {config.model} run, which translates {offered} only; "
            f"use --direction {model.directions[0]}, or train a cyclegan run for both directions"
        )
    with torch.device("meta"):  # the weights come from the checkpoint: nothing to allocate or draw
        net = build_generator(config, direction, initialise=False)
    net.load_state_dict(as_float32(states[name]), assign=True)
    cin, cout = (config.channels_A, config.channels_B) if direction == "AtoB" else (config.channels_B, config.channels_A)
    arch = "official" if config.upsample == "transpose" else "reference"
    size = (config.img_height, config.img_width)
    return Generator(net.eval(), cin, cout, generator_multiple(config.netG), f"{source} ({name})", arch, size, saved)


_BLOCK = re.compile(r"^model\.(\d+)\.(conv_block|block)\.")


def as_float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved in half precision (float16, bfloat16) or float64, as float32: the
    generator runs in float32 and autocasts where it is asked to."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def generator_from_state_dict(state: dict[str, torch.Tensor], source: str = "state dict") -> Generator:
    """One generator from its weights alone: the reference's ``GeneratorResNet`` (``block`` keys),
    the official ``ResnetGenerator`` (``conv_block`` keys) or the official ``UnetGenerator``
    (``model.model.*`` keys, pix2pix's), with its sizes read off the keys and shapes."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if _UNET_FIRST in state:
        return _unet_from_state_dict(state, source)
    return _resnet_from_state_dict(state, source)


def _resnet_from_state_dict(state: dict[str, torch.Tensor], source: str) -> Generator:
    """A ResNet generator, reference or official, with width, blocks and channels read off the shapes."""
    blocks = {int(m.group(1)): m.group(2) for k in state if (m := _BLOCK.match(k))}
    if not blocks or "model.1.weight" not in state:
        raise CycleGANError(
            f"{source}: not a generator this program knows (expected 'model.1.weight' and "
            f"'model.<i>.block.*' (reference) or 'model.<i>.conv_block.*' (official ResNet) keys, or "
            f"'{_UNET_FIRST}' (official U-Net); found {', '.join(list(state)[:6])}, ...)"
        )
    kind = set(blocks.values())
    if len(kind) > 1:
        raise CycleGANError(f"{source}: mixes reference 'block' and official 'conv_block' keys")
    first = state["model.1.weight"]
    ngf, in_channels = int(first.shape[0]), int(first.shape[1])
    batch_norm = "model.2.weight" in state and "model.2.running_mean" in state
    norm = "batch" if batch_norm else "instance"
    if not batch_norm:  # instance norm without affine parameters: old files carry running stats
        state = _without_running_stats(state)
    convs = [k for k in state if re.fullmatch(r"model\.\d+\.weight", k) and state[k].dim() == 4]
    last = max(convs, key=lambda k: int(k.split(".")[1]))
    out_channels = int(state[last].shape[0])
    n_blocks = len(blocks)
    dropout = any(re.match(r"model\.\d+\.(conv_block|block)\.7\.", k) for k in state)
    arch = "official" if kind == {"conv_block"} else "reference"
    # The official CUT's blurred subsampling and upsampling keep their filters as buffers: 3x3, 4x4.
    filters = {int(v.shape[-1]) for k, v in state.items() if k.endswith(".filt") and v.dim() == 4}
    antialias, antialias_up = 3 in filters, 4 in filters
    if antialias or antialias_up:
        arch += " CUT (anti-aliased)"
    config = TrainConfig(netG="resnet", upsample="transpose" if kind == {"conv_block"} else "nearest", ngf=ngf,
                         norm=norm, n_residual_blocks=n_blocks, input_nc=in_channels, output_nc=out_channels,
                         no_antialias=not antialias, no_antialias_up=not antialias_up)
    with torch.device("meta"):
        net = build_generator(config, "AtoB", initialise=False)
    try:
        net.load_state_dict(as_float32(state), strict=True, assign=True)
    except RuntimeError:
        raise CycleGANError(f"{source}: the weights do not fit the {arch} ResNet generator their keys suggest "
                            f"({n_blocks} blocks, ngf {ngf}, {in_channels} -> {out_channels} channels"
                            f"{', dropout' if dropout else ''}): {_first_mismatch(net, state)}") from None
    return Generator(net.eval(), in_channels, out_channels, 4, source, arch)


# The official UnetGenerator's keys: the outermost block is ``model.model`` (down convolution 0,
# the inner blocks 1, up convolution 3); each inner block sits at index 1 (of the outermost) or 3
# (of a middle block) of its parent's ``model``, down convolution 1, its norm 2, up convolution
# 5 (3 in the innermost), its norm 6 (4).
_UNET_FIRST = "model.model.0.weight"


def _without_running_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def unet_depth(state: dict[str, torch.Tensor]) -> int:
    """The levels (downsamplings) of an official U-Net's state dict: 7 for ``unet_128``, 8 for
    ``unet_256``. Each inner level's keys lie under its parent's prefix plus ``1.model.`` (under
    the outermost block) or ``3.model.``."""
    depth, prefix = 1, "model.model.1.model."
    while any(k.startswith(prefix) for k in state):
        depth += 1
        prefix += "3.model."
    return depth


def _unet_norm(state: dict[str, torch.Tensor]) -> str:
    """Batch norm has affine weights and running statistics (``model.model.1.model.2.*``);
    instance norm (affine=False) has no parameters but the convolutions have biases; no norm,
    neither."""
    if "model.model.1.model.2.weight" in state:
        return "batch"
    return "instance" if "model.model.0.bias" in state else "none"


def _unet_from_state_dict(state: dict[str, torch.Tensor], source: str) -> Generator:
    """The official pix2pix ``UnetGenerator``, depth, width, channels and norm read off the keys:
    our ``UnetGenerator`` has its module order and key layout. Built with dropout (the pix2pix
    default; dropout has no weights, and eval mode turns it off). Files saved before PyTorch 0.4
    lack ``num_batches_tracked``: it is unused in eval mode, and set to 0."""
    first = state[_UNET_FIRST]
    if first.dim() != 4 or "model.model.3.weight" not in state:
        raise CycleGANError(f"{source}: '{_UNET_FIRST}' but no U-Net up convolution 'model.model.3.weight': not "
                            "an official UnetGenerator")
    ngf, in_channels = int(first.shape[0]), int(first.shape[1])
    out_channels = int(state["model.model.3.weight"].shape[1])  # a transposed convolution: (in, out, k, k)
    depth, norm = unet_depth(state), _unet_norm(state)
    if norm == "batch":
        state = dict(state)
        for key in [k for k in state if k.endswith(".running_mean")]:
            state.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0))
    else:  # instance norm without running statistics: old files carry them
        state = _without_running_stats(state)
    arch = f"unet_{2 ** depth}"
    try:
        with torch.device("meta"):
            net = UnetGenerator(in_channels, out_channels, depth, ngf, norm, use_dropout=True)
        net.load_state_dict(as_float32(state), strict=True, assign=True)
    except (RuntimeError, ValueError) as exc:
        raise CycleGANError(f"{source}: the weights do not fit an official U-Net of {depth} levels ({arch}, ngf "
                            f"{ngf}, {norm} norm, {in_channels} -> {out_channels} channels): {exc}") from exc
    side = 2 ** depth
    return Generator(net.eval(), in_channels, out_channels, side, source, arch, (side, side))


def _first_mismatch(net: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """One line on how ``state`` differs from ``net``'s: the first key of another shape, or the
    keys one has and the other lacks."""
    expected = net.state_dict()
    for key, value in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            return f"{key} is {tuple(value.shape)} where {tuple(expected[key].shape)} was expected"
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    parts = ([f"{len(missing)} expected key(s) missing, first {missing[0]}"] if missing else []) + (
        [f"{len(extra)} key(s) not expected, first {extra[0]}"] if extra else [])
    return "; ".join(parts) or "the shapes differ"


def resolve_checkpoint(given: str | Path) -> Path:
    """The file or folder ``--checkpoint`` names; an official model's name (``horse2zebra``,
    ``pix2pix/sat2map``) is its file from ``cyclegan download model``."""
    path = Path(given)
    if path.exists():
        return path
    entry = find_model(str(given))
    if entry is not None:
        downloaded = pretrained_path(entry.name, family=entry.family)
        if downloaded.is_file():
            return downloaded
        raise CycleGANError(f"--checkpoint {given}: the official pretrained generator is not downloaded yet "
                            f"(looked for {downloaded}); fetch it with: cyclegan download model {given}")
    raise CycleGANError(f"--checkpoint {path}: no such file or folder")


def add_epoch_flag(parser: Any) -> None:
    """``--epoch``, as translate, export, evaluate and serve take it."""
    parser.add_argument("--epoch", default="latest", help=(
        "with a run folder as --checkpoint: latest (the newest checkpoint written), best (the one --keep_best "
        "kept) or an epoch number (checkpoints/epoch_N.safetensors) (default: latest)"))


def run_folder_checkpoint(run_dir: Path, epoch: str = "latest") -> Path:
    """The checkpoint of a run folder that ``--epoch`` names: ``latest`` (the newest written),
    ``best`` (``--keep_best``'s), or an epoch number (``checkpoints/epoch_N.safetensors``)."""
    if epoch == "latest":
        return newest_checkpoint(run_dir)
    if epoch == "best":
        best = best_checkpoint_path(run_dir)
        if not best.is_file():
            raise CycleGANError(f"--epoch best: {run_dir} holds no {best.relative_to(run_dir)}; a run keeps its best "
                                "generators when trained with --eval_every N --keep_best METRIC")
        return best
    saved = list_checkpoints(run_dir)
    if not epoch.isdigit() or int(epoch) not in saved:
        have = ", ".join(str(e) for e in saved) or "none"
        raise CycleGANError(f"--epoch {epoch}: {run_dir} has no such checkpoint; use latest, best or an epoch it "
                            f"saved (saved epochs: {have})")
    return saved[int(epoch)]


def load_generator(path: str | Path, direction: str = "AtoB", device: torch.device | str = "cpu",
                   epoch: str = "latest") -> Generator:
    """The generator for ``direction`` from a run folder (its checkpoint ``epoch``:
    ``run_folder_checkpoint``), a checkpoint or a weights file."""
    if direction not in ("AtoB", "BtoA"):
        raise CycleGANError(f"--direction {direction}: use AtoB or BtoA")
    path = resolve_checkpoint(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = run_folder_checkpoint(path, epoch)
    elif epoch != "latest":
        raise CycleGANError(f"--epoch {epoch} picks a checkpoint of a run folder; --checkpoint {path} is not one "
                            "(give the run folder, or leave --epoch out)")
    if path.is_dir():
        if not (path / "networks.safetensors").is_file():
            raise CycleGANError(f"--checkpoint {path}: a folder that is neither a run folder (with checkpoints/) nor "
                                "a run checkpoint (with networks.safetensors)")
        states, state = load_run_checkpoint(path)
        gen = _from_run(states, state.get("config", {}), direction, str(path))
    elif path.suffix == ".safetensors":
        try:
            states, meta = load_checkpoint(path)
        except CycleGANError:
            state = load_state_dict_file(path)  # a generator's weights (without run metadata)
            if any(k.startswith("G_AB.") for k in state):
                raise  # a run's networks whose metadata is damaged: say so
            gen = generator_from_state_dict(state, str(path))
        else:
            if "config" in meta and "G_AB" in states:
                gen = _from_run(states, meta["config"], direction, str(path))
            else:
                gen = generator_from_state_dict(load_state_dict_file(path), str(path))
    else:
        gen = generator_from_state_dict(load_state_dict_file(path), str(path))
    gen.net.to(device)
    return gen


# The smallest side every generator here takes: a ResNet generator's residual blocks pad by
# reflection at a quarter of the size, which needs at least 2 pixels there.
SMALLEST_SIDE = 8


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """``x`` padded at the bottom and right to sides that are multiples of ``multiple`` and at
    least ``SMALLEST_SIDE``: by reflection, or by repeating the edge where the image is smaller
    than the padding (a 1 x 1 or 3 x 500 image)."""
    h, w = x.shape[-2:]
    smallest = -(-SMALLEST_SIDE // multiple) * multiple
    ph, pw = max(smallest - h, (-h) % multiple), max(smallest - w, (-w) % multiple)
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


def translate_tensor(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``run`` on ``x`` (N, C, H, W in [-1, 1]) padded to what the generator takes, cropped back."""
    padded, h, w = _pad_to(x, multiple)
    return run(padded)[..., :h, :w]


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Blend weights along one side of a tile: rising over the overlap unless at the image edge."""
    weight = torch.ones(n)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        if not at_start:
            weight[:overlap] = ramp
        if not at_end:
            weight[n - overlap:] = ramp.flip(0)
    return weight


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def translate_tiled(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, multiple: int, tile: int,
                    overlap: int, out_channels: int) -> torch.Tensor:
    """Translate ``x`` (1, C, H, W) tile by tile (``tile`` square, ``overlap`` shared pixels), each
    tile padded as a whole image is, the seams blended with linear weights."""
    _, _, h, w = x.shape
    out = torch.zeros(1, out_channels, h, w, device=x.device)
    total = torch.zeros(1, 1, h, w, device=x.device)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    for y in ys:
        for x0 in xs:
            patch = x[..., y:y + tile, x0:x0 + tile]
            result = translate_tensor(run, patch, multiple).float()
            th, tw = patch.shape[-2:]
            wy = _ramp(th, min(overlap, th // 2), y == 0, y + th >= h).to(x.device)
            wx = _ramp(tw, min(overlap, tw // 2), x0 == 0, x0 + tw >= w).to(x.device)
            weight = (wy[:, None] * wx[None, :])[None, None]
            out[..., y:y + th, x0:x0 + tw] += result * weight
            total[..., y:y + th, x0:x0 + tw] += weight
    return out / total


TILE_SIZES = (2048, 1024, 512, 256)


def full_resolution_width(gen: Generator | Any) -> int:
    """The channels the generator keeps at the image's full resolution (its first convolution's
    width, twice that for the official CUT's anti-aliased generator, whose first downsampling
    convolution and last upsampling run at full resolution; 64 for unknown networks such as an
    ONNX file's)."""
    net = getattr(gen, "net", None)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)] if net is not None else []
    if not convs:
        return 64
    blurred = any(isinstance(m, (BlurDownsample, BlurUpsample)) for m in net.modules())
    return convs[0].out_channels * (2 if blurred else 1)


def whole_image_bytes(gen: Generator | Any, height: int, width: int, batch: int = 1) -> int:
    """About the most memory translating whole images of this size takes: three full-resolution
    activations of the generator's width alive at once (a layer's input, output and padding),
    in float32."""
    return 3 * batch * full_resolution_width(gen) * (height + 6) * (width + 6) * 4


def automatic_tile(gen: Generator | Any, shape: Sequence[int], available: int) -> int | None:
    """None when whole images of ``shape`` (N, C, H, W) fit in half of ``available`` bytes;
    otherwise the largest tile size of ``TILE_SIZES`` that does (the smallest if none)."""
    n, _, h, w = shape
    budget = available // 2
    if whole_image_bytes(gen, h, w, n) <= budget:
        return None
    return next((t for t in TILE_SIZES if whole_image_bytes(gen, min(t, h), min(t, w)) <= budget), TILE_SIZES[-1])


def translate_image(gen: Generator, x: torch.Tensor, tile: int | None = None, overlap: int = 32) -> torch.Tensor:
    """The translation of ``x`` (N, C, H, W in [-1, 1]), of the same height and width."""
    with torch.inference_mode():
        if tile:
            return torch.cat([translate_tiled(gen, x[i:i + 1], gen.multiple, tile, overlap, gen.out_channels)
                              for i in range(x.size(0))])
        return translate_tensor(gen, x, gen.multiple)
