"""Dataset layouts, image modes and extensions through the dataset, the reference transform,
unaligned sampling and the demo data. (Decoding itself: test_images.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan import datasets
from cyclegan.errors import CycleGANError


def write_rgb(path: Path, size=(40, 30), colour=(200, 100, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def make_layout(root: Path, layout: str, n_a=3, n_b=5, split="train") -> None:
    dirs = (root / split / "A", root / split / "B") if layout == "reference" else (root / f"{split}A", root / f"{split}B")
    for k in range(n_a):
        write_rgb(dirs[0] / f"a{k}.png", colour=(k * 10, 0, 0))
    for k in range(n_b):
        write_rgb(dirs[1] / f"b{k}.jpg", colour=(0, k * 10, 0))


@pytest.mark.parametrize("layout", ["reference", "official"])
def test_both_layouts_are_read(tmp_path, layout):
    make_layout(tmp_path, layout)
    make_layout(tmp_path, layout, n_a=2, n_b=2, split="test")
    ds = datasets.ImageDataset(tmp_path, datasets.reference_transforms(16, 32), unaligned=True)
    assert len(ds) == 5  # the larger domain
    item = ds[0]
    assert item["A"].shape == (3, 16, 32) and item["B"].shape == (3, 16, 32)
    assert Path(item["A_path"]).name == "a0.png"
    test = datasets.ImageDataset(tmp_path, mode="test")
    assert len(test) == 2 and test.mode == "test"


def test_image_a_by_index_and_b_at_random(tmp_path):
    make_layout(tmp_path, "reference", n_a=3, n_b=5)
    ds = datasets.ImageDataset(tmp_path, unaligned=True)
    assert [Path(ds[i]["A_path"]).name for i in range(5)] == ["a0.png", "a1.png", "a2.png", "a0.png", "a1.png"]
    torch.manual_seed(0)
    drawn = {Path(ds[0]["B_path"]).name for _ in range(60)}
    assert len(drawn) == 5  # every B image gets drawn
    aligned = datasets.ImageDataset(tmp_path, unaligned=False)
    assert [Path(aligned[i]["B_path"]).name for i in range(5)] == [f"b{k}.jpg" for k in range(5)]


def test_extensions_in_any_case_and_other_files_ignored(tmp_path):
    folder = tmp_path / "train" / "A"
    names = ["x1.JPG", "x2.Png", "x3.jpeg", "x4.bmp", "x5.webp", "x6.tif", "x7.TIFF"]
    for name in names:
        write_rgb(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.png").mkdir()  # a folder with an image-like name is not a file
    write_rgb(tmp_path / "train" / "B" / "b.png")
    ds = datasets.ImageDataset(tmp_path)
    assert sorted(p.name for p in ds.files_A) == sorted(names)
    for i in range(len(names)):
        assert ds[i]["A"].shape == (3, 30, 40)


def save_mode(path: Path, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.new("L", (8, 8), 255).save(path)
    elif mode == "LA":
        Image.new("LA", (8, 8), (255, 0)).save(path)
    elif mode == "1":
        Image.new("1", (8, 8), 1).save(path)
    elif mode == "P":
        img = Image.new("P", (8, 8), 0)
        img.putpalette([255, 255, 255] + [0, 0, 0] * 255)
        img.save(path)
    elif mode == "P-transparent":
        img = Image.new("P", (8, 8), 0)
        img.putpalette([255, 255, 255] + [0, 0, 0] * 255)
        img.save(path, transparency=0)
    elif mode == "RGBA":
        Image.new("RGBA", (8, 8), (255, 255, 255, 10)).save(path)
    elif mode == "I;16":
        Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(path)
    elif mode == "CMYK":
        Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(path)
    else:
        raise AssertionError(mode)


@pytest.mark.parametrize(
    "mode,name",
    [("L", "g.png"), ("LA", "la.png"), ("1", "bw.png"), ("P", "p.png"), ("P-transparent", "pt.png"),
     ("RGBA", "rgba.png"), ("I;16", "deep.png"), ("CMYK", "cmyk.jpg"), ("L", "g.tif"), ("I;16", "deep.tif")],
)
@pytest.mark.parametrize("channels", [3, 1])
def test_every_image_mode_becomes_white_rgb_or_grey(tmp_path, mode, name, channels):
    save_mode(tmp_path / "train" / "A" / name, mode)
    write_rgb(tmp_path / "train" / "B" / "b.png", size=(8, 8))
    ds = datasets.ImageDataset(tmp_path, channels=channels)
    x = ds[0]["A"]
    assert x.shape == (channels, 8, 8)
    # Every fixture is white: 1.0 after scaling to [-1, 1] (a 16-bit 65535 is white, not clipped garbage).
    assert torch.allclose(x, torch.ones_like(x), atol=1e-6), (mode, x.min(), x.max())


def test_reference_transform_sizes_and_range(tmp_path):
    torch.manual_seed(0)
    t = datasets.Compose(datasets.reference_transforms(256, 256))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    x = t(img)
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # torchvision's Resize(int(256 * 1.12)): shorter side 286, longer int(286 * 500 / 300) = 476.
    assert datasets.ResizeCover(286, 286)(img).size == (476, 286)
    # A rectangular crop wider than the resized shorter side still fits.
    wide = datasets.Compose(datasets.reference_transforms(32, 128))
    assert wide(Image.new("RGB", (40, 40))).shape == (3, 32, 128)


def test_random_flip_and_crop_vary_and_test_transform_does_not():
    img = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    torch.manual_seed(0)
    t = datasets.Compose(datasets.reference_transforms(32, 32))
    outs = {tuple(t(img).flatten()[:20].tolist()) for _ in range(10)}
    assert len(outs) > 1
    test = datasets.Compose(datasets.test_transforms(32, 32))
    assert torch.equal(test(img), test(img))


@pytest.mark.parametrize("problem", ["missing root", "no split", "missing B", "empty A", "only text files"])
def test_layout_errors_name_the_folder(tmp_path, problem):
    root = tmp_path / "data"
    if problem != "missing root":
        root.mkdir()
    if problem == "missing B":
        write_rgb(root / "trainA" / "a.png")
    if problem == "empty A":
        (root / "train" / "A").mkdir(parents=True)
        write_rgb(root / "train" / "B" / "b.png")
    if problem == "only text files":
        (root / "train" / "A").mkdir(parents=True)
        (root / "train" / "A" / "readme.txt").write_text("hi")
        write_rgb(root / "train" / "B" / "b.png")
    with pytest.raises(CycleGANError) as err:
        datasets.ImageDataset(root)
    message = str(err.value)
    expected = {
        "missing root": str(root),
        "no split": str(root / "train" / "A"),
        "missing B": str(root / "trainB"),
        "empty A": str(root / "train" / "A"),
        "only text files": str(root / "train" / "A"),
    }[problem]
    assert expected in message


def test_demo_data_is_deterministic_and_the_test_split_holds_the_truth(tmp_path):
    a = datasets.write_demo_dataset(tmp_path / "one", n_train=4, n_test=3, size=32, seed=5)
    b = datasets.write_demo_dataset(tmp_path / "two", n_train=4, n_test=3, size=32, seed=5)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 14
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    for k in range(3):
        test_a = np.asarray(Image.open(a / "test" / "A" / f"{k:04d}.png"))
        test_b = np.asarray(Image.open(a / "test" / "B" / f"{k:04d}.png"))
        assert np.array_equal(test_b, 255 - test_a)
    # Training pairs are unrelated scenes, not negatives of each other.
    train_a = np.asarray(Image.open(a / "train" / "A" / "0000.png")).astype(int)
    train_b = np.asarray(Image.open(a / "train" / "B" / "0000.png")).astype(int)
    assert not np.array_equal(train_b, 255 - train_a)


def _numbered(h: int, w: int) -> Image.Image:
    """An RGB image whose every pixel is distinct, so that any flip or turn shows."""
    values = np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3) % 251
    return Image.fromarray(values.astype(np.uint8))


@pytest.mark.parametrize("size,turns", [((8, 8), {0, 1, 2, 3}), ((8, 12), {0, 2})], ids=["square", "oblong"])
def test_rot90_and_vflip_draw_every_orientation_they_may(size, turns):
    h, w = size
    img = _numbered(h, w)
    base = np.asarray(img)
    transform = datasets.Compose(datasets.build_transforms("none", 8, 8, flip=False, vflip=True, rot90=True))
    seen = set()
    torch.manual_seed(0)
    for _ in range(64):
        out = np.round((transform(img).numpy().transpose(1, 2, 0) + 1) / 2 * 255).astype(np.uint8)
        found = [(flipped, k) for flipped in (False, True) for k in range(4)
                 if np.array_equal(out, np.rot90(np.flipud(base) if flipped else base, k))]
        assert found, "the output is no flip and quarter turn of the input"
        seen.add(found[0])
    assert seen == {(flipped, k) for flipped in (False, True) for k in turns}


def test_the_augmentations_are_off_by_default_and_the_reference_draws_nothing_more():
    steps = datasets.build_transforms("reference", 32, 32)
    assert not any(isinstance(s, (datasets.RandomVerticalFlip, datasets.RandomRot90)) for s in steps)
    from cyclegan.options import parse_config

    default, _, _ = parse_config([])
    assert not default.vflip and not default.rot90


def test_the_flags_reach_the_training_transform(tmp_path):
    from cyclegan.loader import open_run_data
    from cyclegan.options import parse_config

    for domain in ("A", "B"):
        (tmp_path / "data" / "train" / domain).mkdir(parents=True)
        _numbered(40, 40).save(tmp_path / "data" / "train" / domain / "0.png")
    config, _, _ = parse_config(["--img_height", "32", "--img_width", "32", "--vflip", "--rot90"])
    data = open_run_data(config, tmp_path / "data", tmp_path / "run")
    kinds = [type(step).__name__ for step in data.train.transform_A.transforms]
    assert kinds[-4:-2] == ["RandomVerticalFlip", "RandomRot90"]


def test_a_pairs_two_halves_turn_alike(tmp_path):
    from cyclegan.paired import PairedDataset

    image = _numbered(16, 16)
    for k in range(4):
        (tmp_path / "train" / "A").mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / "B").mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "train" / "A" / f"{k}.png")
        image.save(tmp_path / "train" / "B" / f"{k}.png")
    pairs = PairedDataset(tmp_path, datasets.build_transforms("none", 16, 16, flip=False, vflip=True, rot90=True))
    items = [pairs[(0, epoch, k)] for epoch in range(4) for k in range(4)]
    assert all(torch.equal(item["A"], item["B"]) for item in items)
    assert len({tuple(item["A"][0, 0, :4].tolist()) for item in items}) > 2  # they did turn
