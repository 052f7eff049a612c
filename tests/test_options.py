"""The official options: every network's shape and parameter count against the official
architecture, GAN modes on known inputs, LR policies, preprocess modes, the YAML config and its
precedence, every combination training a step, and incompatible ones refused."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import SMALL_RUN, run_here
from PIL import Image
from torch import nn

from cyclegan import datasets
from cyclegan.errors import CycleGANError
from cyclegan.losses import gan_loss, gradient_penalty
from cyclegan.models import (
    GeneratorResNet,
    NLayerDiscriminator,
    PixelDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    define_D,
    define_G,
)
from cyclegan.options import TrainConfig, parse_config, validate
from cyclegan.registry import build_networks
from cyclegan.step import build_optimizers, build_schedulers, step_schedulers, train_step
from cyclegan.utils import ReplayBuffer


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


# --- Parameter counts -------------------------------------------------------------------------
# The official training log prints 11.378 M (resnet_9blocks), 2.765 M (basic) and 54.414 M
# (unet_256, with its default batch norm). The other counts are derived here layer by layer from
# the official definitions: a k x k convolution has k*k*in*out weights plus `out` biases (biases
# only with instance norm, or where the official code always keeps them), a batch norm 2*channels.


def resnet_count(n_blocks: int, ngf: int = 64, c: int = 3) -> int:
    total = conv(c, ngf, 7) + conv(ngf, 2 * ngf, 3) + conv(2 * ngf, 4 * ngf, 3)
    total += n_blocks * 2 * conv(4 * ngf, 4 * ngf, 3)
    total += conv(4 * ngf, 2 * ngf, 3) + conv(2 * ngf, ngf, 3) + conv(ngf, c, 7)
    return total


def unet_count(num_downs: int, ngf: int = 64, c: int = 3) -> int:
    """Batch norm: no convolution biases except the outermost up-convolution."""
    bn = lambda ch: 2 * ch  # noqa: E731
    total = conv(ngf * 8, ngf * 8, 4, False) + conv(ngf * 8, ngf * 8, 4, False) + bn(ngf * 8)  # innermost
    for _ in range(num_downs - 5):  # middle ngf*8 levels
        total += conv(ngf * 8, ngf * 8, 4, False) + bn(ngf * 8) + conv(ngf * 16, ngf * 8, 4, False) + bn(ngf * 8)
    for outer, inner in ((ngf * 4, ngf * 8), (ngf * 2, ngf * 4), (ngf, ngf * 2)):
        total += conv(outer, inner, 4, False) + bn(inner) + conv(inner * 2, outer, 4, False) + bn(outer)
    total += conv(c, ngf, 4, False) + conv(ngf * 2, c, 4, True)  # outermost
    return total


def nlayer_count(n_layers: int, ndf: int = 64, c: int = 3) -> int:
    """Instance norm: every convolution has a bias."""
    total = conv(c, ndf, 4)
    mult = 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2**n, 8)
        total += conv(ndf * prev, ndf * mult, 4)
    return total + conv(ndf * mult, 1, 4)


def test_official_printed_counts():
    assert round(count(ResnetGenerator(3, 3, 64, "instance", False, 9)) / 1e6, 3) == 11.378
    assert round(count(NLayerDiscriminator(3, 64, 3, "instance")) / 1e6, 3) == 2.765
    assert round(count(UnetGenerator(3, 3, 8, 64, "batch")) / 1e6, 3) == 54.414


@pytest.mark.parametrize("blocks", [6, 9])
def test_resnet_counts_both_upsamplings(blocks):
    assert count(ResnetGenerator(3, 3, n_blocks=blocks)) == resnet_count(blocks)
    # The reference's nearest-upsampling generator has exactly as many parameters.
    assert count(GeneratorResNet((3,), blocks)) == resnet_count(blocks)
    assert count(ResnetGenerator(1, 1, ngf=32, n_blocks=blocks)) == resnet_count(blocks, 32, 1)


@pytest.mark.parametrize("num_downs", [7, 8])
def test_unet_counts(num_downs):
    assert count(UnetGenerator(3, 3, num_downs, 64, "batch")) == unet_count(num_downs)


@pytest.mark.parametrize("n_layers", [1, 3, 4, 5])
def test_nlayer_counts(n_layers):
    assert count(NLayerDiscriminator(3, 64, n_layers, "instance")) == nlayer_count(n_layers)


def test_pixel_count():
    assert count(PixelDiscriminator(3, 64, "instance")) == conv(3, 64, 1) + conv(64, 128, 1) + conv(128, 1, 1)
    assert count(PixelDiscriminator(3, 64, "batch")) == conv(3, 64, 1) + conv(64, 128, 1, False) + 256 + conv(
        128, 1, 1, False)


@pytest.mark.parametrize(
    "netD,n_layers,size,expected",
    [("basic", 3, (256, 256), (30, 30)), ("n_layers", 4, (256, 256), (14, 14)), ("n_layers", 2, (64, 96), (14, 22)),
     ("pixel", 3, (37, 50), (37, 50)), ("reference", 3, (256, 256), (16, 16))],
)
def test_discriminator_output_shapes(netD, n_layers, size, expected):
    d = define_D(netD, (3, *size), n_layers_D=n_layers)
    assert d(torch.randn(2, 3, *size)).shape == (2, 1, *expected)


@pytest.mark.parametrize(
    "netG,upsample,size", [("resnet", "nearest", 64), ("resnet", "transpose", 64), ("unet_128", "nearest", 128),
                           ("unet_256", "nearest", 256)],
)
def test_generator_output_shapes(netG, upsample, size):
    g = define_G(netG, 3, 1, ngf=8, upsample=upsample)
    assert g(torch.randn(1, 3, size, size)).shape == (1, 1, size, size)


def test_official_resnet_keys():
    keys = list(ResnetGenerator(3, 3, n_blocks=9).state_dict())
    assert "model.10.conv_block.1.weight" in keys and "model.10.conv_block.5.bias" in keys
    assert keys[-2:] == ["model.26.weight", "model.26.bias"]  # the last 7x7 convolution, as in official files


# --- GAN modes ----------------------------------------------------------------------------------


def test_gan_modes_on_known_inputs():
    pred = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    assert gan_loss(pred, True, "lsgan").item() == pytest.approx((1 + 1 + 4 + 0) / 4)
    assert gan_loss(pred, False, "lsgan").item() == pytest.approx((0 + 4 + 1 + 1) / 4)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731  BCE with logits: real -> softplus(-x)
    assert gan_loss(pred, True, "vanilla").item() == pytest.approx(
        np.mean([softplus(-0.0), softplus(-2.0), softplus(1.0), softplus(-1.0)]))
    assert gan_loss(pred, False, "vanilla").item() == pytest.approx(
        np.mean([softplus(0.0), softplus(2.0), softplus(-1.0), softplus(1.0)]))
    assert gan_loss(pred, True, "wgangp").item() == pytest.approx(-0.5)
    assert gan_loss(pred, False, "wgangp").item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        gan_loss(pred, True, "hinge")


def test_gradient_penalty_of_a_linear_critic():
    # D(x) = sum(w * x) has gradient w everywhere: the penalty is weight * (||w|| - 1)^2.
    critic = nn.Conv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[[[3.0, 0.0], [0.0, 4.0]]]]))
    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    assert gradient_penalty(critic, real, fake, 10.0).item() == pytest.approx(10 * (5 - 1) ** 2, rel=1e-5)


# --- LR policies ----------------------------------------------------------------------------------


def lrs(config: TrainConfig, epochs: int, metrics=None) -> list[float]:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    scheds = build_schedulers({"G": opt}, config)
    out = []
    for e in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        step_schedulers(scheds, metrics[e] if metrics else 0.0)
    return out


def test_lr_policies():
    assert lrs(TrainConfig(n_epochs=6, decay_epoch=2, lr_policy="linear"), 6) == pytest.approx(
        [1, 1, 1, 0.75, 0.5, 0.25])
    assert lrs(TrainConfig(n_epochs=7, lr_policy="step", lr_decay_iters=3), 7) == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.1, 0.01])
    assert lrs(TrainConfig(n_epochs=4, lr_policy="cosine"), 4) == pytest.approx(
        [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    # plateau: x0.2 after the loss fails to improve by 1% for more than 5 epochs
    flat = lrs(TrainConfig(n_epochs=9, lr_policy="plateau"), 9, metrics=[1.0] * 9)
    assert flat == pytest.approx([1] * 7 + [0.2] * 2)
    falling = lrs(TrainConfig(n_epochs=9, lr_policy="plateau"), 9, metrics=[1.0 / (e + 1) for e in range(9)])
    assert falling == pytest.approx([1] * 9)


@pytest.mark.parametrize("n,n_decay", [(2, 2), (100, 100), (5, 1)])
def test_official_epoch_scheme_gives_the_official_linear_rule(n, n_decay):
    config, _, _ = parse_config(["--n_epochs", str(n), "--n_epochs_decay", str(n_decay)])
    official = [1.0 - max(0, e + 1 - n) / (n_decay + 1) for e in range(n + n_decay)]
    assert lrs(config, n + n_decay) == pytest.approx(official)


def test_config_file_values_yield_to_flags_and_their_aliases(tmp_path):
    cfg = tmp_path / "config.json"  # a run folder's config.json holds every field
    cfg.write_text(json.dumps({**TrainConfig(overwrite=True, max_steps=3).to_json(), "n_epochs": 10}))
    config, _, _ = parse_config(["--config", str(cfg), "--crop_size", "128", "--netG", "resnet_6blocks",
                                 "--arch", "official", "--n_epochs_decay", "5"])
    assert (config.img_height, config.n_residual_blocks, config.netD, config.upsample) == (128, 6, "basic",
                                                                                          "transpose")
    assert (config.n_epochs, config.decay_epoch) == (15, 9)
    assert not config.overwrite and config.max_steps is None  # never read from a file


@pytest.mark.parametrize("policy", ["linear", "step", "cosine"])
def test_lr_policies_continue_from_a_restart_epoch(policy):
    full = lrs(TrainConfig(n_epochs=8, decay_epoch=3, lr_policy=policy, lr_decay_iters=2), 8)
    restarted = lrs(TrainConfig(n_epochs=8, decay_epoch=3, lr_policy=policy, lr_decay_iters=2, epoch=5), 3)
    assert restarted == pytest.approx(full[5:])


# --- Preprocessing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,expected",
    [("reference", (256, 256)), ("resize_and_crop", (256, 256)), ("crop", (256, 256)), ("scale_width", (256, 288)),
     ("scale_width_and_crop", (256, 256)), ("none", (332, 500))],
)
def test_preprocess_sizes_on_an_odd_image(mode, expected):
    torch.manual_seed(0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (333, 501, 3), dtype=np.uint8))
    t = datasets.Compose(datasets.build_transforms(mode, 256, 256, load_size=None))
    assert tuple(t(img).shape[1:]) == expected  # (height, width)
    # scale_width: width 286 (the load size), height max(286 * 333 / 501, 256) = 256, both rounded to a
    # multiple of 4 for the generator: 288 x 256
    assert datasets.ScaleWidth(286, 256)(img).size == (288, 256)
    assert datasets.ScaleWidth(400, 32)(img).size == (400, 264)  # 400 * 333 / 501 = 265.9 -> 265 -> 264


def test_preprocess_load_size_and_no_flip():
    img = Image.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3))
    t = datasets.Compose(datasets.build_transforms("resize_and_crop", 16, 16, load_size=16, flip=False))
    out = t(img)
    assert torch.equal(out, t(img))  # load == crop and no flip: deterministic
    assert out.shape == (3, 16, 16)


# --- Config and aliases ---------------------------------------------------------------------------


def test_config_file_precedence(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("n_epochs: 40\nlr: 0.001\nnetD: pixel\nuse_dropout: true\ngan_mode: vanilla\n")
    config, explicit, _ = parse_config(["--config", str(cfg), "--lr", "0.005"])
    assert config.n_epochs == 40  # from the file
    assert config.lr == 0.005  # the flag wins over the file
    assert config.netD == "pixel" and config.use_dropout and config.gan_mode == "vanilla"
    assert config.decay_epoch == 100 and config.batch_size == 1  # defaults where neither says
    assert {"n_epochs", "lr", "netD", "use_dropout", "gan_mode"} <= explicit


def test_config_file_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_epoch: 3\n")
    with pytest.raises(CycleGANError, match=r"bad.yaml.*'n_epoch'"):
        parse_config(["--config", str(bad)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1,\n")
    with pytest.raises(CycleGANError, match="broken.yaml"):
        parse_config(["--config", str(broken)])
    with pytest.raises(CycleGANError, match="missing.yaml"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])


def test_official_names_map_onto_the_reference_ones():
    config, _, _ = parse_config(["--n_epochs", "100", "--n_epochs_decay", "50", "--epoch_count", "11",
                                 "--crop_size", "128", "--netG", "resnet_6blocks", "--arch", "official"])
    assert (config.n_epochs, config.decay_epoch, config.epoch) == (150, 99, 10)
    assert (config.img_height, config.img_width) == (128, 128)
    assert (config.netG, config.n_residual_blocks) == ("resnet", 6)
    assert (config.upsample, config.netD) == ("transpose", "basic")
    overridden, _, _ = parse_config(["--arch", "official", "--netD", "pixel"])
    assert overridden.netD == "pixel" and overridden.upsample == "transpose"


@pytest.mark.parametrize(
    "argv,named",
    [(["--n_epochs_decay", "5", "--decay_epoch", "3"], "--decay_epoch"),
     (["--crop_size", "64", "--img_height", "32"], "--crop_size"),
     (["--netG", "resnet_9blocks", "--n_residual_blocks", "6"], "--n_residual_blocks"),
     (["--epoch_count", "3", "--epoch", "5"], "--epoch_count")],
)
def test_contradicting_aliases_are_refused(argv, named):
    with pytest.raises(CycleGANError, match=named):
        parse_config(argv)


@pytest.mark.parametrize(
    "overrides,named",
    [({"gan_mode": "wgangp"}, "--pool_size 0"),
     ({"input_nc": 1, "output_nc": 3}, "--lambda_id 0"),
     ({"netG": "unet_256", "img_height": 128, "img_width": 128}, "multiples of 256"),
     ({"netG": "unet_128", "preprocess": "none", "img_height": 128, "img_width": 128}, "--preprocess"),
     ({"preprocess": "none", "batch_size": 4}, "--batch_size 1"),
     ({"netD": "n_layers", "n_layers_D": 5, "img_height": 64, "img_width": 64}, "--n_layers_D"),
     ({"preprocess": "resize_and_crop", "load_size": 200}, "--load_size 200"),
     ({"load_size": 512}, "--preprocess reference"),
     ({"lr_policy": "linear", "n_epochs": 5}, "--decay_epoch"),
     ({"log_interval": 0}, "--log_interval 0")],
)
def test_incompatible_combinations_are_refused(overrides, named):
    with pytest.raises(CycleGANError, match=named.replace("-", r"\-")):
        validate(TrainConfig(**overrides))


def test_print_config_and_the_run_folder_config_reproduce_a_run(image_folders, tmp_path):
    shown = run_here("train", "--print_config", "--netD", "pixel", "--n_epochs", "3", "--decay_epoch", "1")
    assert shown.returncode == 0, shown.stderr
    assert "netD: pixel" in shown.stdout and "n_epochs: 3" in shown.stdout

    run = tmp_path / "run"
    official = ("--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN, "--arch", "official",
                "--ngf", "8", "--ndf", "8", "--norm", "batch", "--gan_mode", "vanilla", "--pool_size", "3",
                "--lr_policy", "cosine", "--n_epochs", "2", "--preprocess", "scale_width_and_crop",
                "--load_size", "40", "--no_flip", "--direction", "BtoA", "--max_dataset_size", "3",
                "--serial_batches", "--init_type", "xavier", "--init_gain", "0.5")
    result = run_here("train", *official)
    assert result.returncode == 0, result.stderr
    assert "(3 images in A, 3 in B)" in result.stderr  # --max_dataset_size
    saved = json.loads((run / "config.json").read_text())
    assert saved["netD"] == "basic" and saved["upsample"] == "transpose" and saved["direction"] == "BtoA"
    assert saved["amp"] == "auto" and saved["amp_used"] in ("off", "bf16")  # what --amp auto chose here
    again = run_here("train", "--config", str(run / "config.json"), "--output", str(tmp_path / "again"),
                    "--overwrite", "--print_config")
    assert again.returncode == 0 and "gan_mode: vanilla" in again.stdout and "lr_policy: cosine" in again.stdout


def test_restart_with_other_network_options_lists_the_differences(image_folders, tmp_path):
    run = tmp_path / "run"
    common = ("--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN, "--n_epochs", "3",
              "--decay_epoch", "1", "--batch_size", "4", "--checkpoint_interval", "1")
    assert run_here("train", *common, "--n_epochs", "1", "--decay_epoch", "0").returncode == 0
    result = run_here("train", *common, "--epoch", "1", "--ngf", "32", "--netD", "pixel")
    assert result.returncode == 2
    assert "--ngf 32 (checkpoint: 16)" in result.stderr and "--netD pixel (checkpoint: reference)" in result.stderr


# --- Every combination trains a step -------------------------------------------------------------

NETWORKS = [("resnet", "nearest", 32), ("resnet", "transpose", 32), ("unet_128", "nearest", 128),
            ("unet_256", "nearest", 256)]


@pytest.mark.parametrize(
    "generator,netD,norm",
    list(itertools.product(NETWORKS, ["reference", "basic", "n_layers", "pixel"], ["instance", "batch", "none"])),
    ids=lambda v: v[0] + "-" + v[1] if isinstance(v, tuple) else str(v),
)
def test_every_network_combination_trains_a_step(generator, netD, norm):
    netG, upsample, size = generator
    config = TrainConfig(netG=netG, upsample=upsample, netD=netD, norm=norm, ngf=4, ndf=4, n_residual_blocks=1,
                         n_layers_D=2, img_height=size, img_width=size, batch_size=2)
    validate(config)
    step_and_check(config)


@pytest.mark.parametrize(
    "options",
    [{"gan_mode": "lsgan"}, {"gan_mode": "vanilla"}, {"gan_mode": "wgangp", "pool_size": 0},
     {"pool_size": 0}, {"use_dropout": True}, {"use_dropout": True, "netG": "unet_128", "img_height": 128,
                                               "img_width": 128},
     {"init_type": "xavier"}, {"init_type": "kaiming"}, {"init_type": "orthogonal"}, {"init_type": "normal",
                                                                                          "init_gain": 0.1},
     {"input_nc": 1, "output_nc": 3, "lambda_id": 0.0}, {"channels": 1}],
)
def test_objective_and_init_options_train_a_step(options):
    config = TrainConfig(**{"ngf": 4, "ndf": 4, "n_residual_blocks": 1, "img_height": 32, "img_width": 32,
                            "batch_size": 2, **options})
    validate(config)
    step_and_check(config)


def step_and_check(config: TrainConfig) -> None:
    torch.manual_seed(0)
    nets = build_networks(config)
    pools = {k: ReplayBuffer(config.pool_size) if config.pool_size else None for k in "AB"}
    shape = (config.batch_size, config.img_height, config.img_width)
    real_A = torch.rand(shape[0], config.channels_A, *shape[1:]) * 2 - 1
    real_B = torch.rand(shape[0], config.channels_B, *shape[1:]) * 2 - 1
    before = [p.detach().clone() for p in nets["G_AB"].parameters()]
    losses = train_step(nets, build_optimizers(nets, config), pools, real_A, real_B, config.lambda_cyc,
                        config.lambda_id, config.gan_mode, config.lambda_gp)
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    assert any(not torch.equal(a, b) for a, b in zip(before, nets["G_AB"].parameters()))


def test_config_file_keys_and_on_off_flags_are_the_parsers():
    """A --config file knows its keys from TrainConfig's fields and the official aliases, and its
    true/false keys from the fields' types: those must be the flags the parser has, and its flags
    that take no value (read from --help, not from argparse internals)."""
    import re

    from cyclegan.options import BOOLEAN_FLAGS, CONFIG_FILE_KEYS, get_args_parser

    takes_value, switches = set(), set()
    for line in get_args_parser().format_help().splitlines():
        m = re.match(r"^  (?:-\w, )?(--\w+)( [A-Z_\[{])?", line)
        if m:
            (takes_value if m.group(2) else switches).add(m.group(1)[2:])
    assert takes_value | switches == set(CONFIG_FILE_KEYS) | {"help", "config", "print_config", "debug"}
    assert switches == set(BOOLEAN_FLAGS) | {"help", "print_config", "debug"}


@pytest.mark.parametrize("policy", ["linear", "step", "cosine"])
def test_lr_factor_is_what_the_schedulers_give(policy):
    # One function of policy, epoch and config: a resumed run with changed flags recomputes its
    # rate from it, and it must agree with the schedulers the run steps.
    from cyclegan.step import lr_factor

    config = TrainConfig(lr_policy=policy, n_epochs=12, decay_epoch=6, lr_decay_iters=4, lr=0.001)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    sched = build_schedulers({"G": opt}, config)
    for epoch in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(config.lr * lr_factor(config, epoch), rel=1e-9, abs=1e-15)
        opt.step()
        step_schedulers(sched, 0.0)
    assert lr_factor(TrainConfig(lr_policy="plateau"), 3) is None


@pytest.mark.parametrize("policy", ["step", "cosine"])
def test_a_run_saved_with_the_torch_step_and_cosine_schedulers_resumes_at_the_same_rate(policy):
    # Before lr_factor became the one statement of the policies, step and cosine were torch's
    # StepLR and CosineAnnealingLR, stepped from epoch 0 through a restart's --epoch.
    from cyclegan.resume import scheduler_state

    config = TrainConfig(lr_policy=policy, n_epochs=12, decay_epoch=6, lr_decay_iters=3, epoch=2)
    old_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    old = (torch.optim.lr_scheduler.StepLR(old_opt, step_size=3, gamma=0.1) if policy == "step" else
           torch.optim.lr_scheduler.CosineAnnealingLR(old_opt, T_max=12))
    for _ in range(config.epoch + 4):  # the restart's epochs, then four trained
        old_opt.step()
        old.step()
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    opt.load_state_dict(old_opt.state_dict())
    sched = build_schedulers({"G": opt}, config)["G"]
    sched.load_state_dict(scheduler_state(old.state_dict(), config.epoch))
    for _ in range(5):
        old_opt.step(), old.step(), opt.step(), sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(old_opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
