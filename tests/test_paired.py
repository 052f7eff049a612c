"""Paired data for pix2pix: the two layouts, the one augmentation both halves of a pair share,
seeding, direction, channels, the refusals of bad input, and the demo pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan import datasets, paired
from cyclegan.errors import BadImageError, CycleGANError

SIZE = (40, 36)  # width, height of one half


def noise(seed: int, size=SIZE) -> np.ndarray:
    """Per-pixel noise: any misalignment between two halves shows at once."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def write_aligned(root: Path, count: int = 3, split: str = "train") -> list[np.ndarray]:
    """``count`` aligned images A|B with B = 255 - A; returns the A arrays."""
    (root / split).mkdir(parents=True, exist_ok=True)
    arrays = [noise(k) for k in range(count)]
    for k, a in enumerate(arrays):
        Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(root / split / f"p{k}.png")
    return arrays


def write_folders(root: Path, count: int = 3, layout: str = "reference", split: str = "train") -> list[np.ndarray]:
    """``count`` pairs in two folders (PNG in A, BMP in B: names pair without the extension)."""
    dir_A, dir_B = (root / split / "A", root / split / "B") if layout == "reference" else \
        (root / f"{split}A", root / f"{split}B")
    dir_A.mkdir(parents=True)
    dir_B.mkdir(parents=True)
    arrays = [noise(10 + k) for k in range(count)]
    for k, a in enumerate(arrays):
        Image.fromarray(a).save(dir_A / f"p{k}.png")
        Image.fromarray(255 - a).save(dir_B / f"p{k}.bmp")
    return arrays


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_layouts_are_told_apart(tmp_path):
    write_aligned(tmp_path / "aligned")
    write_folders(tmp_path / "reference")
    write_folders(tmp_path / "official", layout="official")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "notes.txt").write_text("not an image")
    assert paired.paired_layout(tmp_path / "aligned") == "aligned"
    assert paired.paired_layout(tmp_path / "aligned", "test") is None
    assert paired.paired_layout(tmp_path / "reference") == "folders"
    assert paired.paired_layout(tmp_path / "official") == "folders"
    assert paired.paired_layout(tmp_path / "empty") is None
    assert paired.paired_layout(tmp_path / "nowhere") is None
    assert paired.require_paired(tmp_path / "aligned") == "aligned"


@pytest.mark.parametrize("root_name", ["empty", "nowhere"])
def test_a_root_with_neither_layout_is_refused_naming_both(tmp_path, root_name):
    (tmp_path / "empty").mkdir()
    for call in (paired.require_paired, paired.PairedDataset):
        with pytest.raises(CycleGANError) as exc:
            call(tmp_path / root_name)
        message = one_line(exc)
        assert "pix2pix trains on pairs" in message and str(tmp_path / root_name) in message
        assert "aligned" in message and "side by side" in message
        assert str(Path("train") / "A") in message and "trainA" in message


def test_aligned_images_split_into_a_left_and_b_right(tmp_path):
    arrays = write_aligned(tmp_path)
    ds = paired.PairedDataset(tmp_path)
    assert len(ds) == 3 and ds.layout == "aligned"
    assert ds.files_A == ds.files_B == sorted((tmp_path / "train").iterdir())
    assert ds.dir_A == ds.dir_B == tmp_path / "train"
    item = ds[1]
    assert item["A_path"] == item["B_path"] == str(tmp_path / "train" / "p1.png")
    expected_A = torch.from_numpy(arrays[1]).permute(2, 0, 1).float() / 127.5 - 1
    assert item["A"].shape == (3, SIZE[1], SIZE[0])
    assert torch.allclose(item["A"], expected_A, atol=1e-6)
    assert torch.allclose(item["B"], -expected_A, atol=1e-6)
    swapped = paired.PairedDataset(tmp_path, direction="BtoA")[1]
    assert torch.equal(swapped["A"], item["B"]) and torch.equal(swapped["B"], item["A"])


@pytest.mark.parametrize("layout", ["reference", "official"])
def test_folder_pairs_match_by_name_whatever_the_extension(tmp_path, layout):
    arrays = write_folders(tmp_path, layout=layout)
    ds = paired.PairedDataset(tmp_path)
    assert ds.layout == "folders" and len(ds) == 3
    assert [(a.name, b.name) for a, b in zip(ds.files_A, ds.files_B)] == [(f"p{k}.png", f"p{k}.bmp") for k in range(3)]
    item = ds[2]
    assert Path(item["A_path"]).name == "p2.png" and Path(item["B_path"]).name == "p2.bmp"
    assert torch.allclose(item["A"], torch.from_numpy(arrays[2]).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)
    swapped = paired.PairedDataset(tmp_path, direction="BtoA")
    assert swapped.dir_A == ds.dir_B and swapped.files_A == ds.files_B and swapped.files_B == ds.files_A
    assert torch.equal(swapped[2]["A"], item["B"])
    assert paired.PairedDataset(tmp_path, max_dataset_size=2).files_B == ds.files_B[:2]


@pytest.mark.parametrize("write", [write_aligned, write_folders], ids=["aligned", "folders"])
@pytest.mark.parametrize("preprocess", ["resize_and_crop", "crop", "none"])
def test_augmentation_keeps_each_pair_aligned_pixel_for_pixel(tmp_path, write, preprocess):
    """B = 255 - A on disk, so B = -A after any crop and flip that both halves share."""
    write(tmp_path)
    ds = paired.PairedDataset(tmp_path, datasets.build_transforms(preprocess, 24, 28, load_size=32))
    seen = []
    for seed in range(8):
        item = ds[(seed, 0, 1)]
        assert item["A"].shape == item["B"].shape
        assert torch.allclose(item["B"], -item["A"], atol=1e-5), f"seed {seed}: the halves were augmented apart"
        seen.append(item["A"])
    distinct = {tuple(a.flatten().tolist()) for a in seen}
    if preprocess == "none":  # 40x36 is kept as it is: only the flip varies, and it did
        plain = paired.PairedDataset(tmp_path)[1]["A"]
        assert distinct == {tuple(plain.flatten().tolist()), tuple(plain.flip(2).flatten().tolist())}
    else:
        assert seen[0].shape == (3, 24, 28) and len(distinct) >= 6  # the crops did vary
    torch.manual_seed(3)
    item = ds[0]  # drawing from the global generator: aligned as well
    assert torch.allclose(item["B"], -item["A"], atol=1e-5)


def test_keys_seed_the_sample_and_leave_the_global_generator_alone(tmp_path):
    write_aligned(tmp_path)
    ds = paired.PairedDataset(tmp_path, datasets.build_transforms("crop", 16, 16))
    torch.manual_seed(0)
    first = ds[(5, 2, 1)]
    after = torch.rand(3)
    torch.manual_seed(123)
    again = ds[(5, 2, 1)]
    assert torch.equal(first["A"], again["A"]) and torch.equal(first["B"], again["B"])
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)  # the key's sample drew nothing from the global generator
    others = [ds[(5, epoch, 1)]["A"] for epoch in range(3, 8)]
    assert not all(torch.equal(first["A"], a) for a in others)
    torch.manual_seed(7)
    by_int = ds[1]
    torch.manual_seed(7)
    assert torch.equal(ds[1]["A"], by_int["A"])


def test_the_epoch_sampler_and_a_loader_drive_it(tmp_path):
    write_folders(tmp_path, count=4)
    ds = paired.PairedDataset(tmp_path, datasets.build_transforms("crop", 16, 16))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=datasets.EpochSampler(len(ds), seed=0))
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["A"].shape == (2, 3, 16, 16)
    assert all(torch.allclose(b["B"], -b["A"], atol=1e-5) for b in batches)
    assert sorted(p for b in batches for p in b["A_path"]) == [str(p) for p in ds.files_A]


def test_channels_of_a_and_b_apart(tmp_path):
    write_aligned(tmp_path)
    item = paired.PairedDataset(tmp_path, datasets.build_transforms("crop", 16, 16), channels=1, channels_B=3)[0]
    assert item["A"].shape == (1, 16, 16) and item["B"].shape == (3, 16, 16)
    with pytest.raises(CycleGANError, match="--channels must be 1 or more"):
        paired.PairedDataset(tmp_path, channels=0)


def test_folder_pairs_of_different_sizes_resize_b_to_a(tmp_path):
    (tmp_path / "train" / "A").mkdir(parents=True)
    (tmp_path / "train" / "B").mkdir(parents=True)
    a = np.zeros((36, 40, 3), np.uint8)
    a[:, 20:] = 255  # right half white
    Image.fromarray(a).save(tmp_path / "train" / "A" / "x.png")
    Image.fromarray(a[::2, ::2]).save(tmp_path / "train" / "B" / "x.png")  # the same view at half size
    item = paired.PairedDataset(tmp_path)[0]
    assert item["A"].shape == item["B"].shape == (3, 36, 40)
    assert item["B"][:, :, :18].max() < -0.9 and item["B"][:, :, 22:].min() > 0.9


def test_unmatched_names_are_refused_naming_the_first_and_the_count(tmp_path):
    write_folders(tmp_path, count=3)
    Image.fromarray(noise(0)).save(tmp_path / "train" / "A" / "lonely.png")
    Image.fromarray(noise(1)).save(tmp_path / "train" / "B" / "stray.png")
    with pytest.raises(CycleGANError) as exc:
        paired.PairedDataset(tmp_path)
    message = one_line(exc)
    assert message.startswith(f"{tmp_path / 'train' / 'A' / 'lonely.png'} has no partner")
    assert str(tmp_path / "train" / "B") in message and "2 of 8 files" in message


def test_one_name_twice_in_a_folder_is_refused(tmp_path):
    write_folders(tmp_path, count=2)
    Image.fromarray(noise(0)).save(tmp_path / "train" / "B" / "p0.png")
    with pytest.raises(CycleGANError) as exc:
        paired.PairedDataset(tmp_path)
    assert "p0.bmp" in one_line(exc) and "p0.png" in str(exc.value) and "same name" in str(exc.value)


def test_an_aligned_image_of_odd_width_is_refused_naming_it(tmp_path):
    write_aligned(tmp_path)
    bad = tmp_path / "train" / "p1.png"
    Image.fromarray(noise(0, (41, 36))).save(bad)
    ds = paired.PairedDataset(tmp_path)
    ds[0]
    with pytest.raises(BadImageError) as exc:
        ds[1]
    message = one_line(exc)
    assert message.startswith(str(bad)) and "41x36" in message and "even" in message


@pytest.mark.parametrize("write", [write_aligned, write_folders], ids=["aligned", "folders"])
def test_an_unreadable_image_is_one_bad_image_error_naming_it(tmp_path, write):
    write(tmp_path)
    ds = paired.PairedDataset(tmp_path)
    bad = ds.files_B[1]
    bad.write_bytes(b"not an image any more")
    with pytest.raises(BadImageError) as exc:
        ds[1]
    assert one_line(exc).startswith(f"{bad} could not be read during training")


def test_exclude_drops_a_pair_when_either_side_is_bad(tmp_path):
    write_folders(tmp_path, count=4)
    ds = paired.PairedDataset(tmp_path)
    ds.exclude({ds.files_A[0], ds.files_B[2]})
    assert len(ds) == 2 and [p.stem for p in ds.files_A] == [p.stem for p in ds.files_B] == ["p1", "p3"]
    assert Path(ds[1]["B_path"]).name == "p3.bmp"
    aligned_root = tmp_path / "aligned"
    write_aligned(aligned_root)
    aligned = paired.PairedDataset(aligned_root)
    aligned.exclude({aligned.files_A[1]})
    assert aligned.files_A == aligned.files_B and [p.name for p in aligned.files_A] == ["p0.png", "p2.png"]


def load_split(root: Path, split: str, domain: str) -> torch.Tensor:
    """A split's images as a batch in [-1, 1]."""
    arrays = np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in sorted((root / split / domain).iterdir())])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1


def test_demo_pairs_are_deterministic_paired_and_learnable(tmp_path):
    root = paired.write_demo_pairs(tmp_path / "one", size=32, count=12, n_test=8, seed=3)
    again = paired.write_demo_pairs(tmp_path / "two", size=32, count=12, n_test=8, seed=3)
    other = paired.write_demo_pairs(tmp_path / "three", size=32, count=2, n_test=1, seed=4)
    files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert len(files) == 2 * (12 + 8) and files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert (root / files[0]).read_bytes() != (other / files[0]).read_bytes()
    ds = paired.PairedDataset(root, mode="test")
    assert ds.layout == "folders" and len(ds) == 8 and ds[0]["A"].shape == (3, 32, 32)
    a = np.asarray(Image.open(ds.files_A[0]))
    assert np.array_equal(paired.demo_mapping(a), np.asarray(Image.open(ds.files_B[0])))

    A, B, A_test, B_test = (load_split(root, split, d) for split in ("train", "test") for d in ("A", "B"))
    learned = train_and_score(A, B, A_test, B_test)
    identity = (A_test - B_test).abs().mean().item()
    constant = (B_test - B.median(dim=0).values.flatten(1).median(dim=1).values[:, None, None]).abs().mean().item()
    colour_only = (-A_test.flip(1) - B_test).abs().mean().item()  # the colour remap without the outlines
    assert learned < 0.3 * min(identity, constant)
    assert learned < 0.6 * colour_only  # the net learned the outlines too


def train_and_score(A: torch.Tensor, B: torch.Tensor, A_test: torch.Tensor, B_test: torch.Tensor) -> float:
    """Fit a tiny convolutional net (a 3x3 receptive field: what the mapping needs) to the pairs
    (A, B); its mean error on the test pairs. On one thread: convolutions this small gain nothing
    from more, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 24, 3, padding=1, padding_mode="replicate"), torch.nn.ReLU(),
            torch.nn.Conv2d(24, 24, 1), torch.nn.ReLU(), torch.nn.Conv2d(24, 3, 1),
        )
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(200):
            loss = (net(A) - B).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return (net(A_test) - B_test).abs().mean().item()
    finally:
        torch.set_num_threads(threads)
