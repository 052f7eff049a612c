"""Activation checkpointing computes the same step with less kept for backward; the memory
estimate; auto mode and the out-of-memory advice."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch
from conftest import SMALL_RUN, write_images

from cyclegan import memory, perf
from cyclegan import train as train_module
from cyclegan.memory import RecomputedSequential, recompute_activations, saved_activation_bytes
from cyclegan.registry import build_networks
from cyclegan.options import TrainConfig
from cyclegan.perf import prepare_networks, resolve_speed
from cyclegan.step import build_optimizers, train_step
from cyclegan.utils import ReplayBuffer

GENERATORS = {
    "reference": dict(img_height=32, img_width=32, n_residual_blocks=2, ngf=8, ndf=8),
    "official": dict(img_height=32, img_width=32, n_residual_blocks=2, ngf=8, ndf=8, upsample="transpose",
                     netD="basic"),
    "unet": dict(img_height=128, img_width=128, netG="unet_128", ngf=4, ndf=4),
}


def run_steps(config: TrainConfig, mode: str, steps: int = 2):
    """Networks prepared as cyclegan train prepares them on the CPU, with ``mode``; the losses and
    the networks after ``steps`` steps, and the global random state after them."""
    torch.manual_seed(0)
    random.seed(0)
    nets = build_networks(config)
    cpu = torch.device("cpu")
    prepare_networks(nets, resolve_speed("auto", "auto", False, cpu), cpu, mode)
    optimizers = build_optimizers(nets, config)
    buffers = {k: ReplayBuffer(2, rng=random.Random(3)) for k in "AB"}
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        shape = (2, 3, config.img_height, config.img_width)
        real_A, real_B = (torch.rand(shape, generator=gen) * 2 - 1 for _ in range(2))
        losses.append(train_step(nets, optimizers, buffers, real_A, real_B, config.lambda_cyc, config.lambda_id))
    return losses, nets, torch.get_rng_state()


@pytest.mark.parametrize("dropout", [False, True], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("generator", sorted(GENERATORS))
@pytest.mark.parametrize("mode", ["blocks", "full"])
def test_a_checkpointed_step_is_the_plain_step_bit_for_bit(generator, dropout, mode):
    config = TrainConfig(**GENERATORS[generator], use_dropout=dropout)
    plain_losses, plain, plain_rng = run_steps(config, "off")
    losses, nets, rng = run_steps(config, mode)
    assert any(isinstance(m, RecomputedSequential) for m in nets["G_AB"].modules())
    for got, want in zip(losses, plain_losses):
        for k in want:
            assert torch.equal(got[k], want[k]), k
    for name in plain:
        for (key, a), b in zip(nets[name].state_dict().items(), plain[name].state_dict().values()):
            assert torch.equal(a, b), (name, key)
    assert torch.equal(rng, plain_rng)  # dropout's recomputation drew nothing more


def test_checkpointing_keeps_modules_parameters_and_keys():
    config = TrainConfig(**GENERATORS["reference"])
    net = build_networks(config)["G_AB"]
    keys = list(net.state_dict())
    params = [id(p) for p in net.parameters()]
    recompute_activations(net, "full")
    assert list(net.state_dict()) == keys and [id(p) for p in net.parameters()] == params
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    reference = copy.deepcopy(net)
    with torch.no_grad():  # sampling and inference run it plainly
        assert torch.equal(net(x), reference(x))


def test_checkpointing_keeps_far_less_for_backward():
    """Measured on the meta device: at 64x64, ``blocks`` keeps about half of what the plain step
    keeps, ``full`` about a fifth (docs/benchmarks.md has the measured peaks)."""
    config = TrainConfig(img_height=64, img_width=64)
    off, blocks, full = (saved_activation_bytes(config, mode) for mode in ("off", "blocks", "full"))
    assert full < 0.3 * off and blocks < 0.6 * off, (off, blocks, full)
    # and it grows with the pixels, as the real peak does
    assert saved_activation_bytes(TrainConfig(img_height=128, img_width=128), "off") > 3.5 * off


# A value for every setting the meta-device figures ignore, each unlike its default.
BOOKKEEPING = dict(dataroot="elsewhere", output="out", dataset_name="horse2zebra", seed=7, overwrite=True, resume="run",
                   epoch=3, n_epochs=9, decay_epoch=4, n_cpu=1, sample_interval=7, checkpoint_interval=2,
                   keep_checkpoints=1, save_every_steps=5, max_steps=10, logger="none", log_interval=3, eval_every=1,
                   eval_every_steps=4, keep_best="fid", early_stop=2)


def test_meta_figures_are_computed_once_per_shape_of_step_and_the_settings_left_out_change_nothing(monkeypatch):
    config = TrainConfig(img_height=32, img_width=32, n_residual_blocks=1, ngf=8, ndf=8, model="cut")
    assert set(BOOKKEEPING) == memory._NOT_SHAPING
    passes = []
    on_meta = memory.step_on_meta

    def counted(*args, **kwargs):
        passes.append(args[0])
        return on_meta(*args, **kwargs)

    monkeypatch.setattr(memory, "step_on_meta", counted)
    monkeypatch.setattr(perf, "step_on_meta", counted)
    monkeypatch.setattr(memory, "_figures", {})
    figures = (saved_activation_bytes(config, "off"), perf.step_flops(config))
    assert len(passes) == 2
    elsewhere = dataclasses.replace(config, **BOOKKEEPING)
    assert (saved_activation_bytes(elsewhere, "off"), perf.step_flops(elsewhere)) == figures
    assert len(passes) == 2  # remembered
    memory._figures.clear()  # and right: computed afresh for that config, the figures are the same
    assert (saved_activation_bytes(elsewhere, "off"), perf.step_flops(elsewhere)) == figures
    assert len(passes) == 4 and passes[-1] is elsewhere
    memory._figures.clear()  # (each time: the count once depended on which addresses Python reused)
    assert saved_activation_bytes(config, "off") == figures[0]
    # what shapes the step is computed again: another mode, batch, width, loss
    assert saved_activation_bytes(config, "full") < figures[0]
    assert perf.step_flops(config, batch_size=2) == 2 * figures[1]
    wider = dataclasses.replace(config, ngf=16)
    assert saved_activation_bytes(wider, "off") > figures[0] and perf.step_flops(wider) > figures[1]
    no_identity = dataclasses.replace(config, nce_idt=False)  # FastCUT's: no identity pass
    assert perf.step_flops(no_identity) < figures[1]
    assert len(passes) == 10


def test_auto_takes_full_when_the_step_would_not_fit(monkeypatch):
    config = TrainConfig(img_height=64, img_width=64, activation_checkpointing="auto")
    cpu = torch.device("cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**40)
    assert memory.resolve_recompute(config, cpu) == "off"
    monkeypatch.setattr(memory, "available_bytes", lambda device: saved_activation_bytes(config, "off"))
    assert memory.resolve_recompute(config, cpu) == "full"


def test_running_out_of_memory_says_which_flag_and_size_would_fit(tmp_path, monkeypatch, caplog):
    """A step that runs out of memory (as CUDA reports it) ends the run with advice, not a
    traceback: the flag, and an image size whose estimate fits what the device has."""
    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    for domain in "AB":
        write_images(tmp_path / "data" / "train" / domain, 2, size=(256, 256))
    monkeypatch.setattr(train_module, "run_step", exhausted)
    monkeypatch.setattr(train_module, "check_fits", lambda *args: None)  # the estimate's refusal: the next test
    monkeypatch.setattr(memory, "available_bytes", lambda device: 256 * 2**20)
    code = train_module.main(["--dataroot", str(tmp_path / "data"), "--output", str(tmp_path / "run"), *SMALL_RUN,
                              "--img_height", "256", "--img_width", "256", "--logger", "none"])
    assert code == 2
    message = caplog.text
    assert "out of memory" in message and "--activation_checkpointing full" in message
    assert "--img_height 128 --img_width 128" in message and "--resume" in message
    assert "Traceback" not in message


def test_a_run_that_cannot_fit_is_refused_before_anything_is_allocated(tmp_path, monkeypatch, caplog):
    """Weights, gradients, Adam's moments and one step's activations, estimated on the meta
    device, beyond the free memory: refused with what would fit, before any network is built."""
    for domain in "AB":
        write_images(tmp_path / "data" / "train" / domain, 2, size=(128, 128))
    built = []
    monkeypatch.setattr(train_module, "build_networks", lambda config: built.append(config))
    config = TrainConfig(img_height=128, img_width=128, n_residual_blocks=1, ngf=16, ndf=16)
    need = memory.weight_bytes(config) + saved_activation_bytes(config, "off")
    monkeypatch.setattr(memory, "available_bytes", lambda device: need - 1)
    args = ["--dataroot", str(tmp_path / "data"), "--output", str(tmp_path / "run"), *SMALL_RUN, "--logger", "none"]
    assert train_module.main([*args, "--img_height", "128", "--img_width", "128"]) == 2
    assert f"needs at least {memory.human_bytes(need)}" in caplog.text and "--img_height 64" in caplog.text
    caplog.clear()
    assert train_module.main([*args, "--ngf", "256", "--ndf", "16"]) == 2  # the weights alone
    assert "try smaller networks (--ngf, --ndf, --n_residual_blocks)" in caplog.text
    assert not built and "Traceback" not in caplog.text


def test_unknown_modes_are_refused():
    with pytest.raises(ValueError, match="use off, blocks or full"):
        recompute_activations(build_networks(TrainConfig(**GENERATORS["reference"]))["G_AB"], "most")


def test_bad_segments_are_refused():
    with pytest.raises(ValueError, match="do not cover"):
        RecomputedSequential([torch.nn.ReLU(), torch.nn.ReLU()], [(0, 1, True)])
