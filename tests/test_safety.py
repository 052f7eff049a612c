"""Nothing of the user's is lost: translate never replaces an input or an earlier result unasked,
two processes never work in one run folder, a resumed run's logs hold each step once, a finished
run is not trained past its end, and odd image sizes translate."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_RUN
from PIL import Image

from cyclegan import train as train_module
from cyclegan import translate as translate_module
from cyclegan.checkpoint import checkpoint_path
from cyclegan.inference import load_generator, translate_image
from cyclegan.logger import RunLogger, cut_metrics, read_metrics
from cyclegan.options import TrainConfig
from cyclegan.runlock import LOCK_NAME, hold_run_folder


def photo(path: Path, seed: int, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def translate(*args: str) -> int:
    return translate_module.main(list(args))


def test_translate_never_writes_over_its_inputs(tmp_path, tiny_run, caplog):
    photos = tmp_path / "photos"
    for i in range(3):
        photo(photos / f"p{i}.png", i)
    photo(photos / "nested" / "deep.png", 9)
    before = snapshot(photos)
    ck = str(tiny_run)
    cases = {
        "the input folder itself": (str(photos), str(photos)),
        "a folder inside the input": (str(photos), str(photos / "translated")),
        "a folder holding the input": (str(photos / "nested"), str(photos)),
        "the input's folder, by a file": (str(photos / "p0.png"), str(photos)),
    }
    for why, (source, output) in cases.items():
        caplog.clear()
        for overwrite in ((), ("--overwrite",)):
            status = translate("--checkpoint", ck, "--input", source, "--output", output, *overwrite)
            assert status == 2, f"{why} {overwrite}: exit {status}"
            assert "--output" in caplog.text, why
        assert snapshot(photos) == before, f"{why}: the inputs changed"
    assert not (photos / "translated").exists() and not (photos / "index.html").exists()


def test_translate_replaces_earlier_results_only_with_overwrite(tmp_path, tiny_run, caplog):
    source = photo(tmp_path / "in" / "cat.png", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("my own page")
    (out / "notes.txt").write_text("keep me")
    status = translate("--checkpoint", str(tiny_run), "--input", str(source), "--output", str(out))
    assert status == 2 and "index.html" in caplog.text and "--overwrite" in caplog.text
    assert (out / "index.html").read_text() == "my own page" and not (out / "cat.png").exists()
    # Without index.html, nothing of this call's is there: it goes ahead and leaves the rest.
    assert translate("--checkpoint", str(tiny_run), "--input", str(source), "--output", str(out), "--no_index") == 0
    first = (out / "cat.png").read_bytes()
    caplog.clear()
    assert translate("--checkpoint", str(tiny_run), "--input", str(source), "--output", str(out), "--no_index",
                     "--ext", "png") == 2
    assert "cat.png" in caplog.text and (out / "cat.png").read_bytes() == first
    (out / "cat.png").write_bytes(b"an older result")
    assert translate("--checkpoint", str(tiny_run), "--input", str(source), "--output", str(out), "--overwrite") == 0
    assert (out / "cat.png").read_bytes() == first  # the same translation again, replacing the older one
    assert "cat.png" in (out / "index.html").read_text()
    assert (out / "notes.txt").read_text() == "keep me"
    # An input whose translation would land on another input is refused even with --overwrite.
    twin = photo(out / "dog.png", 2)
    kept = twin.read_bytes()
    assert translate("--checkpoint", str(tiny_run), "--input", str(twin), str(source), "--output", str(out),
                     "--overwrite") == 2
    assert twin.read_bytes() == kept


def test_translate_checks_its_flags_before_any_work(tmp_path, tiny_run, caplog):
    source = photo(tmp_path / "in" / "cat.png", 1)
    (tmp_path / "afile").write_text("x")
    for flags, named in [(("--size", "0", "--resize"), "--size"), (("--overlap", "-1"), "--overlap"),
                         (("--batch_size", "0"), "--batch_size")]:
        caplog.clear()
        assert translate("--checkpoint", str(tiny_run), "--input", str(source), "--output", str(tmp_path / "o"),
                         *flags) == 2
        assert named in caplog.text
    caplog.clear()
    assert translate("--checkpoint", str(tiny_run), "--input", str(source), "--output", str(tmp_path / "afile")) == 2
    assert "is a file" in caplog.text
    assert not (tmp_path / "o").exists()


def test_index_html_links_any_file_name(tmp_path, tiny_run):
    odd = photo(tmp_path / "in" / "a #1 & <b> ü.png", 1)
    out = tmp_path / "out"
    assert translate("--checkpoint", str(tiny_run), "--input", str(odd), "--output", str(out)) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<b>" not in page and "a%20%231%20%26%20%3Cb%3E%20%C3%BC.png" in page
    assert (out / "a #1 & <b> ü.png").is_file()


@pytest.mark.parametrize("size", [(1, 1), (3, 500), (7, 2), (5, 9)])
def test_images_smaller_than_the_network_translate(tiny_run, size):
    gen = load_generator(tiny_run)
    x = torch.rand(1, 3, size[0], size[1]) * 2 - 1
    y = translate_image(gen, x)
    assert y.shape == x.shape and torch.isfinite(y).all()


HOLDER = textwrap.dedent("""
    import sys, time
    from cyclegan.runlock import hold_run_folder
    with hold_run_folder(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def test_two_processes_never_work_in_one_run_folder(tmp_path, image_folders, caplog):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        info = json.loads((run / LOCK_NAME).read_text())
        assert info["pid"] == holder.pid
        argv = ["--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN, "--n_epochs", "1",
                "--decay_epoch", "0", "--max_steps", "1"]
        assert train_module.main(argv) == 2
        assert f"in use by process {holder.pid}" in caplog.text
        caplog.clear()
        assert train_module.main(["--resume", "--output", str(run)]) == 2
        assert f"process {holder.pid}" in caplog.text
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # kill -9 releases it: the kernel drops a dead process's locks; nothing is stale.
    assert train_module.main(argv) == 0
    assert (run / "config.json").is_file()


def test_the_lock_is_reentrant_and_leaves_no_empty_folder(tmp_path):
    folder = tmp_path / "new" / "run"
    with hold_run_folder(folder):
        with hold_run_folder(folder):
            assert (folder / LOCK_NAME).is_file()
        assert (folder / LOCK_NAME).is_file()
    assert not folder.exists()  # created for nothing: removed again
    folder.mkdir(parents=True)
    (folder / "data.txt").write_text("mine")
    with hold_run_folder(folder):
        pass
    assert (folder / "data.txt").read_text() == "mine"


def test_a_resumed_run_logs_each_step_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "G": float(s)}) for s in range(1, 8)]
    path.write_text("\n".join(lines) + "\n" + '{"step": 8, "G"')  # a crash tore the last line
    cut_metrics(path, 5)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    logger = RunLogger(tmp_path, "none", {}, resumed_at=3)
    logger.scalars(4, {"G": 40.0})
    logger.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert [r["G"] for r in read_metrics(tmp_path)] == [1.0, 2.0, 3.0, 40.0]


def test_a_finished_run_is_not_trained_past_max_steps(tmp_path, image_folders, caplog):
    run = tmp_path / "run"
    argv = ["--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN, "--n_epochs", "1", "--decay_epoch",
            "0", "--max_steps", "2", "--logger", "none"]
    assert train_module.main(argv) == 0
    stamp = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints" / "resume").iterdir()}
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert train_module.main(["--resume", "--output", str(run), "--max_steps", "2"]) == 0
    assert "nothing to do" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints" / "resume").iterdir()} == stamp


@pytest.mark.parametrize("workers", ["0", "2"])
def test_an_image_that_goes_bad_during_training_saves_the_run_and_names_it(tmp_path, image_folders, caplog,
                                                                            monkeypatch, workers):
    # The file is good when the run starts (every image is checked then) and is cut short on
    # disk after the second step: the next epoch reads it again.
    victim = image_folders / "train" / "A" / "img_002.png"
    real_step = train_module.run_step
    steps = []

    def step_then_damage(*args, **kwargs):
        steps.append(1)
        if len(steps) == 2:
            victim.write_bytes(victim.read_bytes()[:40])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "run_step", step_then_damage)
    run = tmp_path / "run"
    argv = ["--dataroot", str(image_folders), "--output", str(run), *SMALL_RUN, "--n_cpu", workers, "--n_epochs", "3",
            "--decay_epoch", "1", "--logger", "none"]
    assert train_module.main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "img_002.png could not be read during training" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in caplog.text
    saved = sorted((run / "checkpoints" / "resume").iterdir())
    assert saved and int(saved[-1].name.removeprefix("step_")) == len(steps)  # every step done is kept
    assert f"saved at step {len(steps)}" in errors[0]


def test_half_precision_generator_files_translate(tmp_path, tiny_run):
    from safetensors.torch import load_file, save_file

    source = photo(tmp_path / "in" / "cat.png", 1)
    weights = load_file(str(checkpoint_path(tiny_run, 1)))
    outputs = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        path = tmp_path / f"g_{str(dtype)[6:]}.safetensors"
        save_file({k.split(".", 1)[1]: v.to(dtype) for k, v in weights.items() if k.startswith("G_AB.")}, str(path))
        out = tmp_path / f"out_{str(dtype)[6:]}"
        assert translate("--checkpoint", str(path), "--input", str(source), "--output", str(out)) == 0
        outputs[dtype] = np.asarray(Image.open(out / "cat.png"), dtype=np.int16)
    # Rounded weights, nearly the same picture.
    assert np.abs(outputs[torch.float16] - outputs[torch.float32]).mean() < 2
    assert np.abs(outputs[torch.bfloat16] - outputs[torch.float32]).mean() < 6


@pytest.mark.parametrize("metadata, named", [
    ({"epoch": "1", "config": "{not json"}, "metadata is damaged"),
    ({"epoch": "1", "config": json.dumps({"ngf": "wide"})}, "ngf = 'wide'"),
    ({"epoch": "1", "config": json.dumps(["a", "list"])}, "not a mapping"),
], ids=["not-json", "wrong-type", "not-a-mapping"])
def test_a_checkpoint_with_malformed_metadata_is_one_line(tmp_path, tiny_run, caplog, metadata, named):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad" / "epoch_1.safetensors"
    bad.parent.mkdir()
    save_file(load_file(str(checkpoint_path(tiny_run, 1))), str(bad), metadata=metadata)
    source = photo(tmp_path / "in" / "cat.png", 1)
    assert translate("--checkpoint", str(bad), "--input", str(source), "--output", str(tmp_path / "o")) == 2
    assert named in caplog.text and str(bad) in caplog.text and "Traceback" not in caplog.text


def test_the_time_left_counts_to_max_steps_and_the_peak_fraction_to_the_batch_found():
    from cyclegan.resume import Position

    config = TrainConfig(n_epochs=200, decay_epoch=100, max_steps=800)
    assert train_module.steps_left(config, Position(epoch=0, batch=0, step=0), 1000) == 800
    assert train_module.steps_left(config, Position(epoch=0, batch=300, step=300), 1000) == 500
    assert train_module.steps_left(TrainConfig(n_epochs=2, decay_epoch=1), Position(epoch=1, batch=10, step=110),
                                   100) == 90
    # 100 asked, 4 found: the fraction is of the 4 images' work, not of 100.
    clock = train_module.Clock(flops_per_image=1e9, peak_gflops=1e12, total_batches=10)
    time.sleep(0.01)
    _, fraction, _ = clock.tick(4, 4)
    assert 0 < fraction < 4e9 / 0.01 / 1e9 / 1e3 + 1e-9


def test_demo_refuses_an_output_that_is_a_file_or_another_run(tmp_path, caplog):
    from cyclegan import demo

    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    assert demo.main(["--output", str(afile)]) == 2
    assert "is a file" in caplog.text and afile.read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.png").write_bytes(b"mine")
    assert demo.main(["--output", str(other)]) == 2
    assert sorted(p.name for p in other.iterdir()) == ["photo.png"]
