"""pix2pix (``--model pix2pix``): its step against a literal transcription of the official
``Pix2PixModel.optimize_parameters``, its presets, paired data in both layouts, the refusals, and
every command on a pix2pix run (train, translate and the missing direction, export, serve,
evaluate against the paired truth, report, the demo)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_losses_and_weights, run_here, write_inception_stand_in
from PIL import Image
from torch import nn

from cyclegan import evaluate, export, translate
from cyclegan import train as train_module
from cyclegan.checkpoint import load_checkpoint
from cyclegan.errors import CycleGANError
from cyclegan.options import parse_config, validate
from cyclegan.registry import build_networks, get_model
from cyclegan.serve import Translator
from cyclegan.step import build_optimizers, lr_factor, run_step

TINY = ("--img_height", "32", "--img_width", "32", "--netG", "resnet", "--n_residual_blocks", "1", "--ngf", "8",
        "--ndf", "8", "--n_cpu", "0", "--seed", "0")


def tiny_config(*flags: str):
    config, _, _ = parse_config(["--model", "pix2pix", *TINY, *flags])
    validate(config)
    return config


class OfficialGANLoss(nn.Module):
    """The official ``GANLoss('vanilla')``: BCEWithLogits against a tensor of the label."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = nn.BCEWithLogitsLoss()

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        return self.loss(prediction, torch.full_like(prediction, 1.0 if target_is_real else 0.0))


def official_optimize_parameters(netG, netD, opt_G, opt_D, real_A, real_B, lambda_L1):
    """A literal transcription of the official pix2pix_model.py: forward, backward_D, backward_G."""
    criterionGAN, criterionL1 = OfficialGANLoss(), nn.L1Loss()
    fake_B = netG(real_A)
    for p in netD.parameters():
        p.requires_grad = True
    opt_D.zero_grad()
    fake_AB = torch.cat((real_A, fake_B), 1)
    loss_D_fake = criterionGAN(netD(fake_AB.detach()), False)
    real_AB = torch.cat((real_A, real_B), 1)
    loss_D_real = criterionGAN(netD(real_AB), True)
    loss_D = (loss_D_fake + loss_D_real) * 0.5
    loss_D.backward()
    opt_D.step()
    for p in netD.parameters():
        p.requires_grad = False
    opt_G.zero_grad()
    fake_AB = torch.cat((real_A, fake_B), 1)
    loss_G_GAN = criterionGAN(netD(fake_AB), True)
    loss_G_L1 = criterionL1(fake_B, real_B) * lambda_L1
    loss_G = loss_G_GAN + loss_G_L1
    loss_G.backward()
    opt_G.step()
    for p in netD.parameters():
        p.requires_grad = True
    return {"D": loss_D.item(), "G": loss_G.item(), "adv": loss_G_GAN.item(), "L1": loss_G_L1.item() / lambda_L1}


def test_the_presets_are_the_official_pix2pix():
    config, _, _ = parse_config(["--model", "pix2pix"])
    assert (config.netG, config.netD, config.norm, config.gan_mode, config.pool_size) == (
        "unet_256", "basic", "batch", "vanilla", 0)
    assert config.use_dropout and config.lambda_L1 == 100.0 and config.batch_size == 1
    assert (config.n_epochs, config.decay_epoch, config.lr, config.b1) == (200, 99, 0.0002, 0.5)
    # The official 100 epochs at the initial rate and 100 decaying, 1 - max(0, e + 1 - 100) / 101.
    assert [lr_factor(config, e) for e in (99, 100, 199)] == pytest.approx([1.0, 1 - 1 / 101, 1 - 100 / 101])
    nets = build_networks(tiny_config())
    assert set(nets) == {"G_AB", "D_B"}
    assert nets["D_B"].model[0].in_channels == 6  # the discriminator sees A and B stacked
    with pytest.raises(CycleGANError, match="--lambda_L1"):
        tiny_config("--lambda_L1", "-1")
    with pytest.raises(CycleGANError, match="wgangp"):
        tiny_config("--gan_mode", "wgangp")


@pytest.mark.parametrize("netG", ["resnet", "unet_128"])
def test_the_step_is_the_official_one(netG):
    size = "128" if netG == "unet_128" else "32"
    config = tiny_config("--netG", netG, "--img_height", size, "--img_width", size)
    torch.manual_seed(0)
    nets = build_networks(config)
    theirs = copy.deepcopy(nets)
    opts = build_optimizers(nets, config)
    their_opts = {"G": torch.optim.Adam(theirs["G_AB"].parameters(), lr=config.lr, betas=(config.b1, config.b2)),
                  "D": torch.optim.Adam(theirs["D_B"].parameters(), lr=config.lr, betas=(config.b1, config.b2))}
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        real_A = torch.rand(1, 3, int(size), int(size), generator=g) * 2 - 1
        real_B = torch.rand(1, 3, int(size), int(size), generator=g) * 2 - 1
        rng = torch.get_rng_state()  # the same dropout masks on both sides
        ours = run_step(config, nets, opts, {"A": None, "B": None}, real_A, real_B)
        torch.set_rng_state(rng)
        want = official_optimize_parameters(theirs["G_AB"], theirs["D_B"], their_opts["G"], their_opts["D"],
                                            real_A, real_B, config.lambda_L1)
        for key in ("D", "G", "adv", "L1"):
            assert float(ours[key]) == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    for name in ("G_AB", "D_B"):
        for (k, a), b in zip(nets[name].state_dict().items(), theirs[name].state_dict().values()):
            # Adam divides by the root of tiny second moments: float noise in a gradient near zero
            # moves a weight by up to ~1e-5 (a twentieth of one update of lr 2e-4); a different
            # step moves whole tensors by whole updates.
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=lambda m, k=k: f"{name}.{k}: {m}")


def paired_folders(root: Path, n: int = 4, size=(40, 36)) -> Path:
    """train and test pairs by name: B is A's colours inverted (a mapping pix2pix learns)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 2)):
        for k in range(count):
            a = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size, Image.BILINEAR)
            for domain, img in (("A", a), ("B", Image.fromarray(255 - np.asarray(a)))):
                (root / split / domain).mkdir(parents=True, exist_ok=True)
                img.save(root / split / domain / f"{k:03d}.png")
    return root


def test_every_command_on_a_pix2pix_run(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data = paired_folders(tmp_path / "pairs")
    run = tmp_path / "run"
    assert train_module.main(["--model", "pix2pix", "--dataroot", str(data), "--output", str(run), *TINY,
                              "--n_epochs", "2", "--decay_epoch", "1", "--sample_interval", "4"]) == 0
    states, meta = load_checkpoint(run / "checkpoints" / "epoch_2.safetensors")
    assert set(states) == {"G_AB", "D_B"} and meta["config"]["model"] == "pix2pix"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"adv", "L1", "D_B", "G"} <= set(records[-1]) and "cycle" not in records[-1]
    assert "L1" in caplog.text  # the progress line shows the model's own terms
    grid = Image.open(sorted((run / "samples").glob("*.png"))[0])
    pad = (grid.size[0] - 2 * 32) // 3  # two sample images a row
    assert grid.size[1] == 3 * (32 + 2 * pad)  # real A, G(A), the paired B: three rows (a grid each)
    assert "L1" in (run / "report.html").read_text()
    out = tmp_path / "out"
    assert translate.main(["--checkpoint", str(run), "--input", str(data / "test" / "A"), "--output", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 2
    caplog.clear()
    assert translate.main(["--checkpoint", str(run), "--direction", "BtoA", "--input", str(data / "test" / "A"),
                           "--output", str(tmp_path / "none")]) == 2
    assert "--model pix2pix run, which translates AtoB only" in caplog.text and not (tmp_path / "none").exists()
    assert export.main(["--checkpoint", str(run), "--format", "onnx", "--output", str(tmp_path / "g.onnx")]) == 0
    translator = Translator(str(run), torch.device("cpu"), max_pixels=10**6, out_dir=tmp_path / "served")
    assert list(translator.generators) == ["AtoB"]
    inception = write_inception_stand_in(tmp_path / "inception.pt")
    result = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(run), "--input", str(data / "test" / "A"), "--paired",
                          str(data / "test" / "B"), "--real", str(data / "test" / "B"), "--inception",
                          str(inception), "--kid_subset_size", "2", "--json", str(result)]) == 0
    scores = json.loads(result.read_text())
    assert "psnr" in json.dumps(scores).lower() and "cycle" not in json.dumps(scores).lower()


def test_aligned_images_train_and_unpaired_data_are_refused(tmp_path, caplog):
    folders = paired_folders(tmp_path / "pairs")
    aligned = tmp_path / "aligned" / "train"
    aligned.mkdir(parents=True)
    for a in sorted((folders / "train" / "A").iterdir()):
        b = Image.open(folders / "train" / "B" / a.name)
        both = Image.new("RGB", (80, 36))
        both.paste(Image.open(a), (0, 0))
        both.paste(b, (40, 0))
        both.save(aligned / a.name)
    run = tmp_path / "run"
    assert train_module.main(["--model", "pix2pix", "--dataroot", str(aligned.parent), "--output", str(run), *TINY,
                              "--max_steps", "2", "--logger", "none"]) == 0
    # An unpaired dataset: names that do not pair.
    (folders / "train" / "B" / "000.png").rename(folders / "train" / "B" / "zebra.png")
    caplog.clear()
    assert train_module.main(["--model", "pix2pix", "--dataroot", str(folders), "--output", str(tmp_path / "r2"),
                              *TINY, "--max_steps", "1", "--logger", "none"]) == 2
    assert "000" in caplog.text and "Traceback" not in caplog.text
    empty = tmp_path / "nothing"
    (empty / "train").mkdir(parents=True)
    caplog.clear()
    assert train_module.main(["--model", "pix2pix", "--dataroot", str(empty), "--output", str(tmp_path / "r3"),
                              *TINY, "--max_steps", "1", "--logger", "none"]) == 2
    assert "pairs" in caplog.text


@pytest.mark.long
def test_the_pix2pix_demo_learns_the_paired_mapping(tmp_path):
    run = tmp_path / "demo"
    result = run_here("demo", "--model", "pix2pix", "--output", str(run), "--n_epochs", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    scores = json.loads((run / "demo_results.json").read_text())
    assert scores["psnr_G_AB"] >= scores["psnr_identity"] + 8.0, scores
    assert scores["psnr_G_AB"] >= scores["psnr_mean_B"] + 3.0, scores
    assert get_model("pix2pix").paired and set(load_checkpoint(run / "checkpoints" / "epoch_1.safetensors")[0]) == {
        "G_AB", "D_B"}


@pytest.mark.parametrize("netG, mode", [("resnet", "blocks"), ("unet_128", "blocks"), ("unet_128", "full")])
def test_activation_checkpointing_leaves_the_pix2pix_step_bit_identical(netG, mode):
    # Recomputed blocks redraw their dropout masks from the saved generator state: the same step.
    from cyclegan.memory import recompute_activations

    size = "128" if netG == "unet_128" else "32"
    config = tiny_config("--netG", netG, "--img_height", size, "--img_width", size)
    results = []
    for checkpointing in ("off", mode):
        torch.manual_seed(0)
        nets = build_networks(config)
        recompute_activations(nets["G_AB"], checkpointing)
        opts = build_optimizers(nets, config)
        g = torch.Generator().manual_seed(1)
        batches = [(torch.rand(1, 3, int(size), int(size), generator=g) * 2 - 1,
                    torch.rand(1, 3, int(size), int(size), generator=g) * 2 - 1) for _ in range(2)]
        losses = [run_step(config, nets, opts, {"A": None, "B": None}, a, b) for a, b in batches]
        results.append((losses, {n: net.state_dict() for n, net in nets.items()}))
    assert_same_losses_and_weights(*results)


def test_the_pix2pix_step_under_bfloat16_autocast_and_on_the_meta_device():
    from cyclegan.memory import saved_activation_bytes

    config = tiny_config()
    torch.manual_seed(0)
    nets = build_networks(config)
    opts = build_optimizers(nets, config)
    real_A, real_B = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    losses = run_step(config, nets, opts, {"A": None, "B": None}, real_A, real_B, amp_dtype=torch.bfloat16)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    # The memory estimate runs the model's own step on the meta device: more for a bigger image.
    small = saved_activation_bytes(config)
    assert saved_activation_bytes(dataclasses.replace(config, img_height=64, img_width=64)) > 3 * small > 0
