"""The training command end to end (real processes, real files), the reference flags, restarts
with --epoch, and every bad input stopping before any work with a clear message."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SMALL_RUN, run_here, write_images
from PIL import Image

from cyclegan.checkpoint import load_checkpoint
from cyclegan.models import NETWORK_NAMES
from cyclegan.registry import build_networks
from cyclegan.options import TrainConfig, parse_config
from cyclegan.step import build_optimizers, train_step
from cyclegan.utils import ReplayBuffer
from tests_flags import REFERENCE_FLAGS


LOSS_LINE = re.compile(
    r"D (?P<D>\S+) G (?P<G>\S+) adv (?P<adv>\S+) cycle (?P<cycle>\S+) identity (?P<identity>\S+) \| (?P<ips>\S+) img/s \| "
    r"(?P<peak>\d+)% of peak"
)


def test_every_reference_flag_with_its_default():
    config, explicit, _ = parse_config([])
    assert explicit == set()
    for name, default in REFERENCE_FLAGS.items():
        assert getattr(config, name) == default, name
    given, _, _ = parse_config([f"--{k}={v}" for k, v in {"n_epochs": 7, "lr": 0.1, "img_height": 32}.items()])
    assert (given.n_epochs, given.lr, given.img_height) == (7, 0.1, 32)


def test_a_step_updates_all_four_networks_and_returns_finite_losses():
    torch.manual_seed(0)
    config = TrainConfig(img_height=32, img_width=32, n_residual_blocks=1)
    nets = build_networks(config)
    before = {n: [p.detach().clone() for p in nets[n].parameters()] for n in NETWORK_NAMES}
    losses = train_step(nets, build_optimizers(nets, config), {"A": ReplayBuffer(), "B": ReplayBuffer()},
                        torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1, 10.0, 5.0)
    assert set(losses) == {"D_A", "D_B", "D", "G", "adv", "cycle", "identity"}
    assert all(math.isfinite(v.item()) for v in losses.values())
    for name in NETWORK_NAMES:
        changed = [not torch.equal(a, b) for a, b in zip(before[name], nets[name].parameters())]
        assert all(changed), name
    expected_G = losses["adv"] + 10.0 * losses["cycle"] + 5.0 * losses["identity"]
    assert losses["G"].item() == pytest.approx(expected_G.item(), rel=1e-5)


def test_grey_to_colour_domains_train_end_to_end(image_folders, tmp_path):
    run = tmp_path / "run"
    result = run_here("train", "--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN, "--input_nc", "1",
                     "--output_nc", "3", "--lambda_id", "0", "--n_epochs", "1", "--decay_epoch", "0",
                     "--batch_size", "2")
    assert result.returncode == 0, result.stderr
    grid = Image.open(run / "samples" / "0000000.png")
    assert grid.mode == "RGB"
    states, _ = load_checkpoint(run / "checkpoints" / "epoch_1.safetensors")
    assert states["G_AB"]["model.1.weight"].shape[1] == 1 and states["G_BA"]["model.1.weight"].shape[1] == 3


def test_train_end_to_end_writes_samples_checkpoints_and_config(image_folders, tmp_path):
    run = tmp_path / "run"
    result = run_here(
        "train", "--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN,
        "--n_epochs", "2", "--decay_epoch", "1", "--batch_size", "2", "--sample_interval", "2",
        "--checkpoint_interval", "1", "--n_cpu", "2",  # real worker processes
    )
    assert result.returncode == 0, result.stderr
    lines = [m.groupdict() for m in LOSS_LINE.finditer(result.stderr)]
    assert len(lines) == 4  # 2 epochs x 2 batches, each logged
    assert all(math.isfinite(float(v)) for line in lines for v in line.values())
    assert "[Epoch 2/2] [Batch 2/2]" in result.stderr and "ETA" in result.stderr

    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples == ["0000000.png", "0000002.png"]
    grid = Image.open(run / "samples" / "0000002.png")
    # Two test images a row; four rows (real_A, fake_B, real_B, fake_A), each padded on both sides.
    assert grid.size == (2 + 2 * 34, 4 * 36)

    config = json.loads((run / "config.json").read_text())
    assert config["n_epochs"] == 2 and config["seed"] == 0 and config["dataroot"] == str(image_folders)

    states = {}
    for epoch in (1, 2):
        states[epoch], meta = load_checkpoint(run / "checkpoints" / f"epoch_{epoch}.safetensors")
        assert meta["epoch"] == epoch and meta["config"]["img_height"] == 32
        nets = build_networks(TrainConfig(img_height=32, img_width=32, n_residual_blocks=1, ngf=16, ndf=16))
        for name in NETWORK_NAMES:
            nets[name].load_state_dict(states[epoch][name], strict=True)
    assert not torch.equal(states[1]["G_AB"]["model.1.weight"], states[2]["G_AB"]["model.1.weight"])
    assert not any(p.name.endswith(".tmp") for p in run.rglob("*"))


def test_epoch_flag_restarts_from_that_checkpoint(image_folders, tmp_path):
    run = tmp_path / "run"
    common = ("--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN, "--batch_size", "4",
              "--sample_interval", "100")
    first = run_here("train", *common, "--n_epochs", "2", "--decay_epoch", "1", "--checkpoint_interval", "1")
    assert first.returncode == 0, first.stderr
    epoch1 = (run / "checkpoints" / "epoch_1.safetensors").read_bytes()
    (run / "checkpoints" / "epoch_2.safetensors").unlink()

    again = run_here("train", *common, "--epoch", "1", "--n_epochs", "3", "--decay_epoch", "1")
    assert again.returncode == 0, again.stderr
    assert "starting from" in again.stderr and "epoch_1.safetensors" in again.stderr
    assert "[Epoch 2/3]" in again.stderr and "[Epoch 1/3]" not in again.stderr
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*")) == ["epoch_1.safetensors",
                                                                           "epoch_3.safetensors"]
    assert (run / "checkpoints" / "epoch_1.safetensors").read_bytes() == epoch1

    missing = run_here("train", *common, "--epoch", "2", "--n_epochs", "3", "--decay_epoch", "1")
    assert missing.returncode == 2
    assert "epoch_2.safetensors" in missing.stderr and "1, 3" in missing.stderr


def test_a_new_run_does_not_overwrite_an_old_one(image_folders, tmp_path):
    run = tmp_path / "run"
    common = ("--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN, "--n_epochs", "1",
              "--decay_epoch", "0", "--batch_size", "4")
    assert run_here("train", *common).returncode == 0
    before = (run / "checkpoints" / "epoch_1.safetensors").read_bytes()
    second = run_here("train", *common, "--seed", "1")
    assert second.returncode == 2 and "--overwrite" in second.stderr
    assert (run / "checkpoints" / "epoch_1.safetensors").read_bytes() == before
    assert run_here("train", *common, "--seed", "1", "--overwrite").returncode == 0
    assert (run / "checkpoints" / "epoch_1.safetensors").read_bytes() != before


def test_train_without_a_dataset_uses_the_demo_data(tmp_path):
    result = run_here("train", *SMALL_RUN, "--n_epochs", "1", "--decay_epoch", "0", "--max_steps", "1",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "built-in demo data" in result.stderr
    run = tmp_path / "runs" / "demo"
    assert len(list((run / "demo_data" / "train" / "A").glob("*.png"))) == 200
    assert (run / "checkpoints" / "resume" / "step_000000001" / "networks.safetensors").is_file()
    assert json.loads((run / "config.json").read_text())["dataset_name"] == "demo"


def test_one_channel_training(image_folders, tmp_path):
    run = tmp_path / "run"
    result = run_here("train", "--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN,
                     "--channels", "1", "--n_epochs", "1", "--decay_epoch", "0", "--batch_size", "4")
    assert result.returncode == 0, result.stderr
    assert Image.open(run / "samples" / "0000000.png").mode == "L"
    states, _ = load_checkpoint(run / "checkpoints" / "epoch_1.safetensors")
    assert states["G_AB"]["model.1.weight"].shape == (16, 1, 7, 7)


def make_bad_input(kind: str, root: Path) -> tuple[list[str], str]:
    """Build one kind of bad input under ``root``; return the extra flags and what the message must name."""
    data = root / "data"
    write_images(data / "train" / "A", 2, seed=1)
    write_images(data / "train" / "B", 2, seed=2)
    flags = ["--dataroot", str(data), "--img_height", "32", "--img_width", "32"]
    if kind == "missing folder":
        return ["--dataroot", str(root / "nowhere")], str(root / "nowhere")
    if kind == "missing dataset_name":
        return ["--dataset_name", "horse2zebra"], "horse2zebra"
    if kind == "empty domain":
        shutil.rmtree(data / "train" / "B")
        (data / "train" / "B").mkdir()
        return flags, str(data / "train" / "B")
    if kind == "no image files":
        shutil.rmtree(data / "train" / "A")
        (data / "train" / "A").mkdir()
        (data / "train" / "A" / "list.csv").write_text("a,b\n")
        return flags, str(data / "train" / "A")
    if kind == "truncated image":
        bad = data / "train" / "A" / "img_001.png"
        bad.write_bytes(bad.read_bytes()[:200])
        return flags, str(bad)
    if kind == "text named png":
        bad = data / "train" / "B" / "notes.png"
        bad.write_text("I am a text file")
        return flags, str(bad)
    if kind == "height not multiple of 16":
        return flags[:2] + ["--img_height", "100"], "--img_height 100"
    if kind == "width not multiple of 16":
        return flags[:2] + ["--img_width", "33"], "--img_width 33"
    if kind == "channels":
        return flags + ["--channels", "0"], "--channels 0"
    if kind == "batch size":
        return flags + ["--batch_size", "0"], "--batch_size 0"
    if kind == "decay after end":
        return flags + ["--n_epochs", "5"], "--decay_epoch 100"
    if kind == "no cuda":
        return flags + ["--device", "cuda"], "--device cuda"
    raise AssertionError(kind)


BAD_INPUTS = [
    "missing folder", "missing dataset_name", "empty domain", "no image files", "truncated image", "text named png",
    "height not multiple of 16", "width not multiple of 16", "channels", "batch size", "decay after end",
]
if not torch.cuda.is_available():
    BAD_INPUTS.append("no cuda")


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_stops_before_training_with_a_clear_message(kind, tmp_path):
    flags, named = make_bad_input(kind, tmp_path)
    run = tmp_path / "run"
    result = run_here("train", "--n_epochs", "200", *flags, "--output", str(run), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert not run.exists()  # nothing written


def test_bad_images_are_all_listed_in_one_message(tmp_path):
    flags, _ = make_bad_input("truncated image", tmp_path)
    (tmp_path / "data" / "train" / "B" / "empty.jpg").write_bytes(b"")
    result = run_here("train", *flags, "--output", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "2 of 5 image files cannot be used" in result.stderr
    assert "img_001.png" in result.stderr and "empty.jpg" in result.stderr
