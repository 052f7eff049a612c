"""Scientific images (science.py): 16-bit and float precision kept from the file to the
translation, any channel count from TIFF and .npy, NIfTI volumes slice by slice, the value range
stored and inverted, and the bad inputs refused before any step. Real files on disk, real
checkpoints, the real command line."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import nibabel  # the [science] extra, in [dev]
import numpy as np
import pytest
import tifffile
import torch
from conftest import run_here, write_images, write_inception_stand_in
from PIL import Image
from torch import nn

from cyclegan import science, translate
from cyclegan.datasets import ImageDataset, build_transforms
from cyclegan.inference import Generator
from cyclegan.serve import Translator

TINY = ("--img_height", "32", "--img_width", "32", "--ngf", "16", "--ndf", "16", "--n_residual_blocks", "1",
        "--n_cpu", "0", "--sample_interval", "1000", "--logger", "none", "--max_steps", "2")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "scientific.md"


def identity_generator(channels: int, config: dict | None = None) -> Generator:
    """A generator that returns its input: what comes back is what the data path did."""
    return Generator(nn.Identity(), channels, channels, 4, "identity", "reference", None, config or {})


def translate_with(monkeypatch, gen: Generator, *args: str) -> int:
    monkeypatch.setattr(translate, "load_generator", lambda *a, **k: gen)
    return translate.main(["--checkpoint", "identity", *args])


# ---------------------------------------------------------------------------------------------
# Precision


def test_16_bit_png_through_an_identity_generator_keeps_every_level(tmp_path, monkeypatch):
    levels = np.arange(4096, dtype=np.uint16) * 16 + 7  # 4096 distinct 16-bit levels
    image = np.random.default_rng(0).permutation(levels).reshape(64, 64)
    Image.fromarray(image).save(tmp_path / "cells.png")
    assert translate_with(monkeypatch, identity_generator(1), "--input", str(tmp_path / "cells.png"),
                          "--output", str(tmp_path / "out")) == 0
    out = Image.open(tmp_path / "out" / "cells.png")
    back = np.asarray(out)
    assert out.mode == "I;16" and back.dtype == np.uint16
    assert np.abs(back.astype(np.int64) - image).max() <= 1  # within one 16-bit step
    assert len(np.unique(back)) >= 4000


def test_float_tiff_through_an_identity_generator_comes_back_as_float(tmp_path, monkeypatch):
    image = np.random.default_rng(1).random((40, 48, 2)).astype(np.float32)
    tifffile.imwrite(tmp_path / "x.tif", image, photometric="minisblack", planarconfig="contig")
    assert translate_with(monkeypatch, identity_generator(2), "--input", str(tmp_path / "x.tif"),
                          "--output", str(tmp_path / "out")) == 0
    back = tifffile.imread(tmp_path / "out" / "x.tif")
    back = np.moveaxis(back, 0, 2) if back.shape[0] == 2 else back
    assert back.dtype == np.float32 and back.shape == image.shape
    assert np.abs(back - image).max() < 1e-6


def test_8_bit_photographs_keep_their_256_levels_and_stay_8_bit(tmp_path, monkeypatch):
    image = np.random.default_rng(2).permutation(np.repeat(np.arange(256, dtype=np.uint8), 48)).reshape(64, 64, 3)
    Image.fromarray(image).save(tmp_path / "photo.png")
    assert translate_with(monkeypatch, identity_generator(3), "--input", str(tmp_path / "photo.png"),
                          "--output", str(tmp_path / "out")) == 0
    out = Image.open(tmp_path / "out" / "photo.png")
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), image)


def test_the_training_data_path_keeps_16_bit_levels_where_8_bit_would_keep_256(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(3)
    for side in "AB":
        (root / "train" / side).mkdir(parents=True)
        Image.fromarray((rng.permutation(4096).reshape(64, 64) * 16).astype(np.uint16)).save(
            root / "train" / side / "0.png")
    ds = ImageDataset(root, build_transforms("crop", 64, 64, flip=False, channels=1), channels=1)
    ds.domains = {side: science.Domain("uint16", 1, (0.0,), (65535.0,)) for side in "AB"}
    levels = torch.unique(ds[0]["A"])
    assert ds[0]["A"].shape == (1, 64, 64)
    assert len(levels) >= 4000  # 8 bits would leave 256
    assert float(levels.min()) >= -1 and float(levels.max()) <= 1


def test_planes_crop_flip_and_turn_as_the_8_bit_path_does():
    """The same draws give the same pixels: a Planes image and a Pillow image of the same values
    through one seeded transform come out equal (so the reference's draws are kept)."""
    array = np.random.default_rng(4).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    steps = build_transforms("crop", 32, 32, vflip=True, rot90=True)
    for seed in range(12):
        torch.manual_seed(seed)
        from_pil = steps_apply(steps, Image.fromarray(array))
        torch.manual_seed(seed)
        from_planes = steps_apply(steps, science.Planes(array.astype(np.float32) / 255))
        assert torch.allclose(from_pil, from_planes, atol=1e-6)


def steps_apply(steps, img):
    for step in steps:
        img = step(img)
    return img


def test_value_ranges_parse_and_invert():
    assert science.parse_value_range("dtype") == ("dtype", 0.0, 0.0)
    assert science.parse_value_range("-1024 3071") == ("given", -1024.0, 3071.0)
    assert science.parse_value_range("p0.5 p99.5") == ("percentiles", 0.5, 99.5)
    for bad in ("3 1", "p5 2", "p50 p10", "p0 p101", "x y", "1"):
        with pytest.raises(science.CycleGANError, match="--value_range"):
            science.parse_value_range(bad)
    domain = science.Domain("int16", 1, (-1024.0,), (3071.0,))
    values = np.array([[-1024, 0, 40, 3071]], dtype=np.int16).reshape(1, 4, 1)
    unit = science.to_unit(values, domain)
    back = science.to_values(torch.from_numpy(unit.transpose(2, 0, 1)) * 2 - 1, domain, "int16")
    assert np.array_equal(back, values)


# ---------------------------------------------------------------------------------------------
# N channels: train, resume, translate, export, evaluate


def write_dataset(root: Path, write, train: int = 4, test: int = 1) -> Path:
    """The reference layout under ``root``: ``write(A folder, B folder, k)`` for each of ``train``
    and ``test`` items of the two splits."""
    for split, count in (("train", train), ("test", test)):
        for side in "AB":
            (root / split / side).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            write(root / split / "A", root / split / "B", k)
    return root


def write_band_pairs(root: Path, bands: int = 4, size: int = 32, train: int = 4, test: int = 2) -> Path:
    rng = np.random.default_rng(5)

    def write(dir_A: Path, dir_B: Path, k: int) -> None:
        a = rng.integers(1000, 60000, (bands, size, size), dtype=np.uint16)
        tifffile.imwrite(dir_A / f"{k}.tif", a, photometric="minisblack", planarconfig="separate")
        tifffile.imwrite(dir_B / f"{k}.tif", a[::-1].copy(), photometric="minisblack", planarconfig="separate")

    return write_dataset(root, write, train, test)


@pytest.mark.long
def test_a_4_band_tiff_run_trains_resumes_translates_exports_and_evaluates(tmp_path):
    data = write_band_pairs(tmp_path / "bands")
    run = tmp_path / "run"
    done = run_here("train", "--dataroot", str(data), "--channels", "4", "--display_bands", "2,1,0",
                    "--output", str(run), *TINY)
    assert done.returncode == 0, done.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["data_A"] == {"dtype": "uint16", "channels": 4, "lo": [0.0] * 4, "hi": [65535.0] * 4,
                               "value_range": "dtype", "slice_axis": None}
    resumed = run_here("train", "--resume", "--output", str(run), "--max_steps", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert "step_000000003" in " ".join(p.name for p in (run / "checkpoints" / "resume").iterdir())
    rescaled = run_here("train", "--resume", "--output", str(run), "--max_steps", "4", "--value_range", "0", "999")
    assert rescaled.returncode == 2 and "--value_range 0 999 (checkpoint: dtype)" in rescaled.stderr

    out = tmp_path / "out"
    assert run_here("translate", "--checkpoint", str(run), "--input", str(data / "test" / "A"),
                    "--output", str(out)).returncode == 0
    written = tifffile.imread(out / "0.tif")
    assert written.dtype == np.uint16 and written.shape == (4, 32, 32)

    onnx = tmp_path / "g.onnx"
    exported = run_here("export", "--checkpoint", str(run), "--format", "onnx", "--output", str(onnx))
    assert exported.returncode == 0, exported.stderr
    out_onnx = tmp_path / "out_onnx"
    assert run_here("translate", "--backend", "onnxruntime", "--checkpoint", str(onnx), "--input",
                    str(data / "test" / "A"), "--output", str(out_onnx)).returncode == 0
    by_onnx = tifffile.imread(out_onnx / "0.tif")
    assert by_onnx.shape == (4, 32, 32)
    assert np.abs(by_onnx.astype(np.int64) - written).max() <= 2  # float noise, in 16-bit steps

    scores = tmp_path / "scores.json"
    evaluated = run_here("evaluate", "--checkpoint", str(run), "--input", str(data / "test" / "A"), "--real",
                         str(data / "test" / "B"), "--paired", str(data / "test" / "B"), "--json", str(scores))
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads(scores.read_text())
    assert results["n_paired"] == 2 and "fid" not in results and 0 < results["psnr"] < 100
    # the same scores from the written files: what translate wrote is what the network gave
    from_files = tmp_path / "files.json"
    assert run_here("evaluate", "--fake", str(out), "--real", str(data / "test" / "B"), "--paired",
                    str(data / "test" / "B"), "--json", str(from_files)).returncode == 0
    assert json.loads(from_files.read_text())["psnr"] == pytest.approx(results["psnr"], abs=1e-3)
    grid = Image.open(next((run / "samples").glob("*.png")))
    assert grid.mode == "RGB"  # the --display_bands composite

    # FID and KID on the --display_bands composite (the Inception stand-in's interface)
    inception = write_inception_stand_in(tmp_path / "inception.pt")
    with_fid = tmp_path / "fid.json"
    assert run_here("evaluate", "--fake", str(out), "--real", str(data / "test" / "B"), "--display_bands", "2,1,0",
                    "--inception", str(inception), "--json", str(with_fid), "--kid_subset_size", "2").returncode == 0
    assert json.loads(with_fid.read_text())["fid"] >= 0

    # serve: the page shows the composite, the download holds the 4 bands at 16 bits
    shown, download = Translator(str(run), torch.device("cpu"), 10**6, out_dir=tmp_path / "served")(
        str(data / "test" / "A" / "0.tif"), "AtoB")
    assert shown.mode == "RGB" and shown.size == (32, 32)
    assert np.abs(tifffile.imread(download).astype(np.int64) - written).max() <= 2  # batch of 1 against 2


def test_a_photograph_model_given_a_16_bit_grey_file_reads_it_as_before(tmp_path, tiny_run):
    """A 3-channel model trained on 8-bit photographs translates a 16-bit grey PNG as it always
    has (made RGB through 8 bits) rather than refusing its one channel."""
    Image.fromarray(np.random.default_rng(9).integers(0, 65535, (32, 32), dtype=np.uint16)).save(tmp_path / "g.png")
    done = run_here("translate", "--checkpoint", str(tiny_run), "--input", str(tmp_path / "g.png"), "--output",
                    str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "out" / "g.png").mode == "RGB"


def test_npy_arrays_train_with_percentiles_and_come_back_in_their_layout(tmp_path):
    rng = np.random.default_rng(6)

    def write(dir_A: Path, dir_B: Path, k: int) -> None:
        for folder in (dir_A, dir_B):
            np.save(folder / f"{k}.npy", (rng.random((5, 32, 32)) * 50 + 100).astype(np.float32))

    root = write_dataset(tmp_path / "npy", write)
    run = tmp_path / "run"
    done = run_here("train", "--dataroot", str(root), "--channels", "5", "--value_range", "p1", "p99",
                    "--output", str(run), *TINY)
    assert done.returncode == 0, done.stderr
    domain = json.loads((run / "config.json").read_text())["data_A"]
    assert domain["value_range"] == "p1 p99" and len(domain["lo"]) == 5
    assert all(100 < lo < 102 and 148 < hi < 150 for lo, hi in zip(domain["lo"], domain["hi"]))
    out = tmp_path / "out"
    assert run_here("translate", "--checkpoint", str(run), "--input", str(root / "test" / "A"),
                    "--output", str(out)).returncode == 0
    back = np.load(out / "0.npy")
    assert back.shape == (5, 32, 32) and back.dtype == np.float32  # C x H x W, as it came
    assert 100 <= back.min() and back.max() <= 150  # in the input's units, within the range


# ---------------------------------------------------------------------------------------------
# NIfTI volumes


def test_nifti_volumes_train_on_their_slices_and_translate_back_to_a_volume(tmp_path):
    data = science.write_examples(tmp_path / "data", size=32, n_train=4, n_test=4)
    run = tmp_path / "run"
    given_path = data / "mr2ct" / "test" / "A" / "000.nii.gz"
    volume = nibabel.load(str(given_path))
    volume.set_qform(np.diag([0.8, 0.8, 2.5, 1.0]) + np.eye(4, k=3) * -11, code=1)  # qform and sform differ
    nibabel.save(nibabel.Nifti1Image(np.asarray(volume.dataobj), volume.get_sform(), volume.header), str(given_path))
    done = run_here("train", "--dataroot", str(data / "mr2ct"), "--channels", "1", "--value_range", "p0.5", "p99.5",
                    "--value_range_B", "-1024", "3071", "--output", str(run), *TINY, "--eval_every_steps", "2",
                    "--eval_paired")
    assert done.returncode == 0, done.stderr
    assert "(4 images in A, 4 in B)" in done.stderr  # one volume of 6 slices, the 2 empty ones skipped
    assert re.search(r"scores at epoch 0, step 2: psnr \d", done.stderr)  # scoring reads slices too
    saved = json.loads((run / "config.json").read_text())
    assert saved["data_B"]["lo"] == [-1024.0] and saved["data_B"]["dtype"] == "int16"
    assert saved["data_A"]["slice_axis"] == 2
    out = tmp_path / "out"
    assert run_here("translate", "--checkpoint", str(run), "--input", str(data / "mr2ct" / "test" / "A"),
                    "--output", str(out)).returncode == 0
    given = nibabel.load(str(data / "mr2ct" / "test" / "A" / "000.nii.gz"))
    made = nibabel.load(str(out / "000.nii.gz"))
    assert made.shape == given.shape
    assert np.array_equal(made.affine, given.affine)
    for form in ("get_qform", "get_sform"):
        assert np.allclose(getattr(made, form)(coded=True)[0], getattr(given, form)(coded=True)[0])
        assert getattr(made, form)(coded=True)[1] == getattr(given, form)(coded=True)[1]
    assert made.get_data_dtype() == np.int16  # B's type and units
    voxels = np.asarray(made.dataobj)
    assert -1024 <= voxels.min() and voxels.max() <= 3071

    # an exported generator carries the ranges: onnxruntime gives the same volume (the empty slices,
    # one value throughout, are left out: instance norm of a constant is not defined the same way)
    onnx = tmp_path / "g.onnx"
    assert run_here("export", "--checkpoint", str(run), "--format", "onnx", "--output", str(onnx)).returncode == 0
    assert run_here("translate", "--backend", "onnxruntime", "--checkpoint", str(onnx), "--input",
                    str(data / "mr2ct" / "test" / "A"), "--output", str(tmp_path / "onnx_out")).returncode == 0
    by_onnx = np.asarray(nibabel.load(str(tmp_path / "onnx_out" / "000.nii.gz")).dataobj).astype(np.int64)
    assert np.abs(by_onnx[:, :, 1:-1] - voxels[:, :, 1:-1]).max() <= 2

    # evaluate reads volumes slice by slice; --fake with B's range scores as --checkpoint does
    scores = []
    for source in (["--checkpoint", str(run), "--input", str(data / "mr2ct" / "test" / "A")],
                   ["--fake", str(out), "--value_range", "-1024", "3071"]):
        path = tmp_path / f"scores{len(scores)}.json"
        inception = write_inception_stand_in(tmp_path / "inception.pt")
        done = run_here("evaluate", *source, "--real", str(data / "mr2ct" / "test" / "B"), "--paired",
                        str(data / "mr2ct" / "test" / "B"), "--inception", str(inception), "--kid_subset_size", "2",
                        "--json", str(path))
        assert done.returncode == 0, done.stderr
        scores.append(json.loads(path.read_text()))
    assert scores[0]["n_paired"] == scores[1]["n_paired"] == 6
    assert scores[1]["l1"] == pytest.approx(scores[0]["l1"], abs=2e-3)


def test_a_missing_reader_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "v.nii.gz").write_bytes(b"not read")
    science._volume.cache_clear()
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(science.CycleGANError, match=r"needs nibabel: pip install 'cyclegan\[science\]'"):
        science.read_volume(tmp_path / "v.nii.gz")


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2 naming the file, before any step


def test_mixed_types_in_one_domain_name_the_first_odd_file(tmp_path):
    root = tmp_path / "data"
    for side in "AB":
        (root / "train" / side).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((32, 32), 1000 * (k + 1), np.uint16)).save(root / "train" / side / f"{k}.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "train" / "B" / "1.png")  # 8 bits among 16
    done = run_here("train", "--dataroot", str(root), "--channels", "1", "--output", str(tmp_path / "run"), *TINY)
    assert done.returncode == 2
    assert re.search(r"B/1\.png: holds uint8 pixels in 1 channel\(s\), but the domain B files before it hold "
                     r"uint16 in 1", done.stderr)
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "checkpoints").exists()


def test_nan_in_a_float_file_stops_the_run_naming_the_file(tmp_path):
    root = write_band_pairs(tmp_path / "data", bands=2)
    bad = np.random.default_rng(7).random((32, 32, 2)).astype(np.float32)
    bad[3, 4, 1] = np.nan
    for side in "AB":
        for p in (root / "train" / side).iterdir():
            tifffile.imwrite(p, np.random.default_rng(8).random((32, 32, 2)).astype(np.float32))
    tifffile.imwrite(root / "train" / "A" / "2.tif", bad)
    done = run_here("train", "--dataroot", str(root), "--channels", "2", "--output", str(tmp_path / "run"), *TINY)
    assert done.returncode == 2
    assert "A/2.tif: holds 1 NaN or infinite values" in done.stderr


def test_more_channels_than_the_files_hold_says_what_they_hold(tmp_path):
    root = tmp_path / "data"
    for side, seed in (("A", 1), ("B", 2)):
        write_images(root / "train" / side, 2, size=(32, 32), seed=seed, suffix=".jpg")
    done = run_here("train", "--dataroot", str(root), "--input_nc", "4", "--output_nc", "4", "--output",
                    str(tmp_path / "run"), *TINY)
    assert done.returncode == 2
    assert "the domain A files hold 3 channel(s) (uint8" in done.stderr and "pass --input_nc 3" in done.stderr


def test_a_range_that_clips_a_file_whole_is_a_warning_naming_it(tmp_path):
    root = tmp_path / "data"
    for side in "AB":
        (root / "train" / side).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((32, 32), 30000 + k, np.uint16)).save(root / "train" / side / f"{k}.png")
    done = run_here("train", "--dataroot", str(root), "--channels", "1", "--value_range", "0", "4095",
                    "--output", str(tmp_path / "run"), *TINY)
    assert done.returncode == 0, done.stderr
    assert re.search(r"A/0\.png: the value range 0 4095 clips 100\.0% of its pixels", done.stderr)
    assert "narrow band" not in done.stderr  # a range given is the user's


def test_files_that_fill_a_narrow_band_of_the_default_range_are_a_warning(tmp_path):
    """12-bit counts in 16-bit files, read by the type's range: A's values fill 4.6 % of it (a
    warning naming the domain, the band and the flag), B's 95 % (none)."""
    root = tmp_path / "data"
    rng = np.random.default_rng(3)
    for side, (offset, span) in (("A", (1000, 3000)), ("B", (1000, 62000))):
        (root / "train" / side).mkdir(parents=True)
        for k in range(2):
            ramp = np.linspace(0, 1, 32 * 32).reshape(32, 32)
            values = offset + span * np.clip(ramp + rng.normal(0, 0.01, ramp.shape), 0, 1)
            Image.fromarray(np.round(values).astype(np.uint16)).save(root / "train" / side / f"{k}.png")
    done = run_here("train", "--dataroot", str(root), "--channels", "1", "--output", str(tmp_path / "run"), *TINY)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "narrow band" in line]
    assert len(warnings) == 1, done.stderr
    assert re.search(r"domain A: the training files' values lie within 10\d\d\.\.(39|40)\d\d \(4\.\d %\) of the "
                     r"range 0\.\.65535 that --value_range dtype", warnings[0]), warnings[0]
    assert "give --value_range p0.5 p99.5" in warnings[0]


def test_a_png_that_cannot_hold_the_result_is_refused_before_any_work(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((32, 32), np.float32))
    out = tmp_path / "out"
    assert translate_with(monkeypatch, identity_generator(1), "--input", str(tmp_path / "x.tif"), "--output",
                          str(out), "--ext", "png", "--output_dtype", "float32") == 2
    assert not out.exists() or not any(out.iterdir())


def test_bad_science_flags_exit_2(tmp_path):
    for flags, message in ((("--value_range", "9", "3"), "--value_range 9 3"),
                           (("--channels", "4", "--display_bands", "0,1,4"), "--display_bands 0,1,4"),
                           (("--display_bands", "0,1"), "--display_bands 0,1")):
        done = run_here("train", *flags, "--output", str(tmp_path / "run"), *TINY)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_tiffs_are_read_by_what_they_hold(tmp_path):
    """16-bit colour at 16 bits, 8-bit four bands as four channels, RGBA as a photograph; a
    16-bit colour PNG (which Pillow reads through 8 bits) is refused, saying what to do."""
    rgb16 = np.random.default_rng(10).integers(0, 65535, (16, 16, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    array, _ = science.read_array(tmp_path / "rgb16.tif")
    assert array.dtype == np.uint16 and np.array_equal(array, rgb16)
    tifffile.imwrite(tmp_path / "bands.tif", np.zeros((16, 16, 4), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    tifffile.imwrite(tmp_path / "rgba.tif", np.zeros((16, 16, 4), np.uint8), photometric="rgb",
                     extrasamples=["unassalpha"])
    assert science.needs_array_path(tmp_path / "bands.tif") and not science.needs_array_path(tmp_path / "rgba.tif")
    assert science.read_array(tmp_path / "bands.tif")[0].shape == (16, 16, 4)
    with open(tmp_path / "rgb16.png", "wb") as f:  # a 48-bit PNG, written by hand (Pillow cannot)
        import struct
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(16))
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert science.needs_array_path(tmp_path / "rgb16.png")
    with pytest.raises(science.CycleGANError, match="16-bit colour PNG.*save it as a TIFF"):
        science.read_array(tmp_path / "rgb16.png")


def test_byte_order_and_2d_arrays(tmp_path):
    """Big-endian files are the same type as little-endian ones; a 2-D .npy comes back 2-D."""
    values = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    np.save(tmp_path / "be.npy", values.astype(">u2"))
    array, layout = science.read_array(tmp_path / "be.npy")
    assert array.dtype == np.dtype("uint16") and str(array.dtype) == "uint16" and np.array_equal(array[:, :, 0], values)
    science.write_array(array, tmp_path / "back.npy", layout)
    assert np.array_equal(np.load(tmp_path / "back.npy"), values)


def test_a_run_with_one_photograph_side_writes_photographs_there(tmp_path):
    rng = np.random.default_rng(11)

    def write(dir_A: Path, dir_B: Path, k: int) -> None:
        Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(dir_A / f"{k}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(dir_B / f"{k}.jpg")

    root = write_dataset(tmp_path / "data", write, train=3)
    run = tmp_path / "run"
    done = run_here("train", "--dataroot", str(root), "--input_nc", "1", "--output_nc", "3", "--lambda_id", "0",
                    "--output", str(run), *TINY)
    assert done.returncode == 0, done.stderr
    assert run_here("translate", "--checkpoint", str(run), "--input", str(root / "test" / "A"), "--output",
                    str(tmp_path / "ab")).returncode == 0
    assert Image.open(tmp_path / "ab" / "0.png").mode == "RGB"  # B holds 8-bit photographs
    refused = run_here("translate", "--checkpoint", str(run), "--direction", "BtoA", "--input",
                       str(root / "test" / "B"), "--output", str(tmp_path / "ba"))
    assert refused.returncode == 2 and "which .jpg cannot hold; pass --ext tif" in refused.stderr
    assert run_here("translate", "--checkpoint", str(run), "--direction", "BtoA", "--input", str(root / "test" / "B"),
                    "--output", str(tmp_path / "ba"), "--ext", "tif").returncode == 0
    assert tifffile.imread(tmp_path / "ba" / "0.tif").dtype == np.uint16  # A's type


def test_translate_refuses_nan_and_bool_inputs_by_name(tmp_path, monkeypatch):
    bad = np.ones((16, 16), np.float32)
    bad[2, 3] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    np.save(tmp_path / "mask.npy", np.ones((16, 16), bool))
    assert translate_with(monkeypatch, identity_generator(1), "--input", str(tmp_path / "inf.npy"),
                          str(tmp_path / "mask.npy"), "--output", str(tmp_path / "out")) == 1
    assert not (tmp_path / "out" / "inf.npy").exists() and not (tmp_path / "out" / "mask.npy").exists()


def test_display_bands_are_checked_against_the_sides_they_are_for():
    from cyclegan.options import TrainConfig, validate

    validate(TrainConfig(input_nc=4, output_nc=3, display_bands="3,2,1", lambda_id=0))
    with pytest.raises(science.CycleGANError, match="--display_bands 0,1,4"):
        validate(TrainConfig(input_nc=4, output_nc=3, display_bands="0,1,4", lambda_id=0))


# ---------------------------------------------------------------------------------------------
# docs/scientific.md: every command runs on the example data


def documented_commands() -> list[list[str]]:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.startswith("cyclegan ")]


def test_the_worked_examples_of_scientific_md_run(tmp_path):
    commands = documented_commands()
    assert len(commands) >= 8
    science.write_examples(tmp_path / "data", size=32, n_train=4, n_test=2)
    for command in commands:
        args = command[1:] + (list(TINY) if command[1] == "train" else [])
        done = run_here(*args, cwd=tmp_path)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stderr[-3000:]}"
    assert np.asarray(Image.open(tmp_path / "out" / "stains" / "000.png")).dtype == np.uint16
    assert tifffile.imread(tmp_path / "out" / "rgbn" / "000.tif").shape == (4, 32, 32)
    made = nibabel.load(str(tmp_path / "out" / "mr2ct" / "000.nii.gz"))
    assert made.get_data_dtype() == np.int16 and made.shape == (32, 32, 6)
