"""Quality on photographs, as a regression check: the photographic task of ``benchmarks/quality.py``
(``photo_task.py``), shortened, and a check that our training transform is the reference's.

The shortened task (32x32, 16-filter networks with one residual block, 600 steps) guards against a
pipeline that wrecks the images; at that length its score cannot tell learning from noise, so the
transform check carries the pipeline's detail. Calibration and limits: docs/benchmarks.md, "The
quality regression check".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_here
from photo_task import TEST_PHOTOS, TRAIN_PHOTOS, colour_transform, identity_score, load_photo, photo_path, score, write_photo_task
from PIL import Image

from cyclegan.inference import load_generator

THRESHOLD_DB = 13.0  # below every calibration seed, above inputs left in [0, 1] (docs/benchmarks.md)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photo_task(tmp_path_factory.mktemp("photos") / "task", size=32, n_train=200)


def test_the_task_is_built_from_shipped_photographs_with_unseen_test_photographs(task):
    for package, relative in TRAIN_PHOTOS + TEST_PHOTOS:
        assert photo_path(package, relative).is_file()
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    assert len(list((task / "train" / "A").glob("*.png"))) == 200
    assert len(list((task / "test" / "A").glob("*.png"))) == 16 * len(TEST_PHOTOS)
    # Each truth is the hidden mapping of its test input, which is not the identity.
    a = np.asarray(Image.open(task / "test" / "A" / "0005.png"))
    b = np.asarray(Image.open(task / "test" / "B" / "0005.png"))
    assert np.array_equal(colour_transform(a), b) and not np.array_equal(a, b)
    assert 13.0 < identity_score(task) < 17.0


def test_cyclegan_train_on_the_shortened_photographic_task_keeps_the_images_whole(task, tmp_path):
    run = tmp_path / "run"
    result = run_here(
        "train", "--dataroot", str(task), "--output", str(run), "--seed", "0", "--img_height", "32",
        "--img_width", "32", "--ngf", "16", "--ndf", "16", "--n_residual_blocks", "1", "--n_epochs", "3",
        "--decay_epoch", "1", "--n_cpu", "0", "--logger", "none"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert (config["n_epochs"], config["decay_epoch"]) == (3, 1)
    psnr = score(load_generator(run).net, task)
    assert psnr > THRESHOLD_DB, f"G_AB scored {psnr:.2f} dB on the photographic task (doing nothing: " \
                                f"{identity_score(task):.2f}); see docs/benchmarks.md for what a working pipeline scores"


def test_the_training_transform_is_the_reference_transform_draw_for_draw(task):
    """``cyclegan train``'s default transform against the benchmark's plain PIL/NumPy transcription
    of the reference's torchvision one: the same tensor from the same torch seed, on the task's
    crops and on whole photographs of both orientations."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from quality import reference_transform

    from cyclegan.datasets import Compose, build_transforms

    images = [Image.open(p).convert("RGB") for p in sorted((task / "train" / "A").glob("*.png"))[:6]]
    coffee = load_photo("skimage", "data/coffee.png")  # 600 x 400
    images += [coffee, coffee.transpose(Image.ROTATE_90)]
    ours = Compose(build_transforms("reference", 32, 32))
    for k, img in enumerate(images):
        for seed in range(4):
            torch.manual_seed(seed)
            expected = reference_transform(img, 32, 32)
            torch.manual_seed(seed)
            assert torch.equal(ours(img), expected), f"image {k}, seed {seed}"
