"""The official pix2pix files: a generator file of the official repository's UnetGenerator
(transcribed literally below) loads through ``generator_from_state_dict`` with its depth, width,
norm and channels, and ``cyclegan translate`` writes what that network computes in eval mode (the
official ``test.py --eval``); the official pix2pix datasets (``.tar.gz``, aligned layout) and
generators download from a local HTTP server beside the CycleGAN ones of the same names."""

from __future__ import annotations

import copy
import functools
import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_download import Server, jpeg_bytes, leftovers
from torch import nn

from cyclegan import download, translate
from cyclegan.errors import CycleGANError
from cyclegan.inference import generator_from_state_dict, load_generator
from cyclegan.models import ResnetGenerator


# A literal transcription of the official repository's UnetGenerator and UnetSkipConnectionBlock
# (models/networks.py), with its get_norm_layer('batch') and pix2pix's default dropout.
class OfficialUnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        if type(norm_layer) == functools.partial:  # noqa: E721 - as the official code tests it
            use_bias = norm_layer.func == nn.InstanceNorm2d
        else:
            use_bias = norm_layer == nn.InstanceNorm2d
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            down = [downconv]
            up = [uprelu, upconv, nn.Tanh()]
            model = down + [submodule] + up
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            down = [downrelu, downconv]
            up = [uprelu, upconv, upnorm]
            model = down + up
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            down = [downrelu, downconv, downnorm]
            up = [uprelu, upconv, upnorm]
            if use_dropout:
                model = down + [submodule] + up + [nn.Dropout(0.5)]
            else:
                model = down + [submodule] + up
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class OfficialUnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        unet_block = OfficialUnetSkipConnectionBlock(ngf * 8, ngf * 8, input_nc=None, submodule=None,
                                                     norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            unet_block = OfficialUnetSkipConnectionBlock(ngf * 8, ngf * 8, input_nc=None, submodule=unet_block,
                                                         norm_layer=norm_layer, use_dropout=use_dropout)
        unet_block = OfficialUnetSkipConnectionBlock(ngf * 4, ngf * 8, input_nc=None, submodule=unet_block,
                                                     norm_layer=norm_layer)
        unet_block = OfficialUnetSkipConnectionBlock(ngf * 2, ngf * 4, input_nc=None, submodule=unet_block,
                                                     norm_layer=norm_layer)
        unet_block = OfficialUnetSkipConnectionBlock(ngf, ngf * 2, input_nc=None, submodule=unet_block,
                                                     norm_layer=norm_layer)
        self.model = OfficialUnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=unet_block,
                                                     outermost=True, norm_layer=norm_layer)

    def forward(self, input):
        return self.model(input)


BATCH = functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)  # get_norm_layer('batch')


def official_pix2pix(num_downs: int, seed: int, ngf: int = 8) -> nn.Module:
    """An official pix2pix generator with weights and running statistics that matter: drawn, not
    the initial ones (a batch norm of mean 0 and variance 1 would hide an eval/train mix-up)."""
    torch.manual_seed(seed)
    net = OfficialUnetGenerator(3, 3, num_downs, ngf, norm_layer=BATCH, use_dropout=True)
    for name, p in net.named_parameters():
        p.data.normal_(1.0 if name.endswith("weight") and p.dim() == 1 else 0.0, 0.1 if p.dim() == 1 else 0.05)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(1000)
    return net.eval()


def official_input(path: Path) -> torch.Tensor:
    """The official test pipeline's tensor: ToTensor, then Normalize((0.5,) * 3, (0.5,) * 3)."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return ((torch.from_numpy(array.copy()).permute(2, 0, 1) - 0.5) / 0.5)[None]


def tensor2im(t: torch.Tensor) -> np.ndarray:
    """The official util.tensor2im: scaled to [0, 255] and truncated (this program rounds)."""
    array = t[0].detach().float().numpy()
    return ((np.transpose(array, (1, 2, 0)) + 1) / 2.0 * 255.0).astype(np.uint8)


def smooth_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.mark.parametrize("num_downs", [7, 8], ids=["unet_128", "unet_256"])
def test_official_pix2pix_generator_file_translates_as_the_official_eval_mode(tmp_path, num_downs):
    official = official_pix2pix(num_downs, seed=num_downs)
    weights = tmp_path / "latest_net_G.pth"
    torch.save(official.state_dict(), weights)
    assert "model.model.1.model.3.model.2.running_mean" in official.state_dict()  # the official key layout

    side = 2 ** num_downs
    gen = load_generator(weights)
    assert gen.arch == f"unet_{side}" and gen.multiple == side and (gen.in_channels, gen.out_channels) == (3, 3)
    assert not gen.net.training and sum(type(m).__name__ == "UnetSkipConnectionBlock" for m in gen.net.modules()) \
        == num_downs

    square = smooth_image(tmp_path / "in" / "square.png", (side, side), seed=1)
    odd = smooth_image(tmp_path / "in" / "odd.png", (side - 28, side - 38), seed=2)  # padded by reflection
    assert translate.main(["--checkpoint", str(weights), "--input", str(tmp_path / "in"), "--output",
                           str(tmp_path / "out"), "--device", "cpu", "--no_index"]) == 0
    with torch.no_grad():
        want_square = official(official_input(square))
        padded = torch.nn.functional.pad(official_input(odd), (0, 28, 0, 38), mode="reflect")
        want_odd = official(padded)[..., :side - 38, :side - 28]
    for name, want in (("square.png", want_square), ("odd.png", want_odd)):
        got = np.asarray(Image.open(tmp_path / "out" / name), dtype=np.int16)
        assert got.shape == want.shape[2:] + (3,)
        assert np.abs(got - tensor2im(want)).max() <= 1  # rounding here, truncation there
    # The official test.py without --eval: batch statistics of the one image and dropout on.
    trained = copy.deepcopy(official).train()
    with torch.no_grad():
        assert (trained(official_input(square)) - want_square).abs().mean() > 0.01


def test_old_and_data_parallel_pix2pix_files_load_the_same(tmp_path):
    official = official_pix2pix(7, seed=3)
    state = official.state_dict()
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        want = official(x)
    # Saved before PyTorch 0.4 (no num_batches_tracked), or from a DataParallel wrapper.
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    wrapped = {f"module.{k}": v for k, v in state.items()}
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    for variant, atol in ((old, 1e-6), (wrapped, 1e-6), (half, 2e-2)):
        gen = generator_from_state_dict(variant, "variant")
        with torch.no_grad():
            assert torch.allclose(gen(x), want, atol=atol)


def test_unet_norms_and_a_file_that_fits_no_unet(tmp_path):
    for norm_layer, norm in ((functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False),
                              "instance"), (lambda c: nn.Identity(), "none")):
        net = OfficialUnetGenerator(1, 2, 7, 4, norm_layer=norm_layer)
        gen = generator_from_state_dict(net.state_dict())
        assert (gen.arch, gen.in_channels, gen.out_channels) == ("unet_128", 1, 2)
        assert {type(m).__name__ for m in gen.net.modules()} >= ({"InstanceNorm2d"} if norm == "instance" else set())
        x = torch.rand(1, 1, 128, 128)
        with torch.no_grad():
            assert torch.allclose(gen(x), net.eval()(x), atol=1e-6)
    broken = dict(official_pix2pix(7, seed=4).state_dict())
    broken["model.model.1.model.1.weight"] = torch.zeros(3, 3, 4, 4)
    with pytest.raises(CycleGANError, match="do not fit an official U-Net of 7 levels"):
        generator_from_state_dict(broken, "broken.pth")


# ---------------------------------------------------------------------------------------------
# Downloads, against a local server


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def pix2pix_tar(name: str, splits=("train", "val", "test")) -> bytes:
    """An archive in the official pix2pix layout: NAME/{train,val,test}/N.jpg, each A|B side by side."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for k, split in enumerate(splits):
            for i in range(2):
                data = jpeg_bytes(10 * k + i, size=(64, 32))
                info = tarfile.TarInfo(f"{name}/{split}/{i + 1}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_pix2pix_datasets_download_in_the_aligned_layout(tmp_path, server, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    server.files["/datasets/facades.tar.gz"] = pix2pix_tar("facades")
    server.files["/datasets/edges2shoes.tar.gz"] = pix2pix_tar("edges2shoes", ("train", "val"))
    caplog.set_level(logging.INFO)
    assert download.main(["dataset", "pix2pix/facades", "--base_url", server.url]) == 0
    data = tmp_path / "data"
    assert leftovers(data) == ["facades"]  # no archive, no temporary folder
    assert leftovers(data / "facades") == ["test", "train", "val"]
    assert (data / "facades" / "train" / "1.jpg").read_bytes() == jpeg_bytes(0, size=(64, 32))
    # The recipe the download prints trains pix2pix on the aligned pairs as they arrived.
    assert "cyclegan train --model pix2pix --dataroot data/facades" in caplog.text
    from cyclegan import train as train_module

    assert train_module.main(["--model", "pix2pix", "--dataroot", "data/facades", "--output", "runs/facades",
                              "--netG", "resnet", "--n_residual_blocks", "1", "--ngf", "8", "--ndf", "8",
                              "--img_height", "32", "--img_width", "32", "--n_cpu", "0", "--max_steps", "1",
                              "--logger", "none"]) == 0
    # A bare name that only pix2pix has; the archive kept under its own name.
    assert download.main(["dataset", "edges2shoes", "--base_url", server.url, "--keep_archive"]) == 0
    assert leftovers(data) == ["edges2shoes", "edges2shoes.tar.gz", "facades"]
    assert leftovers(data / "edges2shoes") == ["train", "val"]
    # The CycleGAN facades (the bare name) finds the pix2pix one there: refused, nothing touched.
    caplog.clear()
    assert download.main(["dataset", "facades", "--base_url", server.url]) == 2
    assert "holds no train split (trainA and trainB)" in caplog.text and "--root" in caplog.text
    assert leftovers(data / "facades") == ["test", "train", "val"]
    # The pix2pix Cityscapes is withheld, as the official script withholds it.
    assert download.main(["dataset", "pix2pix/cityscapes", "--base_url", server.url]) == 2
    assert "cityscapes-dataset.com" in caplog.text


def test_pix2pix_and_cyclegan_generators_of_one_name_are_kept_apart(tmp_path, server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    official = official_pix2pix(7, seed=5)
    for path, net in (("/models-pytorch/facades_label2photo.pth", official),
                      ("/pretrained_models/facades_label2photo.pth", ResnetGenerator(3, 3, ngf=8, n_blocks=1)),
                      ("/models-pytorch/day2night.pth", official)):
        weights = io.BytesIO()
        torch.save(net.state_dict(), weights)
        server.files[path] = weights.getvalue()
    for name in ("facades_label2photo", "pix2pix/facades_label2photo", "day2night"):
        assert download.main(["model", name, "--base_url", server.url]) == 0
    assert leftovers(tmp_path / "pretrained") == ["facades_label2photo.pth", "pix2pix"]
    assert leftovers(tmp_path / "pretrained" / "pix2pix") == ["day2night.pth", "facades_label2photo.pth"]
    assert load_generator("facades_label2photo").arch == "official"  # the CycleGAN ResnetGenerator
    for name in ("pix2pix/facades_label2photo", "day2night"):
        gen = load_generator(name)
        assert gen.arch == "unet_128" and gen.source.endswith(f"pix2pix/{name.split('/')[-1]}.pth")
    photo = smooth_image(tmp_path / "labels" / "l.png", (128, 128), seed=6)
    assert translate.main(["--checkpoint", "pix2pix/facades_label2photo", "--input", str(photo), "--output",
                           "out", "--device", "cpu", "--no_index"]) == 0
    with torch.no_grad():
        want = tensor2im(official(official_input(photo)))
    assert np.abs(np.asarray(Image.open(tmp_path / "out" / "l.png"), dtype=np.int16) - want).max() <= 1
