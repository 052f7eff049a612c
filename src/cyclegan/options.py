"""Every training option in one place: the config dataclass, the flags, a YAML config file, the
official repository's option names, and the checks that refuse what cannot work.

Precedence, lowest first: the defaults (the reference design's), ``--arch official`` presets,
the ``--config FILE`` values, the command-line flags. The reference's flags keep their names and
meanings. The official repository's names are accepted next to them and mapped onto them:

- ``--n_epochs_decay M`` switches to the official epoch scheme: ``--n_epochs`` then counts the
  epochs at the initial learning rate and training lasts ``n_epochs + n_epochs_decay`` epochs,
  decaying from epoch ``n_epochs`` (stored as the reference's ``n_epochs`` = total and
  ``decay_epoch``); it cannot be combined with ``--decay_epoch``.
- ``--epoch_count K`` (1-based, official) is ``--epoch K-1``.
- ``--crop_size N`` is ``--img_height N --img_width N``; ``--load_size`` is the official resize.
- ``--netG resnet_9blocks`` / ``resnet_6blocks`` are ``--netG resnet --n_residual_blocks 9 / 6``.
- ``--input_nc`` / ``--output_nc`` are the channel counts of domains A and B (default
  ``--channels``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclegan.errors import CycleGANError
from cyclegan.models import DISCRIMINATORS, INIT_TYPES, NORMS, discriminator_min_side, generator_multiple
from cyclegan.registry import MODELS, get_model
from cyclegan.runtime import add_debug_flag
from cyclegan.science import parse_bands, parse_value_range

__all__ = ["TrainConfig", "saved_fields", "check_path_flags", "get_args_parser", "parse_config", "validate",
           "PREPROCESS_MODES", "LR_POLICIES", "GAN_MODES"]

PREPROCESS_MODES = ("reference", "resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
LR_POLICIES = ("linear", "step", "plateau", "cosine")
GAN_MODES = ("lsgan", "vanilla", "wgangp")
GENERATOR_NAMES = ("resnet", "resnet_9blocks", "resnet_6blocks", "unet_128", "unet_256")
ARCH_PRESETS = {
    "reference": {"upsample": "nearest", "netD": "reference"},
    "official": {"upsample": "transpose", "netD": "basic"},
}
# --model presets and default epochs belong to each model (registry): get_model(name).presets and
# .epochs (CUT trains 200 epochs at the initial rate and 200 decaying, FastCUT 150 and 50, pix2pix
# 100 and 100: those two apply together, when neither --n_epochs nor --decay_epoch is given).


# What --keep_best can follow, and which way is better: lower for the distances and errors.
SCORES = ("fid", "kid", "psnr", "ssim", "l1", "cycle_l1")
LOWER_IS_BETTER = frozenset({"fid", "kid", "l1", "cycle_l1"})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; stored as ``config.json`` in the run folder (which ``--config`` reads).
    Frozen: a setting settled after parsing (the seed drawn, the demo data chosen, a resumed run's
    folder) makes a new config with ``dataclasses.replace``, so no module changes another's."""

    # The reference's flags, names and defaults.
    epoch: int = 0
    n_epochs: int = 200
    dataset_name: str = "monet2photo"
    batch_size: int = 1
    lr: float = 0.0002
    b1: float = 0.5
    b2: float = 0.999
    decay_epoch: int = 100
    n_cpu: int = 8
    img_height: int = 256
    img_width: int = 256
    channels: int = 3
    sample_interval: int = 100
    checkpoint_interval: int = -1
    n_residual_blocks: int = 9
    lambda_cyc: float = 10.0
    lambda_id: float = 5.0
    # Model: CycleGAN, CUT / FastCUT (contrastive unpaired translation) and their PatchNCE loss, or
    # pix2pix (paired) and its L1 weight.
    model: str = "cyclegan"
    lambda_L1: float = 100.0
    lambda_NCE: float = 1.0
    nce_idt: bool = True
    flip_equivariance: bool = False
    nce_layers: str = "0,4,8,12,16"
    num_patches: int = 256
    nce_T: float = 0.07
    netF_nc: int = 256
    # Run.
    dataroot: str | None = None
    output: str | None = None
    device: str = "auto"
    seed: int | None = None
    overwrite: bool = False
    resume: str | None = None
    keep_checkpoints: int = 3
    save_every_steps: int = 0
    max_steps: int | None = None
    bad_images: str = "error"
    # Watching.
    logger: str = "tensorboard"
    log_interval: int = 10
    # Scoring while training.
    eval_every: int = 0
    eval_every_steps: int = 0
    eval_images: int = 50
    eval_paired: bool = False
    keep_best: str | None = None
    early_stop: int = 0
    inception: str | None = None
    # Speed.
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    activation_checkpointing: str = "off"
    # Networks (the official choices).
    arch: str = "reference"
    netG: str = "resnet"
    upsample: str = "nearest"
    # The official CUT's anti-aliased networks, under its flag names (CycleGAN's have none).
    no_antialias: bool = True
    no_antialias_up: bool = True
    ngf: int = 64
    use_dropout: bool = False
    netD: str = "reference"
    n_layers_D: int = 3
    ndf: int = 64
    norm: str = "instance"
    init_type: str = "normal"
    init_gain: float = 0.02
    input_nc: int | None = None
    output_nc: int | None = None
    # Objective and schedule.
    gan_mode: str = "lsgan"
    lambda_gp: float = 10.0
    pool_size: int = 50
    lr_policy: str = "linear"
    lr_decay_iters: int = 50
    # Data.
    preprocess: str = "reference"
    load_size: int | None = None
    no_flip: bool = False
    vflip: bool = False
    rot90: bool = False
    finetune_phase: bool = False
    direction: str = "AtoB"
    max_dataset_size: int | None = None
    serial_batches: bool = False
    # Scientific images (science.py): the value range, NIfTI slicing, the bands shown.
    value_range: str = "dtype"
    value_range_B: str | None = None
    slice_axis: int = 2
    display_bands: str | None = None
    # Settled when the data are first read (a scientific domain's science.Domain as JSON; None for
    # 8-bit photographs) and kept with the run, so inference inverts exactly what training did.
    data_A: dict | None = None
    data_B: dict | None = None
    # The precision --amp resolved to on the device that ran (off, bf16, fp16).
    amp_used: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: Any, source: str = "the saved config") -> "TrainConfig":
        """The config a run saved (``config.json``, a checkpoint's metadata): keys this version
        does not know are left out, and those it lacks (an older run's) take their defaults; a
        value of the wrong type is a CycleGANError naming ``source``."""
        return cls(**saved_fields(values, source))

    @property
    def channels_A(self) -> int:
        return self.input_nc or self.channels

    @property
    def channels_B(self) -> int:
        return self.output_nc or self.channels

    @property
    def resize_size(self) -> int:
        """The official ``load_size``; by default 1.12x the crop, as in the reference (286 for 256)."""
        return self.load_size or int(max(self.img_height, self.img_width) * 1.12)


def _json_type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return value is None or isinstance(value, (bool, int, float, str, list, dict))


def saved_fields(values: Any, source: str) -> dict[str, Any]:
    """The known fields of a saved config, each of the type its default has (a CycleGANError
    naming ``source`` and the field otherwise): a damaged or hand-edited config is refused in
    one line, not deep inside network building."""
    if not isinstance(values, dict):
        raise CycleGANError(f"{source}: the run's config is not a mapping of option names to values; the file is "
                            "damaged")
    defaults = TrainConfig().to_json()
    fields = {k: v for k, v in values.items() if k in defaults}
    for key, value in fields.items():
        if not _json_type_ok(value, defaults[key]):
            raise CycleGANError(f"{source}: the run's config has {key} = {value!r}, not a value of that option; the "
                                "file is damaged or was edited by hand")
    return fields


# Options that describe the networks; a run restarted with --epoch N (or resumed) must keep them. The
# value ranges and slicing belong here too: the weights mean nothing under another scaling of the data.
ARCHITECTURE_FIELDS = ("model", "netG", "upsample", "no_antialias", "no_antialias_up", "ngf", "use_dropout", "netD",
                       "n_layers_D", "ndf", "norm", "n_residual_blocks", "channels", "input_nc", "output_nc",
                       "nce_layers", "netF_nc", "value_range", "value_range_B", "slice_axis")


def _help(text: str, default: Any) -> str:
    return f"{text} (default: {default})"


def _true_or_false(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "on", "yes", "1"):
        return True
    if value in ("false", "off", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_model_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The ``--model`` group: CycleGAN, CUT, FastCUT or pix2pix, and their losses' settings."""
    model = p.add_argument_group("model: CycleGAN, CUT, FastCUT or pix2pix")
    described = ". ".join(f"{name}: {get_model(name).summary}" for name in MODELS)
    model.add_argument("--model", choices=MODELS, help=_help(
        f"{described}. cut, fastcut and pix2pix set their papers' defaults of the flags below and others "
        "(--netD, --init_type, --pool_size; pix2pix: --netG unet_256 --norm batch --gan_mode vanilla, dropout), "
        "and train 400 (cut), 200 (fastcut, pix2pix) epochs decaying from 200, 150 or 100, unless those flags are "
        "given", "cyclegan"))
    model.add_argument("--lambda_L1", type=float, help=_help("pix2pix: weight of the L1 loss to the paired target",
                                                             d.lambda_L1))
    model.add_argument("--lambda_NCE", type=float, help=_help("PatchNCE loss weight", "1 (cut), 10 (fastcut)"))
    model.add_argument("--nce_idt", type=_true_or_false, metavar="{true,false}", help=_help(
        "also apply PatchNCE to G(B) against B (the identity term)", "true (cut), false (fastcut)"))
    model.add_argument("--flip_equivariance", type=_true_or_false, metavar="{true,false}", help=_help(
        "flip the input of half the steps left-right and compare the output's features flipped back",
        "false (cut), true (fastcut)"))
    model.add_argument("--nce_layers", help=_help(
        "generator layers whose features PatchNCE compares, numbered as in the official CUT: with its "
        "anti-aliased generator (cut, fastcut) 0 is the image, 4 and 8 the two downsampling convolutions, 12 + k "
        "the output of residual block k + 1 (the paper's choice, 0,4,8,12,16: the image, both downsamplings, the "
        "first and fifth residual block); with --no_antialias the same layers are 0,4,7,10,14",
        "0,4,8,12,16"))
    model.add_argument("--num_patches", type=int, help=_help(
        "locations sampled per layer and image (the same for input and output)", d.num_patches))
    model.add_argument("--nce_T", type=float, help=_help("temperature of the contrastive loss", d.nce_T))
    model.add_argument("--netF_nc", type=int, help=_help("width of the projection MLP F", d.netF_nc))


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The flags of ``cyclegan train``. Unset flags are absent from the parsed namespace."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="cyclegan train",
        description="Train CycleGAN on two folders of unpaired images. The first group holds the reference "
                    "design's flags; the official repository's option names are accepted too.",
        add_help=add_help,
        argument_default=argparse.SUPPRESS,
    )
    for add in (_add_reference_flags, _add_model_flags, _add_run_flags, _add_watching_flags, _add_scoring_flags,
                _add_speed_flags, _add_network_flags, _add_objective_flags, _add_data_flags):
        add(p, d)
    add_debug_flag(p)
    return p


def _add_reference_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The reference design's flags, its names and defaults."""
    ref = p.add_argument_group("the reference's flags")
    ref.add_argument("--epoch", type=int, help=_help(
        "epoch to start from; N > 0 loads the checkpoint saved after N epochs from the run folder", d.epoch))
    ref.add_argument("--n_epochs", type=int, help=_help(
        "number of epochs of training (with --n_epochs_decay: the epochs at the initial learning rate)", d.n_epochs))
    ref.add_argument("--dataset_name", help=_help(
        "dataset under data/<dataset_name>; 'demo' is the built-in procedural data, also used when neither "
        "this flag nor --dataroot is given and data/monet2photo does not exist", d.dataset_name))
    ref.add_argument("--batch_size", type=int, help=_help("size of the batches", d.batch_size))
    ref.add_argument("--lr", type=float, help=_help("adam: learning rate", d.lr))
    ref.add_argument("--b1", type=float, help=_help("adam: decay of first order momentum of gradient", d.b1))
    ref.add_argument("--b2", type=float, help=_help("adam: decay of second order momentum of gradient", d.b2))
    ref.add_argument("--decay_epoch", type=int, help=_help(
        "epoch from which the learning rate decays linearly, reaching zero at --n_epochs (the last epoch trains at "
        "lr / (n_epochs - decay_epoch))", d.decay_epoch))
    ref.add_argument("--n_cpu", type=int, help=_help(
        "data-loading worker processes (at most the machine's CPU count; 0 loads in the main process)", d.n_cpu))
    ref.add_argument("--img_height", type=int, help=_help("training image height, a multiple of 16", d.img_height))
    ref.add_argument("--img_width", type=int, help=_help("training image width, a multiple of 16", d.img_width))
    ref.add_argument("--channels", type=int, help=_help(
        "number of image channels: 1 or 3, or any count for TIFF or .npy files", d.channels))
    ref.add_argument("--sample_interval", type=int, help=_help(
        "interval (in batches) between sample grids written to <output>/samples", d.sample_interval))
    ref.add_argument("--checkpoint_interval", type=int, help=_help(
        "interval (in epochs) between checkpoints; -1 saves only at the end", d.checkpoint_interval))
    ref.add_argument("--n_residual_blocks", type=int, help=_help(
        "number of residual blocks in generator", d.n_residual_blocks))
    ref.add_argument("--lambda_cyc", type=float, help=_help("cycle loss weight", d.lambda_cyc))
    ref.add_argument("--lambda_id", type=float, help=_help("identity loss weight", d.lambda_id))


def _add_run_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Where a run reads and writes, and how it starts, stops and resumes."""
    run = p.add_argument_group("run")
    run.add_argument("--dataroot", help=_help(
        "folder holding train/A, train/B (and test/A, test/B), or trainA, trainB, testA, testB",
        "data/<dataset_name>"))
    run.add_argument("--output", help=_help("run folder for samples, checkpoints and config", "runs/<dataset_name>"))
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), help=_help(
        "where to train; auto takes CUDA when available", d.device))
    run.add_argument("--seed", type=int, help=_help("seed of every random generator", "random, recorded in config.json"))
    run.add_argument("--overwrite", action="store_true", help="start a new run in an --output folder that already "
                                                              "holds one")
    run.add_argument("--resume", nargs="?", const="latest", metavar="PATH", help=(
        "continue a stopped run exactly (weights, optimizers, LR schedule, replay buffers, data order, random "
        "state): alone, from the newest valid checkpoint of the run folder (--output); or from the checkpoint "
        "folder PATH. Flags given with it override the run's (network flags cannot change)"))
    run.add_argument("--keep_checkpoints", type=int, help=_help(
        "run checkpoints (for --resume) to keep, newest first", d.keep_checkpoints))
    run.add_argument("--save_every_steps", type=int, help=_help(
        "also save a run checkpoint every N steps (0: only at the end of each epoch)", d.save_every_steps))
    run.add_argument("--max_steps", type=int, help=_help(
        "stop after this many steps in all (saving, so that --resume continues)", "none"))
    run.add_argument("--bad_images", choices=("error", "skip"), help=_help(
        "unreadable, truncated, empty, non-image, oversized or smaller-than-crop files: stop with a list of "
        "them (error) or leave them out (skip)", d.bad_images))
    run.add_argument("--config", metavar="FILE", help="YAML file of options (flag names as keys, e.g. a run's "
                                                      "config.json; overwrite, resume and max_steps are not read "
                                                      "from it); flags given on the command line win")
    run.add_argument("--print_config", action="store_true", help="print the resolved options as YAML and exit")


def _add_watching_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Where the metrics go."""
    watch = p.add_argument_group("watching")
    watch.add_argument("--logger", choices=("tensorboard", "wandb", "none"), help=_help(
        "where the loss terms, learning rates, img/s and sample grids go besides <output>/metrics.jsonl: "
        "tensorboard (<output>/tensorboard), wandb (offline, <output>/wandb), none", d.logger))
    watch.add_argument("--log_interval", type=int, help=_help(
        "steps between logged metrics (and the last step of each epoch)", d.log_interval))


def _add_scoring_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Scoring while training (``scoring``)."""
    score = p.add_argument_group("scoring while training (docs/training.md#scoring-while-training)")
    score.add_argument("--eval_every", type=int, metavar="EPOCHS", help=_help(
        "score the generators every N epochs on a fixed subset of the held-out images (test/, else train/): FID "
        "and KID (with the FID Inception network), PSNR, SSIM and L1 against paired truth (pix2pix), the cycle "
        "error (CycleGAN); into metrics.jsonl, TensorBoard and the report. 0: never", d.eval_every))
    score.add_argument("--eval_every_steps", type=int, metavar="STEPS", help=_help(
        "also score every N steps (0: not by steps)", d.eval_every_steps))
    score.add_argument("--eval_images", type=int, help=_help(
        "held-out images scored each time: the same ones every time (a fixed, seeded choice)", d.eval_images))
    score.add_argument("--eval_paired", action="store_true", help=(
        "the held-out A and B files of the same name are pairs (B the true translation of A): score PSNR, SSIM "
        "and L1 against them for an unpaired model too (pix2pix always does)"))
    score.add_argument("--keep_best", choices=SCORES, help=_help(
        "keep the generators of the best score so far in <output>/checkpoints/best.safetensors (translate, "
        "export, evaluate and serve take it as --checkpoint <output> --epoch best)", "none"))
    score.add_argument("--early_stop", type=int, metavar="K", help=_help(
        "stop (saving, as --max_steps does) when the --keep_best score has not improved for K scorings; 0: never",
        d.early_stop))
    score.add_argument("--inception", metavar="PATH", help=(
        "the FID Inception network for FID and KID (default: as cyclegan evaluate looks for it; without it, "
        "scoring leaves FID and KID out, and --keep_best fid|kid is refused before training)"))


def _add_speed_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Mixed precision, memory layout, compilation, activation checkpointing."""
    speed = p.add_argument_group("speed")
    speed.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), help=_help(
        "mixed precision (autocast; the losses and weights stay float32; fp16 adds a gradient scaler): auto is "
        "bf16 on a CUDA GPU that has it and on a CPU with native bf16 (AMX, AVX-512 BF16; 1.8 to 2.7x as fast "
        "as float32), off (exact float32) on other CPUs, where bf16 is emulated, many times slower; "
        "config.json records what ran (amp_used), and a resumed run's auto keeps it", d.amp))
    speed.add_argument("--channels_last", choices=("auto", "on", "off"), help=_help(
        "NHWC memory layout for networks and images: auto is on for CUDA, off on the CPU (where it is slower)",
        d.channels_last))
    speed.add_argument("--compile", action="store_true", help=(
        "torch.compile the four networks: faster steps on a GPU after a compilation of a minute or more at "
        "the start (not on by default for that reason; on the CPU it is slower)"))
    speed.add_argument("--activation_checkpointing", choices=("off", "blocks", "full", "auto"), help=_help(
        "recompute the generators' activations in the backward pass instead of keeping them, for large images: "
        "blocks (inside each residual block), full (all but a few tensors between segments: a small fraction of "
        "the memory, for some speed; docs/benchmarks.md), auto (full when the step would not fit the free "
        "memory, else off). The step computes the same numbers", d.activation_checkpointing))


def _add_network_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The networks, under the official repository's (and the official CUT's) names."""
    net = p.add_argument_group("networks (official options)")
    net.add_argument("--arch", choices=tuple(ARCH_PRESETS), help=_help(
        "preset: 'official' sets --upsample transpose --netD basic, the official repository's networks",
        d.arch))
    net.add_argument("--netG", choices=GENERATOR_NAMES, help=_help(
        "generator: resnet (--n_residual_blocks blocks; resnet_9blocks and resnet_6blocks set 9 or 6), "
        "unet_128, unet_256", d.netG))
    net.add_argument("--upsample", choices=("nearest", "transpose"), help=_help(
        "resnet upsampling: nearest + convolution (the reference) or transposed convolution (official)",
        d.upsample))
    net.add_argument("--no_antialias", type=_true_or_false, nargs="?", const=True, metavar="{true,false}",
                     help=_help("no anti-aliasing: strided convolutions in the ResNet generator's downsampling and "
                                "the PatchGAN (basic, n_layers); false gives the official CUT's blurred subsampling "
                                "(a stride-1 convolution, then a [1,2,1] binomial blur at stride 2). The bare flag "
                                "means true, as in the official CUT", "true; false for cut and fastcut"))
    net.add_argument("--no_antialias_up", type=_true_or_false, nargs="?", const=True, metavar="{true,false}",
                     help=_help("no anti-aliased upsampling in the ResNet generator (--upsample decides); false "
                                "gives the official CUT's (a [1,3,3,1] binomial 2x upsampling, then a 3x3 "
                                "convolution), whatever --upsample says", "true; false for cut and fastcut"))
    net.add_argument("--ngf", type=int, help=_help("generator filters in the first convolution", d.ngf))
    net.add_argument("--use_dropout", action="store_true", help="dropout (0.5) in the generator")
    net.add_argument("--netD", choices=DISCRIMINATORS, help=_help(
        "discriminator: reference (the reference design's), basic (70x70 PatchGAN), n_layers (--n_layers_D), "
        "pixel (1x1 PatchGAN)", d.netD))
    net.add_argument("--n_layers_D", type=int, help=_help("layers of the n_layers discriminator", d.n_layers_D))
    net.add_argument("--ndf", type=int, help=_help("discriminator filters in the first convolution", d.ndf))
    net.add_argument("--norm", choices=NORMS, help=_help("normalisation layers", d.norm))
    net.add_argument("--init_type", choices=INIT_TYPES, help=_help("weight initialisation", d.init_type))
    net.add_argument("--init_gain", type=float, help=_help(
        "scale of normal, xavier and orthogonal initialisation", d.init_gain))
    net.add_argument("--input_nc", type=int, help=_help("channels of domain A", "--channels"))
    net.add_argument("--output_nc", type=int, help=_help("channels of domain B", "--channels"))


def _add_objective_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """Losses and the learning-rate schedule (official options)."""
    obj = p.add_argument_group("objective and schedule (official options)")
    obj.add_argument("--gan_mode", choices=GAN_MODES, help=_help(
        "adversarial loss: lsgan (least squares), vanilla (cross-entropy), wgangp (Wasserstein with gradient "
        "penalty; needs --pool_size 0)", d.gan_mode))
    obj.add_argument("--lambda_gp", type=float, help=_help("gradient penalty weight for wgangp", d.lambda_gp))
    obj.add_argument("--pool_size", type=int, help=_help(
        "images in each replay buffer of past fakes; 0 disables the buffers", d.pool_size))
    obj.add_argument("--lr_policy", choices=LR_POLICIES, help=_help(
        "learning-rate schedule, stepped per epoch: linear (constant, then linearly towards zero from --decay_epoch), "
        "step (x0.1 every --lr_decay_iters epochs), plateau (x0.2 when the generator loss stalls for 5 "
        "epochs), cosine (cosine to zero at --n_epochs)", d.lr_policy))
    obj.add_argument("--lr_decay_iters", type=int, help=_help("epochs between steps of the step policy",
                                                              d.lr_decay_iters))
    obj.add_argument("--n_epochs_decay", type=int, help=(
        "official epoch scheme: train --n_epochs epochs at the initial learning rate, then this many decaying "
        "linearly; maps to --n_epochs (total) and --decay_epoch"))
    obj.add_argument("--epoch_count", type=int, help="official 1-based starting epoch; the same as --epoch K-1")


def _add_data_flags(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The training transform and the data (official options)."""
    data = p.add_argument_group("data (official options)")
    data.add_argument("--preprocess", choices=PREPROCESS_MODES, help=_help(
        "training transform: reference (resize to 1.12x keeping the aspect ratio, random crop), resize_and_crop "
        "(square resize to --load_size, random crop), crop, scale_width (width to --load_size), "
        "scale_width_and_crop, none (sizes rounded to a multiple of 4)", d.preprocess))
    data.add_argument("--load_size", type=int, help=_help("official resize size", "1.12 x the crop size"))
    data.add_argument("--crop_size", type=int, help="official crop size: sets --img_height and --img_width")
    data.add_argument("--no_flip", action="store_true", help="no random horizontal flips")
    data.add_argument("--vflip", action="store_true", help=(
        "also flip top-bottom at random (for images with no up and down: microscopy, satellite, histology)"))
    data.add_argument("--rot90", action="store_true", help=(
        "also rotate by a random multiple of 90 degrees (0 or 180 where the crop is not square)"))
    data.add_argument("--finetune_phase", type=_true_or_false, nargs="?", const=True, metavar="{true,false}",
                      help=_help("the official CUT's fine-tuning phase: from the first epoch after --decay_epoch "
                                 "(when the learning rate starts to decay) the whole image is resized to the crop "
                                 "size (--load_size becomes the crop size, so nothing is cropped away); flips stay",
                                 "false; true for cut and fastcut"))
    data.add_argument("--direction", choices=("AtoB", "BtoA"), help=_help(
        "BtoA swaps the two domains", d.direction))
    data.add_argument("--max_dataset_size", type=int, help=_help(
        "at most this many images of each domain (the first by name)", "all"))
    data.add_argument("--serial_batches", action="store_true", help="no shuffling; B image i goes with A image i")
    science = p.add_argument_group("scientific images: 16-bit, float, any channels, NIfTI (docs/scientific.md)")
    science.add_argument("--value_range", nargs="+", metavar="V", help=_help(
        "the values that map onto the network's -1..1, clipped, for files of more than 8 bits, of other than 1 or 3 "
        "channels, .npy or NIfTI: 'dtype' (integers: the type's full range, floats: 0 to 1), MIN MAX, or "
        "percentiles of the training files such as p0.5 p99.5 (per channel, computed once); stored with the run "
        "and inverted by translate. Files that fill little of their type's range (12-bit counts in 16-bit files) "
        "want percentiles or MIN MAX: the run warns", d.value_range))
    science.add_argument("--value_range_B", nargs="+", metavar="V", help=_help(
        "the same for domain B, when its units differ (e.g. MR to CT)", "--value_range"))
    science.add_argument("--slice_axis", type=int, choices=(0, 1, 2), help=_help(
        "NIfTI volumes: train on the slices along this voxel axis (2: axial in the usual orientation); slices "
        "holding one value throughout are skipped", d.slice_axis))
    science.add_argument("--display_bands", metavar="R,G,B", help=_help(
        "three channels (counted from 0) shown as red, green, blue in sample grids and the report, for images of "
        "other than 1 or 3 channels", "the first channel as grey"))


# The official names that map onto TrainConfig fields (``_resolve_aliases``); flags of their own.
ALIAS_FLAGS = ("crop_size", "epoch_count", "n_epochs_decay")
# Settled from the data when a run starts (not options): a --config file's (a config.json) are left out.
SETTLED_FIELDS = ("data_A", "data_B", "amp_used")
# The keys a --config file may hold: every field's flag and the aliases.
CONFIG_FILE_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - frozenset(SETTLED_FIELDS) | \
    frozenset(ALIAS_FLAGS)
# Flags that take the words true or false (a file gives a YAML boolean).
SWITCH_FLAGS = frozenset({"nce_idt", "flip_equivariance", "no_antialias", "no_antialias_up", "finetune_phase"})
# The on/off flags (``store_true``): a file gives them as true or false.
BOOLEAN_FLAGS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.type in (bool, "bool")) - SWITCH_FLAGS


def _config_file_argv(path: str) -> list[str]:
    """A YAML (or JSON) file of options as command-line tokens."""
    import yaml

    if not path.strip() or "\x00" in path:
        raise CycleGANError(f"--config {path!r}: give the path of a YAML file of options")
    file = Path(path)
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CycleGANError(f"--config {file}: cannot read the file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise CycleGANError(f"--config {file}: not a text file ({exc.reason})") from exc
    except yaml.YAMLError as exc:
        raise CycleGANError(f"--config {file}: not valid YAML ({exc})") from exc
    if values is None:
        return []
    if not isinstance(values, dict):
        raise CycleGANError(f"--config {file}: expected a mapping of option names to values")
    tokens: list[str] = []
    for key, value in values.items():
        key = str(key)
        if key in SETTLED_FIELDS:
            continue
        if key not in CONFIG_FILE_KEYS:
            raise CycleGANError(f"--config {file}: unknown option {key!r} (keys are flag names without the dashes)")
        if value is None:
            continue
        if key in BOOLEAN_FLAGS:
            if not isinstance(value, bool):
                raise CycleGANError(f"--config {file}: {key} must be true or false, got {value!r}")
            if value:
                tokens.append(f"--{key}")
            continue
        tokens += [f"--{key}", str(value)]
    return tokens


# Flags that control one invocation, not the run: never read from a --config file or a resumed run.
INVOCATION_FIELDS = ("overwrite", "resume", "max_steps")


def _resolve_aliases(given: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Map the official option names onto ours, refusing contradictions (``base``: the values
    these flags are laid over, e.g. a config file's)."""
    for key in ("value_range", "value_range_B"):  # one or two words: kept as one string
        if isinstance(given.get(key), list):
            given[key] = " ".join(given[key])
    if "crop_size" in given:
        crop = given.pop("crop_size")
        for flag in ("img_height", "img_width"):
            if flag in given and given[flag] != crop:
                raise CycleGANError(f"--crop_size {crop} and --{flag} {given[flag]} disagree: give one of them")
            given[flag] = crop
    if "epoch_count" in given:
        count = given.pop("epoch_count")
        if count < 1:
            raise CycleGANError(f"--epoch_count {count}: the official epoch count starts at 1")
        if "epoch" in given and given["epoch"] != count - 1:
            raise CycleGANError(f"--epoch_count {count} and --epoch {given['epoch']} disagree: give one of them")
        given["epoch"] = count - 1
    if "n_epochs_decay" in given:
        decay = given.pop("n_epochs_decay")
        if "decay_epoch" in given:
            raise CycleGANError(
                "--n_epochs_decay (official scheme) and --decay_epoch (reference scheme) cannot be combined: with "
                "--n_epochs_decay, --n_epochs counts the epochs before the decay"
            )
        constant = given.get("n_epochs", (base or {}).get("n_epochs", TrainConfig.n_epochs))
        if decay < 1 or constant < 1:
            raise CycleGANError(f"--n_epochs {constant} --n_epochs_decay {decay}: use 1 or more for each")
        # The official rule, 1 - max(0, e + 1 - n) / (n_decay + 1), is LambdaLR with decay from n - 1.
        given["decay_epoch"] = constant - 1
        given["n_epochs"] = constant + decay
    net_g = given.get("netG")
    if net_g in ("resnet_9blocks", "resnet_6blocks"):
        blocks = 9 if net_g == "resnet_9blocks" else 6
        if "n_residual_blocks" in given and given["n_residual_blocks"] != blocks:
            raise CycleGANError(
                f"--netG {net_g} and --n_residual_blocks {given['n_residual_blocks']} disagree: give one of them"
            )
        given["netG"], given["n_residual_blocks"] = "resnet", blocks
    return given


def parse_config(argv: Sequence[str]) -> tuple[TrainConfig, set[str], bool]:
    """Resolve flags (and ``--config``) into a config; also return the names set explicitly (by a
    flag or the file) and whether ``--print_config`` was asked for.

    The file's values act as defaults that command-line flags replace, aliases and ``--arch``
    presets included.
    """
    parser = get_args_parser()
    cli = vars(parser.parse_args(list(argv)))
    print_config = bool(cli.pop("print_config", False))
    config_file = cli.pop("config", None)
    from_file: dict[str, Any] = {}
    if config_file is not None:
        from_file = vars(parser.parse_args(_config_file_argv(config_file)))
        for key in (*INVOCATION_FIELDS, "print_config", "config"):
            from_file.pop(key, None)
        from_file = _resolve_aliases(from_file)
    cli = _resolve_aliases(cli, base=from_file)
    given = dict(from_file)
    if "arch" in cli:  # a preset on the command line replaces what the file says of its keys
        for key in ARCH_PRESETS[cli["arch"]]:
            given.pop(key, None)
    given.update(cli)
    explicit = set(given)
    model = given.get("model", TrainConfig.model)
    chosen = get_model(model)
    if chosen.epochs is not None and not {"n_epochs", "decay_epoch"} & set(given):
        given["n_epochs"], given["decay_epoch"] = chosen.epochs
    for key, value in chosen.presets.items():
        given.setdefault(key, value)
    for key, value in ARCH_PRESETS[given.get("arch", TrainConfig.arch)].items():
        if key not in given:
            given[key] = value
            if "arch" in explicit:
                explicit.add(key)
    return TrainConfig(**given), explicit, print_config


def check_scoring(config: TrainConfig) -> None:
    """The scoring flags agree with each other and with the model (the Inception file is looked
    for when the run starts, ``scoring.Scorer``)."""
    for flag in ("eval_every", "eval_every_steps", "early_stop"):
        if getattr(config, flag) < 0:
            raise CycleGANError(f"--{flag} {getattr(config, flag)}: use 0 (never) or more")
    if config.eval_images < 2:
        raise CycleGANError(f"--eval_images {config.eval_images}: score at least 2 images (FID and KID compare sets)")
    scoring = config.eval_every > 0 or config.eval_every_steps > 0
    if config.keep_best and not scoring:
        raise CycleGANError(f"--keep_best {config.keep_best} keeps the best of the scorings: give --eval_every N "
                            "(epochs) or --eval_every_steps N as well")
    if config.early_stop and not config.keep_best:
        raise CycleGANError(f"--early_stop {config.early_stop} stops when a score stops improving: name it with "
                            "--keep_best (fid, kid, psnr, ssim, l1 or cycle_l1)")
    model = get_model(config.model)
    if config.keep_best in ("psnr", "ssim", "l1") and not (model.paired or config.eval_paired):
        raise CycleGANError(f"--keep_best {config.keep_best} compares with paired truth: give --eval_paired when the "
                            "held-out A and B files of the same name are pairs, or use fid or kid"
                            + (", or cycle_l1" if "BtoA" in model.generators else ""))
    if config.keep_best == "cycle_l1" and "BtoA" not in model.generators:
        raise CycleGANError(f"--keep_best cycle_l1: --model {config.model} has no generator back to A, so no cycle; "
                            "use fid or kid")


def validate(config: TrainConfig) -> None:
    """Refuse settings that cannot work, naming the flag and what to do."""
    _check_values(config)
    _check_images_and_networks(config)
    _check_numbers(config)
    _check_model(config)  # a model's own needs first: its message says most (CUT: a ResNet generator)
    _check_combinations(config)


# Upper bounds of sizes: beyond them a value is a typo, not a network (and shape arithmetic would
# overflow before any memory estimate could say so).
LARGEST = {"ngf": 4096, "ndf": 4096, "netF_nc": 4096, "n_residual_blocks": 1000, "n_layers_D": 12,
           "img_height": 65536, "img_width": 65536, "load_size": 65536, "batch_size": 65536, "num_patches": 2**20}
LARGEST_FLOAT = 1e6  # weights, rates, gains, margins: nothing meaningful lies beyond
LARGEST_INT = 2**31 - 1  # epochs, steps, intervals (the seed has its own range)
MAX_CHANNELS = 1024  # --channels, --input_nc, --output_nc
PATH_FLAGS = ("dataroot", "output", "resume", "dataset_name")


def check_path_flags(config: TrainConfig) -> None:
    """No path flag empty or holding a NUL byte (checked before any path is looked at)."""
    for flag in PATH_FLAGS:
        value = getattr(config, flag)
        if value is not None and (not str(value).strip() or "\x00" in str(value)):
            raise CycleGANError(f"--{flag} {value!r}: give a path (an empty one, or one with a NUL byte, names "
                                "nothing)")


def _check_values(config: TrainConfig) -> None:
    """Every number finite and within what can mean something; paths not empty."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise CycleGANError(f"--{f.name} {value}: give a finite number")
        if isinstance(value, float) and abs(value) > LARGEST_FLOAT:
            raise CycleGANError(f"--{f.name} {value}: at most {LARGEST_FLOAT:g} in size; no option means anything "
                                "beyond")
        if isinstance(value, int) and not isinstance(value, bool) and f.name != "seed" and abs(value) > LARGEST_INT:
            raise CycleGANError(f"--{f.name} {value}: at most {LARGEST_INT}")
    for flag, top in LARGEST.items():
        value = getattr(config, flag)
        if value is not None and value > top:
            raise CycleGANError(f"--{flag} {value}: at most {top}")
    check_path_flags(config)
    if config.seed is not None and not 0 <= config.seed < 2**63:
        raise CycleGANError(f"--seed {config.seed}: use a seed from 0 to 2**63 - 1")
    if config.lr > 1:
        raise CycleGANError(f"--lr {config.lr}: Adam's learning rate for GANs is around 2e-4; above 1 it can only "
                            "diverge")


def _check_images_and_networks(config: TrainConfig) -> None:
    """Channels, image sizes and the sizes the networks and transforms need."""
    for flag in ("channels", "input_nc", "output_nc"):
        value = getattr(config, flag)
        if value is not None and not 1 <= value <= MAX_CHANNELS:
            raise CycleGANError(f"--{flag} {value}: use 1 (grey), 3 (RGB) or another count from 1 to {MAX_CHANNELS} "
                                "(files of other than 1 or 3 channels: TIFF or .npy)")
    parse_value_range(config.value_range)
    if config.value_range_B is not None:
        parse_value_range(config.value_range_B, "--value_range_B")
    bands = parse_bands(config.display_bands)
    banded = [c for c in (config.channels_A, config.channels_B) if c not in (1, 3)]  # the sides it is for
    if bands is not None and max(bands) >= min(banded or [3]):
        raise CycleGANError(f"--display_bands {config.display_bands}: the images of other than 1 or 3 channels have "
                            f"{min(banded or [3])}, counted from 0")
    if config.channels_A != config.channels_B and config.lambda_id > 0:
        raise CycleGANError(
            f"the identity loss needs both domains to have the same channels (--input_nc {config.channels_A}, "
            f"--output_nc {config.channels_B}): pass --lambda_id 0"
        )
    for flag in ("img_height", "img_width"):
        value = getattr(config, flag)
        if value < 16 or value % 16:
            raise CycleGANError(
                f"--{flag} {value} is not a multiple of 16 (at least 16): the discriminator halves the image "
                f"four times; use e.g. {max(16, (value + 8) // 16 * 16)}"
            )
    if config.img_height == 16 and config.img_width == 16:
        raise CycleGANError(
            "--img_height 16 --img_width 16 is too small: the discriminator's last instance norm needs more than "
            "one value per channel; make one side at least 32"
        )
    if config.netG.startswith("unet"):
        size = generator_multiple(config.netG)
        if config.img_height % size or config.img_width % size:
            raise CycleGANError(
                f"--netG {config.netG} halves the image {size.bit_length() - 1} times: --img_height and --img_width "
                f"must be multiples of {size} (got {config.img_height}x{config.img_width})"
            )
        if config.preprocess in ("none", "scale_width"):
            raise CycleGANError(
                f"--netG {config.netG} needs fixed sizes that are multiples of {size}: use a --preprocess that crops"
            )
    if config.preprocess in ("none", "scale_width") and config.batch_size > 1:
        raise CycleGANError(
            f"--preprocess {config.preprocess} keeps each image's own size, so images cannot be batched: "
            "use --batch_size 1 or a --preprocess that crops"
        )
    if config.preprocess in ("resize_and_crop", "scale_width_and_crop"):
        if config.resize_size < max(config.img_height, config.img_width):
            raise CycleGANError(
                f"--load_size {config.resize_size} is smaller than the crop {config.img_height}x{config.img_width}"
            )
    if config.load_size is not None and config.load_size < 1:
        raise CycleGANError(f"--load_size {config.load_size}: use a positive size")


def _check_numbers(config: TrainConfig) -> None:
    """Counts, rates and weights within their ranges."""
    positive = {"batch_size": 1, "n_epochs": 1, "sample_interval": 1, "log_interval": 1, "ngf": 1, "ndf": 1,
                "n_layers_D": 1, "lr_decay_iters": 1}
    for flag, low in positive.items():
        if getattr(config, flag) < low:
            raise CycleGANError(f"--{flag} {getattr(config, flag)}: use {low} or more")
    if config.max_dataset_size is not None and config.max_dataset_size < 1:
        raise CycleGANError(f"--max_dataset_size {config.max_dataset_size}: use 1 or more")
    if not 0 <= config.epoch < config.n_epochs:
        raise CycleGANError(f"--epoch {config.epoch} must be at least 0 and below --n_epochs {config.n_epochs}")
    if config.lr_policy == "linear" and not 0 <= config.decay_epoch < config.n_epochs:
        raise CycleGANError(
            f"--decay_epoch {config.decay_epoch} must be at least 0 and below --n_epochs {config.n_epochs}: "
            f"the learning rate decays linearly from --decay_epoch to zero at --n_epochs "
            f"(e.g. --decay_epoch {config.n_epochs // 2})"
        )
    if config.checkpoint_interval == 0 or config.checkpoint_interval < -1:
        raise CycleGANError(f"--checkpoint_interval {config.checkpoint_interval}: use -1 (end only) or 1 or more")
    if config.keep_checkpoints < 1:
        raise CycleGANError(f"--keep_checkpoints {config.keep_checkpoints}: keep at least 1")
    if config.max_steps is not None and config.max_steps < 1:
        raise CycleGANError(f"--max_steps {config.max_steps}: use 1 or more")
    check_scoring(config)
    for flag in ("n_residual_blocks", "n_cpu", "pool_size", "save_every_steps"):
        if getattr(config, flag) < 0:
            raise CycleGANError(f"--{flag} {getattr(config, flag)}: use 0 or more")
    if config.lr <= 0:
        raise CycleGANError(f"--lr {config.lr}: use a positive learning rate")
    for flag in ("b1", "b2"):
        if not 0 <= getattr(config, flag) < 1:
            raise CycleGANError(f"--{flag} {getattr(config, flag)}: Adam's betas lie in [0, 1)")
    for flag in ("lambda_cyc", "lambda_id", "lambda_gp", "init_gain"):
        if getattr(config, flag) < 0:
            raise CycleGANError(f"--{flag} {getattr(config, flag)}: use 0 or more")


def _check_combinations(config: TrainConfig) -> None:
    """Options that cannot go together."""
    if config.gan_mode == "wgangp" and config.pool_size > 0:
        raise CycleGANError(
            f"--gan_mode wgangp with --pool_size {config.pool_size}: the Wasserstein critic estimates the distance "
            "to the generator's current images, which a buffer of past fakes biases: pass --pool_size 0"
        )
    if config.load_size is not None and config.preprocess in ("reference", "crop", "none"):
        raise CycleGANError(
            f"--load_size {config.load_size} has no effect with --preprocess {config.preprocess}: use "
            "--preprocess resize_and_crop, scale_width or scale_width_and_crop (the official default is "
            "resize_and_crop)"
        )
    if not config.no_antialias and config.netD == "reference":
        raise CycleGANError(
            "--no_antialias false blurs the discriminator's subsampling as the official CUT's PatchGAN does; the "
            "reference discriminator has no such form: add --netD basic (or n_layers, pixel)"
        )
    if (not config.no_antialias or not config.no_antialias_up) and config.netG != "resnet":
        raise CycleGANError(
            f"--no_antialias false / --no_antialias_up false shape the ResNet generator; --netG {config.netG} has "
            "no such layers: use --netG resnet, or leave them true"
        )
    if config.netD in ("basic", "n_layers"):
        layers = 3 if config.netD == "basic" else config.n_layers_D
        side = discriminator_min_side(config.netD, config.n_layers_D)
        if min(config.img_height, config.img_width) < side:
            raise CycleGANError(
                f"--netD {config.netD} with {layers} layers needs images of at least {side} pixels a side "
                f"(got {config.img_height}x{config.img_width}): use fewer --n_layers_D or larger images"
            )


def _check_model(config: TrainConfig) -> None:
    """The settings the config's ``--model`` needs (its own checks, in its module)."""
    get_model(config.model).check(config)


def describe(config: TrainConfig) -> str:
    """The config as YAML text."""
    import yaml

    return yaml.safe_dump(config.to_json(), sort_keys=False)
