"""Using a trained model: translate (sizes, formats, alpha, bad inputs, tiles, index.html), the
official pretrained generators' files, export to ONNX and TorchScript with onnxruntime parity,
and evaluate (FID and KID against a hand computation, paired metrics, the cycle error)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_here, write_inception_stand_in
from PIL import Image
from torch import nn

from cyclegan.checkpoint import checkpoint_path, save_networks
from cyclegan.inference import Generator, load_generator, translate_image
from cyclegan.registry import build_networks
from cyclegan.options import TrainConfig


# A literal transcription of the official repository's ResnetGenerator and ResnetBlock
# (models/networks.py, instance norm: affine=False, track_running_stats=False; bias on).
class OfficialResnetBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            nn.InstanceNorm2d(dim, affine=False, track_running_stats=False), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True),
            nn.InstanceNorm2d(dim, affine=False, track_running_stats=False),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class OfficialResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, n_blocks=6):
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)  # noqa: E731
        model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=True), norm(ngf),
                 nn.ReLU(True)]
        for i in range(2):
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True),
                      norm(ngf * mult * 2), nn.ReLU(True)]
        for _ in range(n_blocks):
            model += [OfficialResnetBlock(ngf * 4)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2, padding=1,
                                         output_padding=1, bias=True), norm(int(ngf * mult / 2)), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


def image_tensor(path: Path) -> torch.Tensor:
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None]


def to_uint8(t: torch.Tensor) -> np.ndarray:
    return ((t[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def smooth_image(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    small = rng.integers(0, 256, (5, 5, channels), dtype=np.uint8)
    image = Image.fromarray(small[..., 0] if channels == 1 else small, mode).resize(size, Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.mark.parametrize("n_blocks", [6, 9])
def test_official_pretrained_generator_file_translates_exactly(tmp_path, n_blocks):
    torch.manual_seed(n_blocks)
    official = OfficialResnetGenerator(3, 3, ngf=8, n_blocks=n_blocks).eval()
    for p in official.parameters():
        p.data.normal_(0, 0.1)
    state = official.state_dict()
    # Files saved before PyTorch 0.4 carry instance-norm running statistics; the official test
    # script drops them, and so must we.
    state["model.2.running_mean"] = torch.zeros(8)
    state["model.2.running_var"] = torch.ones(8)
    weights = tmp_path / "latest_net_G_A.pth"
    torch.save(state, weights)

    gen = load_generator(weights)
    assert gen.arch == "official" and len([m for m in gen.net.modules() if type(m).__name__ == "ResnetBlock"]) == n_blocks

    photo = smooth_image(tmp_path / "in" / "photo.png", (50, 37), seed=1)  # not multiples of 4
    result = run_here("translate", "--checkpoint", str(weights), "--input", str(photo), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    got = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    x = image_tensor(photo)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode="reflect")  # to 52 x 40, then cropped back
    with torch.no_grad():
        want = to_uint8(official(padded)[..., :37, :50])
    assert got.shape == (37, 50, 3)
    assert np.array_equal(got, want)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "latest_net_G_A.pth"
    torch.save({"model.1.weight": Evil()}, bad)
    photo = smooth_image(tmp_path / "photo.png", (32, 32), seed=1)
    result = run_here("translate", "--checkpoint", str(bad), "--input", str(photo), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "could not be loaded safely" in result.stderr and not (tmp_path / "pwned").exists()


def test_translate_keeps_sizes_names_formats_and_alpha_and_reports_bad_inputs(tmp_path, tiny_run):
    inputs = tmp_path / "inputs"
    big = smooth_image(inputs / "holiday.jpg", (501, 333), seed=1)
    rgba = smooth_image(inputs / "logo.png", (40, 30), seed=2, mode="RGBA")
    smooth_image(tmp_path / "more" / "scan.webp", (36, 44), seed=3, mode="L")
    (inputs / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = run_here("translate", "--checkpoint", str(tiny_run), "--input", str(inputs), str(tmp_path / "more" / "*.webp"),
                     "--output", str(out), "--batch_size", "2")
    assert result.returncode == 1  # one input could not be read; the others were written
    assert "broken.png" in result.stderr and "skipped" in result.stderr
    assert Image.open(out / "holiday.jpg").size == (501, 333)
    assert Image.open(out / "holiday.jpg").format == "JPEG"
    logo = Image.open(out / "logo.png")
    assert logo.size == (40, 30) and logo.mode == "RGBA"
    assert np.array_equal(np.asarray(logo)[..., 3], np.asarray(Image.open(rgba))[..., 3])
    assert Image.open(out / "scan.webp").size == (36, 44)
    assert not (out / "broken.png").exists()
    page = (out / "index.html").read_text()
    assert page.count("<tr>") == 4 and 'src="holiday.jpg"' in page and "inputs/holiday.jpg" in page
    # The full-resolution result is the generator on the reflection-padded image, cropped back.
    gen = load_generator(tiny_run)
    x = image_tensor(big)
    with torch.no_grad():
        want = gen(torch.nn.functional.pad(x, (0, 3, 0, 3), mode="reflect"))[..., :333, :501]
    jpeg = np.asarray(Image.open(out / "holiday.jpg"), dtype=np.float32)
    assert np.abs(jpeg - to_uint8(want).astype(np.float32)).mean() < 2.5  # JPEG quality 95
    # --ext and --resize
    again = run_here("translate", "--checkpoint", str(tiny_run), "--input", str(big), "--output", str(tmp_path / "o2"),
                    "--ext", "png", "--resize", "--no_index")
    assert again.returncode == 0, again.stderr
    assert Image.open(tmp_path / "o2" / "holiday.png").size == (501, 333)
    assert not (tmp_path / "o2" / "index.html").exists()


def test_translate_refuses_bad_flags_and_colliding_names_before_any_work(tmp_path, tiny_run):
    a = smooth_image(tmp_path / "a" / "x.png", (32, 32), seed=1)
    b = smooth_image(tmp_path / "b" / "x.png", (32, 32), seed=2)
    out = tmp_path / "out"
    collide = run_here("translate", "--checkpoint", str(tiny_run), "--input", str(a), str(b), "--output", str(out))
    assert collide.returncode == 2 and "would both be written" in collide.stderr and not out.exists()
    missing = run_here("translate", "--checkpoint", str(tmp_path / "nope"), "--input", str(a), "--output", str(out))
    assert missing.returncode == 2 and "nope" in missing.stderr
    tile = run_here("translate", "--checkpoint", str(tiny_run), "--input", str(a), "--output", str(out), "--tile", "64",
                   "--overlap", "40")
    assert tile.returncode == 2 and "--overlap" in tile.stderr


def test_tiles_blend_back_to_the_whole_image():
    """With a network that returns its input, any tiling must give the image back exactly: the
    blend weights of overlapping tiles sum to one everywhere. A tile as large as the image is
    the whole-image translation."""
    x = torch.rand(1, 3, 70, 101) * 2 - 1
    identity = Generator(nn.Identity(), 3, 3, 4, "identity", "test")
    for tile, overlap in ((32, 8), (48, 16), (64, 0)):
        assert torch.allclose(translate_image(identity, x, tile, overlap), x, atol=1e-6), (tile, overlap)
    torch.manual_seed(0)
    net = build_networks(TrainConfig(img_height=32, img_width=32, n_residual_blocks=1, ngf=8))["G_AB"].eval()
    gen = Generator(net, 3, 3, 4, "net", "reference")
    assert torch.equal(translate_image(gen, x, tile=128, overlap=16), translate_image(gen, x))


def test_export_onnx_and_torchscript_match_pytorch_and_translate_with_onnxruntime(tmp_path, tiny_run):
    import onnxruntime as ort

    onnx_file, ts_file = tmp_path / "g.onnx", tmp_path / "g.pt"
    r1 = run_here("export", "--checkpoint", str(tiny_run), "--format", "onnx", "--output", str(onnx_file),
                 "--direction", "BtoA")
    assert r1.returncode == 0, r1.stderr
    r2 = run_here("export", "--checkpoint", str(tiny_run), "--format", "torchscript", "--output", str(ts_file))
    assert r2.returncode == 0, r2.stderr
    g_ba, g_ab = load_generator(tiny_run, "BtoA"), load_generator(tiny_run, "AtoB")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["direction"] == "BtoA"
    scripted = torch.jit.load(str(ts_file))
    photos = [smooth_image(tmp_path / f"p{k}.png", size, seed=k) for k, size in enumerate(((64, 48), (36, 100)))]
    for x in [image_tensor(p) for p in photos] + [torch.rand(3, 3, 40, 56) * 2 - 1]:  # dynamic batch, height, width
        with torch.no_grad():
            want_ba, want_ab = g_ba(x), g_ab(x)
            assert torch.equal(scripted(x), want_ab)
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        assert (got - want_ba).abs().max() <= 1e-4
    # translate --backend onnxruntime gives the PyTorch backend's images (to a level of rounding).
    for backend, ckpt in (("onnxruntime", onnx_file), ("torch", tiny_run)):
        result = run_here("translate", "--checkpoint", str(ckpt), "--backend", backend, "--direction", "BtoA",
                         "--input", str(photos[1]), "--output", str(tmp_path / backend))
        assert result.returncode == 0, result.stderr
    a = np.asarray(Image.open(tmp_path / "onnxruntime" / "p1.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "torch" / "p1.png"), dtype=np.int16)
    assert a.shape == (100, 36, 3) and np.abs(a - b).max() <= 1


def test_export_writes_the_opset_asked_for_with_the_umask_mode(tmp_path, tiny_run):
    # 13 goes through TorchScript's exporter (torch.export writes 18 at the least; the default
    # 18 is tested above); the file must say 13 and translate with onnxruntime.
    import onnx

    from cyclegan import export, translate

    opset = 13

    out = tmp_path / f"g{opset}.onnx"
    old = os.umask(0o027)
    try:
        assert export.main(["--checkpoint", str(tiny_run), "--format", "onnx", "--output", str(out),
                            "--opset", str(opset)]) == 0
    finally:
        os.umask(old)
    model = onnx.load(str(out))
    assert [(i.domain, i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")] == [("", opset)]
    assert out.stat().st_mode & 0o777 == 0o640
    translated = tmp_path / "t"
    image = smooth_image(tmp_path / "in" / "a.png", (36, 28), seed=1)
    assert translate.main(["--checkpoint", str(out), "--backend", "onnxruntime", "--input", str(image),
                           "--output", str(translated)]) == 0
    assert Image.open(translated / "a.png").size == (36, 28)
    assert export.main(["--checkpoint", str(tiny_run), "--format", "onnx", "--output", str(tmp_path / "x.onnx"),
                        "--opset", "99"]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_an_export_that_fails_its_check_leaves_no_file(tmp_path, tiny_run):
    target = tmp_path / "g.onnx"
    result = run_here("export", "--checkpoint", str(tiny_run), "--format", "onnx", "--output", str(target),
                     "--tolerance", "1e-12")
    assert result.returncode == 2 and "differs from PyTorch" in result.stderr
    assert list(tmp_path.glob("*.onnx*")) == []


class MeanStdFeatures(nn.Module):
    """A small, known feature extractor: per-channel mean and standard deviation, and the means of
    the four quadrants of the grey image (10 features) of uint8 (N, 3, H, W) images."""

    num_features = 10

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.double() / 255
        grey = x.mean(1)
        h, w = grey.shape[-2] // 2, grey.shape[-1] // 2
        quads = [grey[:, :h, :w], grey[:, :h, w:], grey[:, h:, :w], grey[:, h:, w:]]
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), torch.stack([q.mean((1, 2)) for q in quads], 1)], 1).float()


def hand_features(images: list[torch.Tensor]) -> np.ndarray:
    from cyclegan.evaluate import to_uint8 as eval_uint8

    rows = []
    for t in images:
        a = eval_uint8(t).numpy().astype(np.float64) / 255  # (3, 299, 299)
        grey = a.mean(0)
        quads = [grey[:149, :149], grey[:149, 149:], grey[149:, :149], grey[149:, 149:]]
        rows.append(np.concatenate([a.mean((1, 2)), a.std((1, 2), ddof=1), [q.mean() for q in quads]]))
    return np.array(rows, dtype=np.float32).astype(np.float64)


def test_fid_and_kid_match_a_hand_computation():
    from cyclegan.evaluate import compute_metrics, fid_from_features

    gen = torch.Generator().manual_seed(0)
    real = [torch.rand(3, 40, 48, generator=gen) * 1.6 - 0.8 for _ in range(24)]
    fake = [(torch.rand(3, 36, 36, generator=gen) * 1.2 - 0.4) for _ in range(20)]
    result = compute_metrics(fake, real, MeanStdFeatures(), kid_subset_size=20)
    f_real, f_fake = hand_features(real), hand_features(fake)
    assert result["fid"] == pytest.approx(fid_from_features(f_real, f_fake), rel=1e-4)
    assert result["fid"] > 0.01  # the two sets differ: a zero here would be a broken comparison
    # KID: the unbiased MMD^2 with the kernel (x.y / d + 1)^3; subsets of all 20 fake images and
    # 20 of the 24 real ones are random, so compare with the mean over many such subsets.
    rng = np.random.default_rng(0)

    def mmd(x, y):
        d = x.shape[1]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        m = len(x)
        return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()

    estimates = [mmd(f_real[rng.choice(24, 20, replace=False)], f_fake) for _ in range(2000)]
    assert result["kid"] == pytest.approx(np.mean(estimates), rel=0.05, abs=1e-5)
    same = compute_metrics(real[:12], real[:12], MeanStdFeatures(), kid_subset_size=12)
    assert abs(same["fid"]) < 1e-3


def test_evaluate_a_checkpoint_with_paired_truth_and_the_cycle_error(tmp_path, tiny_run):
    inception = write_inception_stand_in(tmp_path / "inception.pt")
    for k in range(6):
        smooth_image(tmp_path / "testA" / f"{k:02d}.png", (36, 32), seed=k)
        smooth_image(tmp_path / "testB" / f"{k:02d}.png", (36, 32), seed=100 + k)
    out = tmp_path / "metrics.json"
    result = run_here("evaluate", "--checkpoint", str(tiny_run), "--input", str(tmp_path / "testA"), "--real",
                     str(tmp_path / "testB"), "--paired", str(tmp_path / "testB"), "--inception", str(inception),
                     "--json", str(out), "--kid_subset_size", "4")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert {"fid", "kid", "kid_std", "psnr", "ssim", "l1", "cycle_l1"} <= set(metrics)
    assert metrics["n_fake"] == metrics["n_real"] == metrics["n_paired"] == 6
    assert metrics["fid"] > 0 and 0 < metrics["cycle_l1"] < 2 and metrics["psnr"] > 0
    assert "FID" in result.stdout and "cycle L1" in result.stdout
    # The same images as "translations" of themselves: FID ~0, perfect paired scores.
    same = run_here("evaluate", "--fake", str(tmp_path / "testB"), "--real", str(tmp_path / "testB"), "--paired",
                   str(tmp_path / "testB"), "--inception", str(inception), "--json", str(out))
    assert same.returncode == 0, same.stderr
    metrics = json.loads(out.read_text())
    assert abs(metrics["fid"]) < 1e-3 and metrics["ssim"] == pytest.approx(1.0) and metrics["l1"] == 0


def test_evaluate_without_the_inception_file_says_where_to_put_it(tmp_path, tiny_run, monkeypatch):
    env_home = tmp_path / "home"
    env_home.mkdir()
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("CYCLEGAN_INCEPTION", "TORCH_HOME")}
    env["HOME"] = str(env_home)
    result = subprocess.run([sys.executable, "-m", "cyclegan", "evaluate", "--fake", str(tmp_path), "--real",
                             str(tmp_path)], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "inception-2015-12-05.pt" in result.stderr
    assert str(env_home / ".cache" / "cyclegan" / "inception-2015-12-05.pt") in result.stderr
    assert "nvlabs-fi-cdn.nvidia.com" in result.stderr and "Traceback" not in result.stderr


def test_translate_picks_tiles_by_itself_when_a_whole_image_would_not_fit(tmp_path, monkeypatch, caplog):
    """A 4096x4096 photo on a machine without the memory for it: translate says so and goes in
    tiles (here simulated: a small image and a small memory), with the result --tile gives."""
    import logging

    from cyclegan import translate
    from cyclegan.inference import whole_image_bytes
    from cyclegan.models import GeneratorResNet

    caplog.set_level(logging.INFO)
    net = GeneratorResNet((3,), 1, ngf=8)
    weights = tmp_path / "G.pth"
    torch.save(net.state_dict(), weights)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    gen = load_generator(weights)
    budget = whole_image_bytes(gen, 200, 256) + 1  # whole (200x300) does not fit, 256-pixel tiles do
    monkeypatch.setattr(translate, "available_bytes", lambda device: 2 * budget)
    args = ["--checkpoint", str(weights), "--input", str(tmp_path / "p.png"), "--device", "cpu", "--no_index"]
    assert translate.main([*args, "--output", str(tmp_path / "auto")]) == 0
    assert "translating in 256x256 tiles" in caplog.text and "--tile sets the size" in caplog.text
    assert translate.main([*args, "--output", str(tmp_path / "tiled"), "--tile", "256"]) == 0
    auto, tiled = (np.asarray(Image.open(tmp_path / d / "p.png")) for d in ("auto", "tiled"))
    assert np.array_equal(auto, tiled)
    monkeypatch.setattr(translate, "available_bytes", lambda device: 2**40)
    caplog.clear()
    assert translate.main([*args, "--output", str(tmp_path / "whole")]) == 0
    assert "translating in" not in caplog.text


def test_evaluate_a_cut_run_without_a_cycle(tmp_path):
    inception = write_inception_stand_in(tmp_path / "inception.pt")
    torch.manual_seed(0)
    config = TrainConfig(model="cut", img_height=32, img_width=32, n_residual_blocks=1, ngf=8, ndf=8,
                         nce_layers="0,4,7,10", netD="basic")
    run = tmp_path / "cut"
    nets = build_networks(config)
    assert set(nets) == {"G_AB", "D_B", "F"}
    save_networks(checkpoint_path(run, 1), nets, {"epoch": 1, "config": config.to_json()})
    for k in range(4):
        smooth_image(tmp_path / "testA" / f"{k:02d}.png", (36, 32), seed=k)
        smooth_image(tmp_path / "testB" / f"{k:02d}.png", (36, 32), seed=100 + k)
    out = tmp_path / "metrics.json"
    result = run_here("evaluate", "--checkpoint", str(run), "--input", str(tmp_path / "testA"), "--real",
                     str(tmp_path / "testB"), "--paired", str(tmp_path / "testB"), "--inception", str(inception),
                     "--json", str(out), "--kid_subset_size", "2")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert {"fid", "kid", "psnr", "ssim"} <= set(metrics) and "cycle_l1" not in metrics
    refused = run_here("evaluate", "--checkpoint", str(run), "--direction", "BtoA", "--input", str(tmp_path / "testB"),
                      "--real", str(tmp_path / "testA"), "--inception", str(inception))
    assert refused.returncode != 0 and "translates AtoB only" in refused.stderr
