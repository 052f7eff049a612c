"""Hostile input on every command, property-based: flags with NaN, infinities, zero, negatives,
huge numbers, empty strings, text where a number belongs, a file where a folder belongs and the
reverse; and hostile image files (empty, truncated, a decompression-bomb header, 1x1, alpha,
CMYK, 16-bit, a name that is not UTF-8). Each call runs the command's real ``main`` in this
process and must end in an exit status, never a traceback or an internal error; nonsense is
never accepted (exit 0), nothing is written outside the output asked for, and no input changes.

Examples are drawn deterministically (``derandomize``), so a failure here fails every run."""

from __future__ import annotations

import io
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cyclegan import evaluate, export, report, translate
from cyclegan import train as train_module
from cyclegan.checkpoint import checkpoint_path, save_networks
from cyclegan.registry import build_networks
from cyclegan.options import TrainConfig

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

NONSENSE_NUMBERS = ["nan", "NaN", "inf", "-inf", "1e400", "-1", "-1e9", "99999999999999999999999", "", " ", "abc",
                    "0x10", "1,5"]
# Each can be valid for some flags (0 steps, a fraction): the command may accept or refuse them.
ODD_NUMBERS = ["0", "1e-30", "0.5", "3", "1e9", "65537"]


def run_main(main, argv: list[str], caplog) -> int:
    """The command's exit status; argparse's refusals (SystemExit 2) count as status 2."""
    caplog.clear()
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 2
    text = caplog.text
    assert "Traceback" not in text, text
    assert "internal error" not in text, text
    return status


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    data = root / "data"
    for split, n in (("train", 4), ("test", 2)):
        write_images(data / split / "A", n, seed=1)
        write_images(data / split / "B", n, seed=2)
    torch.manual_seed(0)
    config = TrainConfig(img_height=32, img_width=32, n_residual_blocks=1, ngf=8, ndf=8)
    run = root / "run"
    save_networks(checkpoint_path(run, 1), build_networks(config), {"epoch": 1, "config": config.to_json()})
    (run / "config.json").write_text('{"ngf": 8}')
    afile = root / "a_file.txt"
    afile.write_text("not a folder")
    return {"root": root, "data": data, "run": run, "afile": afile, "images": hostile_images(root / "hostile")}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def hostile_images(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    good = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    good.save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    buffer = io.BytesIO()
    good.save(buffer, format="PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[:60])
    (folder / "bomb.png").write_bytes(_png_header(200_000, 200_000))
    Image.new("RGB", (1, 1), (255, 0, 0)).save(folder / "one.png")
    Image.new("RGB", (3, 500), (0, 255, 0)).save(folder / "thin.png")
    Image.new("LA", (17, 9), (100, 50)).save(folder / "grey_alpha.png")
    Image.new("CMYK", (16, 16), (0, 50, 100, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (12, 12), dtype=np.uint16)).save(folder / "deep.png")
    (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(buffer.getvalue())
    (folder / "text.jpg").write_text("this is not a JPEG")
    return folder


TRAIN_FLAGS = ["--lr", "--b1", "--b2", "--lambda_cyc", "--lambda_id", "--init_gain", "--img_height", "--img_width",
               "--batch_size", "--n_epochs", "--decay_epoch", "--n_residual_blocks", "--ngf", "--seed", "--pool_size",
               "--n_cpu", "--max_steps", "--save_every_steps", "--keep_checkpoints", "--sample_interval",
               "--channels", "--load_size", "--crop_size", "--max_dataset_size"]


@settings(FUZZ, max_examples=300)  # refused in milliseconds: nearly every flag with every value
@given(flag=st.sampled_from(TRAIN_FLAGS), value=st.sampled_from(NONSENSE_NUMBERS))
def test_train_refuses_nonsense_numbers_in_one_line(world, caplog, tmp_path, flag, value):
    output = world["root"] / "train_out"
    shutil.rmtree(output, ignore_errors=True)
    before = snapshot(world["data"])
    argv = ["--dataroot", str(world["data"]), "--output", str(output), "--img_height", "32", "--img_width", "32",
            "--n_residual_blocks", "1", "--ngf", "8", "--ndf", "8", "--n_cpu", "0", "--max_steps", "1",
            "--logger", "none", "--overwrite", flag, value]
    status = run_main(train_module.main, argv, caplog)
    assert status == 2, f"{flag} {value!r} was accepted"
    assert snapshot(world["data"]) == before
    assert not (output / "checkpoints").exists()


@FUZZ
@given(flag=st.sampled_from(["--dataroot", "--output", "--config", "--resume"]),
       where=st.sampled_from(["afile", "missing", "empty", "nul", "data_as_output"]))
def test_train_refuses_wrong_paths_in_one_line(world, caplog, flag, where):
    value = {"afile": str(world["afile"]), "missing": str(world["root"] / "nope" / "x"), "empty": "",
             "nul": "a\x00b", "data_as_output": str(world["afile"])}[where]
    if flag == "--output" and where == "missing":
        return  # a new run folder: valid
    before = snapshot(world["root"])
    argv = ["--dataroot", str(world["data"]), "--img_height", "32", "--img_width", "32", "--n_residual_blocks", "1",
            "--ngf", "8", "--ndf", "8", "--n_cpu", "0", "--max_steps", "1", "--logger", "none"]
    if flag != "--output":
        argv += ["--output", str(world["root"] / "paths_out"), "--overwrite"]
    status = run_main(train_module.main, [*argv, flag, value], caplog)
    assert status == 2, f"{flag} {value!r} was accepted"
    after = snapshot(world["root"])
    mine = {k: v for k, v in before.items() if "paths_out" not in k}
    assert {k: v for k, v in after.items() if k in mine} == mine  # nothing of the user's touched
    assert all("paths_out" in k for k in set(after) - set(before)), set(after) - set(before)


TRANSLATE_FLAGS = ["--size", "--overlap", "--tile", "--batch_size"]


@FUZZ
@given(flag=st.sampled_from(TRANSLATE_FLAGS), value=st.sampled_from(NONSENSE_NUMBERS + ODD_NUMBERS),
       resize=st.booleans())
def test_translate_with_hostile_flags_and_files(world, caplog, flag, value, resize):
    images = world["images"]
    before = snapshot(images)
    output = world["root"] / "translated"
    argv = ["--checkpoint", str(world["run"]), "--input", str(images), "--output", str(output), "--overwrite",
            flag, value, *(["--resize"] if resize else [])]
    status = run_main(translate.main, argv, caplog)
    assert snapshot(images) == before
    if value in NONSENSE_NUMBERS:
        assert status == 2, f"{flag} {value!r} was accepted"
    else:
        assert status in (1, 2)  # the hostile files cannot all be read: never a clean 0
    if status == 1:  # translated what could be, named what could not
        for name in ("empty.png", "truncated.png", "bomb.png", "text.jpg"):
            assert name in caplog.text
        assert (output / "good.png").is_file() and (output / "index.html").is_file()
        assert (output / "one.png").is_file() and Image.open(output / "thin.png").size == (3, 500)


@FUZZ
@given(flag=st.sampled_from(["--kid_subset_size", "--size"]), value=st.sampled_from(NONSENSE_NUMBERS + ["0", "1"]))
def test_evaluate_refuses_nonsense_before_any_work(world, caplog, flag, value):
    argv = ["--fake", str(world["images"]), "--real", str(world["images"]), "--inception",
            str(world["root"] / "no_inception.pt"), flag, value]
    assert run_main(evaluate.main, argv, caplog) == 2


@FUZZ
@given(flag=st.sampled_from(["--opset", "--tolerance"]), value=st.sampled_from(NONSENSE_NUMBERS + ["0", "6", "999"]))
def test_export_refuses_nonsense_and_writes_nothing(world, caplog, flag, value):
    output = world["root"] / "exported.onnx"
    output.unlink(missing_ok=True)
    argv = ["--checkpoint", str(world["run"]), "--format", "onnx", "--output", str(output), flag, value]
    assert run_main(export.main, argv, caplog) == 2
    assert not output.exists()
    assert not [p for p in world["root"].iterdir() if p.name.startswith(".exported.onnx")]


@FUZZ
@given(config=st.sampled_from([b"", b"{", b"[1, 2]", b"\xff\xfe", b"null", b'{"ngf": 8}']),
       metrics=st.sampled_from([b"", b"{\"step\": 1", b"\xff\n", b'{"step": "one"}\n', b'{"step": 1, "G": "x"}\n',
                                b"[]\n" * 3]))
def test_report_on_damaged_files(tmp_path_factory, caplog, config, metrics):
    run = tmp_path_factory.mktemp("report")
    (run / "config.json").write_bytes(config)
    (run / "metrics.jsonl").write_bytes(metrics)
    status = run_main(report.main, [str(run)], caplog)
    if config == b'{"ngf": 8}':
        assert status == 0 and (run / "report.html").is_file()
    else:
        assert status == 2 and "config.json" in caplog.text and not (run / "report.html").exists()


def test_the_hostile_files_are_what_they_claim():
    """The fixture's files really are hostile (else the tests above prove little)."""
    folder = hostile_images(Path(os.environ.get("TMPDIR", "/tmp")) / f"hostile-check-{os.getpid()}")
    try:
        with pytest.raises(Image.DecompressionBombError):
            Image.open(folder / "bomb.png")
        with pytest.raises(OSError):
            Image.open(folder / "truncated.png").load()
        assert Image.open(folder / "deep.png").mode.startswith("I")
        assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


@pytest.fixture(autouse=True)
def _capture_everything(caplog):
    caplog.set_level(logging.INFO)
