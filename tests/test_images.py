"""One image reader and writer for training and inference: EXIF orientation, 16-bit, alpha,
the same pixels through the training dataset and translate's loader, tensor <-> image, atomic
writes, the scan for bad files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_here
from PIL import Image

from cyclegan import datasets
from cyclegan.errors import CycleGANError
from cyclegan.images import (
    image_to_tensor,
    list_images,
    load_image,
    make_grid,
    read_image,
    save_image,
    scan_images,
    tensor_to_image,
    write_image,
)


def write_rgb(path: Path, size=(40, 30), colour=(200, 100, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def batch(values, size=4):
    return torch.stack([torch.full((3, size, size), float(v)) for v in values])


ORIENTATION = 0x0112


def write_rotated_photo(path: Path) -> np.ndarray:
    """A 24x16 (wide) picture stored with EXIF orientation 6 (rotate 90 degrees clockwise to
    view), as phones write portrait photos; returns the upright pixels (16 wide, 24 tall)."""
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, exif=exif)
    return np.rot90(stored, k=-1)  # clockwise


def write_sixteen_bit(path: Path) -> np.ndarray:
    """A 16-bit grey PNG with levels that truncation and rounding disagree on; its 8-bit values."""
    levels = np.array([[0, 128, 16384, 32768, 40000, 65535]], dtype=np.uint16).repeat(6, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(levels).save(path)
    return np.round(levels.astype(np.float64) * 255 / 65535).astype(np.uint8)


def test_the_scan_measures_the_upright_size(tmp_path):
    write_rotated_photo(tmp_path / "phone.png")  # stored 24 wide, 16 tall; viewed 16 wide, 24 tall
    assert scan_images([tmp_path / "phone.png"], min_size=(16, 24)) == []
    assert "16x24 pixels" in dict(scan_images([tmp_path / "phone.png"], min_size=(20, 20)))[tmp_path / "phone.png"]


def test_exif_orientation_is_applied_on_load(tmp_path):
    upright = write_rotated_photo(tmp_path / "phone.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "phone.png")), upright)
    tensor, alpha, size = read_image(tmp_path / "phone.png", 3)
    assert size == (16, 24) and alpha is None and tensor.shape == (1, 3, 24, 16)


@pytest.mark.parametrize("kind", ["sixteen_bit", "exif_rotated", "exif_rotated_jpeg"])
@pytest.mark.parametrize("channels", [3, 1])
def test_training_and_translate_see_identical_pixels(tmp_path, kind, channels):
    """The same file through the training dataset (as the sample grids load it: resize to cover,
    centre crop, [-1, 1]) and through translate's loader gives the same tensor, bit for bit."""
    root = tmp_path / "data"
    path = root / "test" / "A" / "image.png"
    if kind == "sixteen_bit":
        expected = write_sixteen_bit(path)
    elif kind == "exif_rotated_jpeg":  # as phones write them; lossy, so only the upright shape is known
        path = path.with_suffix(".jpg")
        h, w = write_rotated_photo(path).shape[:2]
        expected = None
    else:
        expected = np.asarray(Image.fromarray(write_rotated_photo(path)).convert("RGB" if channels == 3 else "L"))
    write_rgb(root / "test" / "B" / "b.png", size=(6, 6))
    if expected is not None:
        h, w = expected.shape[:2]
    ds = datasets.ImageDataset(root, datasets.test_transforms(h, w, channels), mode="test", channels=channels)
    from_training = ds[0]["A"]
    from_translate, _, size = read_image(path, channels)
    assert size == (w, h)
    assert torch.equal(from_training, from_translate[0])
    # and those are the right pixels: upright, 16-bit levels rounded (not truncated) to 8 bits
    if expected is None:
        return
    pixels = np.asarray(tensor_to_image(from_translate[0]))
    if kind == "sixteen_bit" and channels == 3:
        expected = np.stack([expected] * 3, axis=-1)
    assert np.array_equal(pixels, expected)


def test_translate_command_translates_the_photo_upright(tmp_path):
    """The real command on a phone photo stored sideways: the translation has the upright
    (portrait) size, as the photo is viewed and as training sees it."""
    from safetensors.torch import save_file

    from cyclegan.models import GeneratorResNet

    write_rotated_photo(tmp_path / "in" / "phone.png")
    weights = tmp_path / "G.safetensors"
    save_file({k: v.contiguous() for k, v in GeneratorResNet((3,), 1, ngf=8).state_dict().items()}, str(weights))
    result = run_here("translate", "--checkpoint", str(weights), "--input", str(tmp_path / "in"),
                     "--output", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "out" / "phone.png") as out:
        assert out.size == (16, 24)


def test_sixteen_bit_has_one_scale_whatever_the_image_holds(tmp_path):
    """A dark 16-bit frame (every value below 256) is dark, not stretched to 8-bit white: two frames
    of one sensor get the same scale."""
    dark = np.array([[0, 128, 200, 255]], dtype=np.uint16).repeat(2, axis=0)
    Image.fromarray(dark).save(tmp_path / "dark.png")
    assert np.asarray(load_image(tmp_path / "dark.png", channels=1))[0].tolist() == [0, 0, 1, 1]


def test_alpha_is_returned_apart_and_written_back(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.arange(8, dtype=np.uint8)[None, :] * 30
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    tensor, alpha, _ = read_image(tmp_path / "a.png", 3)
    assert alpha is not None and np.array_equal(np.asarray(alpha), rgba[..., 3])
    # the pixels are those of the training loader (alpha dropped)
    assert torch.equal(tensor[0], image_to_tensor(load_image(tmp_path / "a.png", 3)))
    write_image(tensor_to_image(tensor[0]), tmp_path / "b.png", alpha)
    with Image.open(tmp_path / "b.png") as back:
        assert back.mode == "RGBA"
        assert np.array_equal(np.asarray(back), rgba)
    write_image(tensor_to_image(tensor[0]), tmp_path / "b.jpg", alpha)  # JPEG has no alpha: dropped
    with Image.open(tmp_path / "b.jpg") as back:
        assert back.mode == "RGB"


def test_tensor_to_image_rounds_and_clamps():
    x = torch.tensor([[[-2.0, -1.0, 0.0, 1.0, 3.0]]])
    assert np.asarray(tensor_to_image(x)).tolist() == [[0, 0, 128, 255, 255]]
    assert tensor_to_image(torch.zeros(3, 2, 2)).mode == "RGB"


def test_write_image_refuses_an_unknown_suffix(tmp_path):
    with pytest.raises(CycleGANError, match="format"):
        write_image(Image.new("RGB", (2, 2)), tmp_path / "x.unknown")
    assert os.listdir(tmp_path) == []


def test_list_images_matches_extensions_in_any_case(tmp_path):
    for name in ("a.PNG", "b.jpg", "c.TiFf", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg", "c.TiFf"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CycleGANError, match="holds no image"):
        list_images(tmp_path / "empty")


def test_sixteen_bit_grey_keeps_its_levels(tmp_path):
    levels = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(levels).save(path)
    grey = np.asarray(load_image(path, channels=1))
    assert grey[0].tolist() == [0, 64, 128, 255]


def test_scan_finds_every_kind_of_bad_file(tmp_path):
    good = write_rgb(tmp_path / "good.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("this is not a picture")
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:600])
    problems = dict(scan_images([good, empty, text, truncated]))
    assert set(problems) == {empty, text, truncated}
    assert "empty" in problems[empty]
    assert "not an image" in problems[text]
    assert "truncated" in problems[truncated]


def test_scan_flags_decompression_bombs(tmp_path, monkeypatch):
    path = write_rgb(tmp_path / "big.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    problems = dict(scan_images([path]))
    assert "decompression-bomb" in problems[path]


def test_make_grid_places_images():
    images = batch([-1, 0, 1], size=2)
    grid = make_grid(images, nrow=2, padding=1, pad_value=0.5)
    assert grid.shape == (3, 1 + 2 * 3, 1 + 2 * 3)
    assert torch.all(grid[:, 1:3, 1:3] == -1)
    assert torch.all(grid[:, 1:3, 4:6] == 0)
    assert torch.all(grid[:, 4:6, 1:3] == 1)
    assert torch.all(grid[:, 4:6, 4:6] == 0.5)  # empty cell


def test_save_image_writes_the_right_pixels(tmp_path):
    image = torch.zeros(3, 4, 5)
    image[0] = 1.0
    image[2] = -1.0
    save_image(image, tmp_path / "x.png")
    array = np.asarray(Image.open(tmp_path / "x.png"))
    assert array.shape == (4, 5, 3)
    assert (array[..., 0] == 255).all() and (array[..., 1] == 128).all() and (array[..., 2] == 0).all()
    assert os.listdir(tmp_path) == ["x.png"]  # no temporary file left
