"""Watching training: metrics.jsonl, TensorBoard event files read back with TensorBoard's own
reader, the HTML report rendered in headless Chromium, and the Gradio demo driven in Chromium."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_RUN, run_here
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One short real run (3 epochs of 4 batches), shared by the tests here."""
    from conftest import write_images

    root = tmp_path_factory.mktemp("watch")
    data = root / "data"
    for split, n in (("train", 4), ("test", 2)):
        for k, domain in enumerate("AB"):
            write_images(data / split / domain, n, seed=10 * k + n)
    run = root / "run"
    result = run_here("train", "--dataroot", str(data), "--output", str(run), *SMALL_RUN, "--n_epochs", "3",
                     "--decay_epoch", "1", "--sample_interval", "3", "--log_interval", "2")
    assert result.returncode == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def test_metrics_jsonl_and_tensorboard_events_hold_every_term(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    # every 2nd step, which is also each epoch's last every other time
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]
    terms = {"D_A", "D_B", "D", "adv", "cycle", "identity", "G", "lr_G", "lr_D", "img_s", "peak_fraction"}
    assert all(terms <= set(r) for r in records)
    # the linear decay from epoch 1 to 0 at epoch 3: epochs 1 and 2 at 2e-4, epoch 3 at 1e-4
    assert [r["lr_G"] for r in records] == pytest.approx([2e-4] * 4 + [1e-4] * 2)

    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/D_A", "loss/D_B", "loss/adv", "loss/cycle", "loss/identity", "loss/G", "lr/lr_G",
            "speed/img_s"} <= set(tags["scalars"])
    cycle = events.Scalars("loss/cycle")
    assert [e.step for e in cycle] == [2, 4, 6, 8, 10, 12]
    assert [e.value for e in cycle] == pytest.approx([r["cycle"] for r in records], rel=1e-6)
    images = events.Images("samples")
    assert [e.step for e in images] == [0, 3, 6, 9]  # every --sample_interval batches
    grid = Image.open(trained_run / "samples" / "0000009.png")
    assert (images[-1].width, images[-1].height) == grid.size
    assert "config" in str(tags.get("tensors", [])) or "config" in str(tags)


def test_the_report_renders_in_chromium_with_the_loss_chart_and_the_grids(trained_run, browser, tmp_path):
    report = trained_run / "report.html"
    assert report.is_file()  # written at the end of training
    result = run_here("report", str(trained_run), "--output", str(tmp_path / "r.html"))
    assert result.returncode == 0, result.stderr
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(report.as_uri())
    chart = page.locator("#loss-chart")
    assert chart.evaluate("img => img.complete && img.naturalWidth") > 800
    grids = page.locator("figure.sample img")
    assert grids.count() == 4
    assert all(grids.nth(k).evaluate("img => img.naturalWidth") > 0 for k in range(4))
    assert "lambda_cyc" in page.locator("#config").inner_text()
    assert "checkpoints" in page.locator("#checkpoint").inner_text()
    shot = Path(os.environ.get("CYCLEGAN_SCREENSHOTS", tmp_path)) / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert image.shape[1] == 1400 and image.std() > 10  # a page with content, not a blank one
    page.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@pytest.mark.long
def test_the_web_demo_translates_an_upload_and_refuses_an_oversized_one(trained_run, browser, tmp_path):
    port = free_port()
    temp = tmp_path / "tmp"  # the system temp folder serve works in: empty again after it exits
    temp.mkdir()
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               TMPDIR=str(temp))
    proc = subprocess.Popen([sys.executable, "-m", "cyclegan", "serve", "--checkpoint", str(trained_run), "--port",
                             str(port), "--max_pixels", "5000"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url, proc)
        photo = tmp_path / "photo.png"
        Image.fromarray((np.random.default_rng(0).random((44, 60, 3)) * 255).astype(np.uint8)).save(photo)
        big = tmp_path / "big.png"
        Image.fromarray(np.zeros((80, 80, 3), dtype=np.uint8)).save(big)  # 6400 pixels > 5000

        page = browser.new_page()
        page.goto(url)
        page.locator("#input-image input[type=file]").set_input_files(str(photo))
        page.get_by_label("BtoA").check()
        page.locator("#translate").click()
        result = page.locator("#output-image img")
        result.wait_for(timeout=60_000)
        page.wait_for_function("() => { const i = document.querySelector('#output-image img');"
                               " return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
        assert result.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [60, 44]
        download = page.locator("#download a").first
        download.wait_for(timeout=30_000)
        with page.expect_download() as info:
            download.click()
        saved = tmp_path / "downloaded.png"
        info.value.save_as(saved)
        assert Image.open(saved).size == (60, 44)

        page.screenshot(path=str(Path(os.environ.get("CYCLEGAN_SCREENSHOTS", tmp_path)) / "serve.png"))
        page.goto(url)  # a fresh page for the oversized upload
        page.locator("#input-image input[type=file]").set_input_files(str(big))
        page.locator("#translate").click()
        page.get_by_text("too large").first.wait_for(timeout=30_000)
        assert "5,000" in page.content()
        assert proc.poll() is None  # the server lives on
        page.close()
        assert [p.name for p in temp.iterdir() if p.name.startswith("cyclegan-serve-")]  # its private workspace
        second = subprocess.run([sys.executable, "-m", "cyclegan", "serve", "--checkpoint", str(trained_run), "--port",
                                 str(port)], env=env, capture_output=True, text=True)
        assert second.returncode == 2 and "choose another --port" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # The uploads and translations the users made are gone with the server.
    assert not [p for p in temp.rglob("*") if "cyclegan-serve-" in str(p)], sorted(temp.rglob("*"))
