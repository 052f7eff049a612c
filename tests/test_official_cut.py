"""CUT as the official CUT: its anti-aliased generator and discriminator (against a transcription
of the official networks, ``official_cut.py``), its layer numbering for ``--nce_layers``, its
epochs and learning-rate schedule, the fine-tuning phase of its data pipeline, PatchNCE in
float32 under autocast, and its pretrained generators: downloaded as the one official archive,
loaded by shape into translate, export, evaluate and serve."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_here, write_inception_stand_in
from official_cut import (
    NLayerDiscriminator,
    ResnetGenerator,
    official_is_finetuning,
    official_lambda_rule,
)
from PIL import Image
from test_download import Server, leftovers, tar_with
from test_inference import smooth_image

from cyclegan import download
from cyclegan.datasets import ImageDataset, build_transforms
from cyclegan.errors import CycleGANError
from cyclegan.inference import full_resolution_width, generator_from_state_dict, load_generator
from cyclegan.losses import patch_nce_loss
from cyclegan.models import define_D, define_G, encode_features, encoder_layout
from cyclegan.options import TrainConfig, parse_config
from cyclegan.registry import build_networks, get_model
from cyclegan.step import lr_factor


def official_generator(seed: int, ngf: int = 8, n_blocks: int = 2, **flags) -> ResnetGenerator:
    torch.manual_seed(seed)
    net = ResnetGenerator(3, 3, ngf, n_blocks, **flags)
    with torch.no_grad():  # the biases too, so that nothing is left at a value that hides a difference
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.eval()


@pytest.mark.parametrize("flags", [{}, {"no_antialias_up": True}, {"no_antialias": True, "no_antialias_up": True}],
                         ids=["official CUT", "blurred down only", "no anti-aliasing"])
def test_our_generator_is_the_official_cut_generator(flags):
    official = official_generator(0, **flags)
    ours = define_G("resnet", 3, 3, n_blocks=2, ngf=8, upsample="transpose", init_type=None,
                    antialias=not flags.get("no_antialias", False), antialias_up=not flags.get("no_antialias_up", False))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in official.state_dict().items()}
    ours.load_state_dict(official.state_dict(), strict=True)
    ours.eval()
    for h, w in ((32, 32), (36, 44), (33, 45), (17, 20)):  # even, and odd sides (ceil(n / 2) on the way down)
        x = torch.rand(2, 3, h, w) * 2 - 1
        with torch.no_grad():
            assert torch.equal(ours(x), official(x)), (h, w)


def test_our_patchgan_is_the_official_anti_aliased_one():
    torch.manual_seed(1)
    official = NLayerDiscriminator(3, 8).eval()
    ours = define_D("basic", (3, 64, 64), ndf=8, antialias=True)
    assert list(ours.state_dict()) == list(official.state_dict())
    ours.load_state_dict(official.state_dict(), strict=True)
    for h, w in ((64, 64), (70, 49)):
        x = torch.rand(2, 3, h, w) * 2 - 1
        with torch.no_grad():
            assert torch.equal(ours(x), official(x))


def test_nce_layers_take_the_official_indices_with_their_meaning():
    official = official_generator(2, n_blocks=9)
    config = TrainConfig(model="cut", **get_model("cut").presets, ngf=8, img_height=32, img_width=32)
    G = build_networks(config)["G_AB"]
    G.load_state_dict(official.state_dict(), strict=True)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    layers = [0, 4, 8, 12, 16]
    assert config.nce_layers == "0,4,8,12,16"
    with torch.no_grad():
        want = official(x, layers, encode_only=True)
        got = encode_features(G, x, layers)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert [f.shape[1:] for f in got] == [(3, 38, 38), (16, 32, 32), (32, 16, 16), (32, 8, 8), (32, 8, 8)]
    layout = encoder_layout(9, antialias=True)
    assert [layout[i] for i in layers] == ["the padded image", "downsampling 1's conv", "downsampling 2's conv",
                                           "residual block 1", "residual block 5"]
    plain = encoder_layout(9, antialias=False)
    assert [plain[i] for i in (0, 4, 7, 10, 14)] == [layout[i] for i in layers]


def test_a_layer_past_the_encoder_is_refused_naming_the_valid_ones(tmp_path):
    done = run_here("train", "--model", "cut", "--nce_layers", "0,4,21", "--output", str(tmp_path / "run"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "layer 21 is beyond the encoder of the anti-aliased ResNet generator with 9 residual blocks" in done.stderr
    assert "0 to 20" in done.stderr and "8 downsampling 2's conv" in done.stderr
    assert not (tmp_path / "run").exists()
    done = run_here("train", "--model", "cut", "--no_antialias", "--nce_layers", "0,4,20", "--output",
                    str(tmp_path / "run"))
    assert done.returncode == 2 and "strided (--no_antialias)" in done.stderr and "0 to 18" in done.stderr


def test_anti_aliasing_needs_networks_that_have_it(tmp_path):
    done = run_here("train", "--no_antialias", "false", "--output", str(tmp_path / "run"))
    assert done.returncode == 2 and "--netD basic" in done.stderr and "Traceback" not in done.stderr
    done = run_here("train", "--no_antialias_up", "false", "--netG", "unet_256", "--netD", "basic", "--output",
                    str(tmp_path / "run"))
    assert done.returncode == 2 and "--netG unet_256" in done.stderr
    # CycleGAN's networks are unchanged: no blur anywhere unless asked.
    config, _, _ = parse_config(["--netD", "basic"])
    assert config.no_antialias and config.no_antialias_up and not config.finetune_phase
    assert not any(type(m).__name__.startswith("Blur") for net in build_networks(config).values()
                   for m in net.modules())


@pytest.mark.parametrize("model,official", [("cut", (200, 200)), ("fastcut", (150, 50))])
def test_presets_train_the_official_epochs_at_the_official_rates(model, official):
    config, _, _ = parse_config(["--model", model])
    n_epochs, n_epochs_decay = official
    assert config.n_epochs == n_epochs + n_epochs_decay
    for epoch in range(config.n_epochs):
        assert lr_factor(config, epoch) == pytest.approx(official_lambda_rule(epoch, n_epochs, n_epochs_decay),
                                                         abs=1e-12), epoch
    # The official flags give the same config.
    same, _, _ = parse_config(["--model", model, "--n_epochs", str(n_epochs), "--n_epochs_decay", str(n_epochs_decay)])
    assert (same.n_epochs, same.decay_epoch) == (config.n_epochs, config.decay_epoch)
    assert not config.no_antialias and not config.no_antialias_up and config.finetune_phase


def gradient_image(path: Path, size: tuple[int, int]) -> Path:
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    array = np.stack([x, y, 255 - x], axis=2).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("preprocess", ["reference", "resize_and_crop"])
def test_the_finetuning_phase_sees_whole_images_from_the_first_decaying_epoch(tmp_path, preprocess):
    for domain in ("A", "B"):
        gradient_image(tmp_path / "data" / "train" / domain / "0.png", (96, 64))
    config, _, _ = parse_config(["--model", "cut", "--img_height", "32", "--img_width", "32", "--no_flip",
                                 "--preprocess", preprocess, "--n_epochs", "4", "--n_epochs_decay", "3"])
    from cyclegan.loader import open_run_data

    data = open_run_data(config, tmp_path / "data", tmp_path / "run")
    whole = build_transforms(preprocess, 32, 32, flip=False, finetune=True)
    cropped = build_transforms(preprocess, 32, 32, flip=False)
    plain = ImageDataset(tmp_path / "data", whole, unaligned=True)  # the same draws as the run's
    for epoch in range(config.n_epochs):
        item = data.train[(0, epoch, 0)]["A"]
        finetuning = official_is_finetuning(epoch, 4)
        assert finetuning == (epoch > config.decay_epoch)
        if finetuning:  # the whole image, resized to the crop size (reference: covering it, then cropped)
            assert torch.equal(item, plain[(0, epoch, 0)]["A"])
            if preprocess == "resize_and_crop":  # the square resize: every column of the image is there
                assert torch.equal(item, ImageDataset(tmp_path / "data", whole)[0]["A"])
        else:  # a crop of the larger resize (1.12x the crop), as without the phase
            assert torch.equal(item, ImageDataset(tmp_path / "data", cropped, unaligned=True)[(0, epoch, 0)]["A"])
            assert not torch.equal(item, plain[(0, epoch, 0)]["A"])
    assert data.train[(0, 0, 0)]["A"].shape == data.train[(0, 6, 0)]["A"].shape == (3, 32, 32)


@pytest.mark.long
def test_a_resumed_cut_run_continues_in_the_finetuning_phase(tmp_path):
    """A CUT run stopped inside its fine-tuning phase and resumed trains what a straight run trains."""
    common = ["train", "--model", "cut", "--dataset_name", "demo", "--img_height", "32", "--img_width", "32",
              "--ngf", "8", "--ndf", "8", "--n_residual_blocks", "1", "--nce_layers", "0,4,8,12", "--num_patches",
              "16", "--netF_nc", "16", "--n_cpu", "0", "--logger", "none", "--seed", "3", "--n_epochs", "1",
              "--n_epochs_decay", "2", "--max_dataset_size", "4", "--sample_interval", "1000", "--device", "cpu"]
    assert run_here(*common, "--output", str(tmp_path / "straight")).returncode == 0
    stopped = run_here(*common, "--output", str(tmp_path / "resumed"), "--max_steps", "6")  # epoch 1 of 0..2
    assert stopped.returncode == 0
    assert run_here("train", "--resume", str(tmp_path / "resumed"), "--device", "cpu").returncode == 0
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight" / "checkpoints" / "epoch_3.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "epoch_3.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith(".filt") for k in a)  # the anti-aliased networks were trained


def test_patch_nce_is_float32_under_bfloat16_autocast():
    torch.manual_seed(4)
    q = torch.nn.functional.normalize(torch.randn(2 * 64, 32), dim=1)
    k = torch.nn.functional.normalize(torch.randn(2 * 64, 32), dim=1)
    want = patch_nce_loss(q, k, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = patch_nce_loss(q, k, 2)
        raw = torch.bmm(q.view(2, 64, 32), k.view(2, 64, 32).transpose(2, 1))  # what autocast makes of a logit
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert raw.dtype == torch.bfloat16  # so without the guard the logits would be bfloat16
    assert (raw.float() / 0.07 - torch.bmm(q.view(2, 64, 32), k.view(2, 64, 32).transpose(2, 1)) / 0.07).abs().max() \
        > 1e-3


# ---------------------------------------------------------------------------------------------
# The official CUT files


def as_input(path: Path) -> torch.Tensor:
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2 - 1


def as_uint8(t: torch.Tensor) -> np.ndarray:
    return np.round((t[0].permute(1, 2, 0).numpy() + 1) / 2 * 255).clip(0, 255).astype(np.int16)


def official_on(official: ResnetGenerator, path: Path) -> np.ndarray:
    """The official network on an image, padded by reflection to a multiple of 4 and cropped back
    (what translate does for sides the network would change)."""
    x = as_input(path)
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="reflect")
    with torch.no_grad():
        return as_uint8(official(padded)[..., :h, :w])


def test_an_official_cut_file_translates_exports_evaluates_and_serves_as_the_official_network(tmp_path):
    official = official_generator(5)
    weights = tmp_path / "latest_net_G.pth"
    torch.save(official.state_dict(), weights)
    assert "model.7.filt" in official.state_dict() and "model.14.filt" in official.state_dict()
    gen = load_generator(weights)
    assert gen.arch == "official CUT (anti-aliased)" and (gen.in_channels, gen.out_channels) == (3, 3)
    assert full_resolution_width(gen) == 16  # its first downsampling convolution runs at full resolution
    even = smooth_image(tmp_path / "in" / "even.png", (44, 36), seed=1)
    odd = smooth_image(tmp_path / "in" / "odd.png", (45, 33), seed=2)
    done = run_here("translate", "--checkpoint", str(weights), "--input", str(tmp_path / "in"), "--output",
                    str(tmp_path / "out"), "--device", "cpu", "--no_index")
    assert done.returncode == 0, done.stderr
    for path in (even, odd):
        got = np.asarray(Image.open(tmp_path / "out" / path.name), dtype=np.int16)
        want = official_on(official, path)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1, path.name  # <= 1/255 after rounding
    # export: the ONNX graph computes the same (blur filters and all).
    done = run_here("export", "--checkpoint", str(weights), "--format", "onnx", "--output", str(tmp_path / "g.onnx"))
    assert done.returncode == 0, done.stderr
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 36, 44) * 2 - 1
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.abs(out - official(x).numpy()).max() < 1e-4
    # evaluate: translates with it and scores against paired truth; its PSNR is that of the official outputs.
    for k in range(3):
        smooth_image(tmp_path / "testA" / f"{k}.png", (32, 36), seed=20 + k)
        smooth_image(tmp_path / "testB" / f"{k}.png", (32, 36), seed=30 + k)
    inception = write_inception_stand_in(tmp_path / "inception.pt")
    done = run_here("evaluate", "--checkpoint", str(weights), "--input", str(tmp_path / "testA"), "--real",
                    str(tmp_path / "testB"), "--paired", str(tmp_path / "testB"), "--inception", str(inception),
                    "--kid_subset_size", "2", "--size", "32", "--device", "cpu", "--json", str(tmp_path / "scores.json"))
    assert done.returncode == 0, done.stderr
    l1 = np.mean([np.abs(official_on(official, tmp_path / "testA" / f"{k}.png")
                         - as_uint8(as_input(tmp_path / "testB" / f"{k}.png"))).mean() / 255 for k in range(3)])
    assert json.loads((tmp_path / "scores.json").read_text())["l1"] == pytest.approx(l1, abs=0.002)
    # serve: its translator loads the file as translate does.
    from cyclegan.serve import Translator

    translator = Translator(str(weights), torch.device("cpu"), 10**6, out_dir=tmp_path / "served")
    served, _ = translator(str(even), "AtoB")
    assert np.abs(np.asarray(served, dtype=np.int16) - official_on(official, even)).max() <= 1


def test_an_official_cut_file_that_fits_no_generator_is_one_line(tmp_path):
    state = dict(official_generator(6).state_dict())
    state["model.8.weight"] = torch.zeros(16, 5, 3, 3)
    torch.save(state, tmp_path / "latest_net_G.pth")
    with pytest.raises(CycleGANError) as caught:
        generator_from_state_dict(state, "latest_net_G.pth")
    message = str(caught.value)
    assert "\n" not in message and "official CUT (anti-aliased) ResNet generator" in message
    assert "model.8.weight is (16, 5, 3, 3) where (32, 16, 3, 3) was expected" in message
    done = run_here("translate", "--checkpoint", str(tmp_path / "latest_net_G.pth"), "--input",
                    str(smooth_image(tmp_path / "x.png", (32, 32), 0)), "--output", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def cut_archive(names: list[str], prefix: str = "checkpoints/") -> bytes:
    """An archive in the layout of the official CUT's pretrained_models.tar (gzipped here: the
    reader takes either)."""
    members = {}
    for k, name in enumerate(names):
        for net, module in (("G", official_generator(10 + k)), ("D", NLayerDiscriminator(3, 8))):
            weights = io.BytesIO()
            torch.save(module.state_dict(), weights)
            members[f"{prefix}{name}_pretrained/latest_net_{net}.pth"] = weights.getvalue()
    return tar_with(members)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_the_official_cut_generators_download_once_and_translate_by_name(tmp_path, server, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    names = ["cityscapes_cut", "horse2zebra_cut", "horse2zebra_fastcut"]
    server.files["/pretrained_models.tar"] = cut_archive(names)
    caplog.set_level(logging.INFO)
    assert download.main(["model", "horse2zebra_cut", "--base_url", server.url]) == 0
    assert leftovers(tmp_path / "pretrained") == ["cut"]
    assert leftovers(tmp_path / "pretrained" / "cut") == [f"{n}.pth" for n in names]  # the archive is gone
    requests = len(server.ranges)
    assert download.main(["model", "horse2zebra_fastcut", "--base_url", server.url]) == 0  # already there
    assert "already there" in caplog.text and len(server.ranges) == requests
    photo = smooth_image(tmp_path / "horse.png", (40, 32), seed=3)
    assert run_here("translate", "--checkpoint", "horse2zebra_fastcut", "--input", str(photo), "--output", "out",
                    "--device", "cpu", "--no_index").returncode == 0
    got = np.asarray(Image.open(tmp_path / "out" / "horse.png"), dtype=np.int16)
    assert np.abs(got - official_on(official_generator(12), photo)).max() <= 1
    # The listing names them; one the archive lacks is refused, and nothing is left behind.
    listed = run_here("download", "model", "--list")
    assert "CUT and FastCUT generators" in listed.stdout and "  cat2dog_fastcut" in listed.stdout
    caplog.clear()
    assert download.main(["model", "cat2dog_cut", "--base_url", server.url]) == 1
    assert "holds no cat2dog_cut_pretrained/latest_net_G.pth" in caplog.text
    assert leftovers(tmp_path / "pretrained" / "cut") == [f"{n}.pth" for n in names]


def test_a_generator_of_the_cut_archive_that_does_not_load_is_not_kept(tmp_path, server, caplog):
    weights = io.BytesIO()
    torch.save(official_generator(7).state_dict(), weights)
    server.files["/pretrained_models.tar"] = tar_with({"horse2zebra_cut_pretrained/latest_net_G.pth": b"not weights"})
    with pytest.raises(CycleGANError, match="horse2zebra_cut was not kept, and the archive was deleted"):
        download.download_model("horse2zebra_cut", tmp_path / "pretrained", server.url)
    assert leftovers(tmp_path / "pretrained" / "cut") == []
    # Another one that does not load is left out with a warning; the one asked for is kept.
    server.files["/pretrained_models.tar"] = tar_with({"horse2zebra_cut_pretrained/latest_net_G.pth": weights.getvalue(),
                                                     "cat2dog_cut_pretrained/latest_net_G.pth": b"not weights"})
    caplog.set_level(logging.INFO)
    download.download_model("horse2zebra_cut", tmp_path / "pretrained", server.url)
    assert leftovers(tmp_path / "pretrained" / "cut") == ["horse2zebra_cut.pth"]
    assert "cat2dog_cut.pth was not kept" in caplog.text
