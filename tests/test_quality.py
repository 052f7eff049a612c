"""Quality on photographs, as a regression check: the duotone task of ``benchmarks/quality.py
--preset tell`` (``photo_task.py``), shortened, as a learning test, and a check that our training
transform is the reference's, draw for draw.

The shortened task (32x32, 16-filter networks with one residual block, 400 steps) must end 3 dB
above both of its baselines (doing nothing, the best constant image): a pipeline that wrecks the
images, swaps the domains or stops learning misses it. Calibration: docs/benchmarks.md, "The
quality regression check"."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_here
from photo_task import (TEST_PHOTOS, TRAIN_PHOTOS, colour_transform, constant_score, duotone_transform, identity_score,
                        load_photo, photo_path, score, write_photo_task)
from PIL import Image

from cyclegan.inference import load_generator

DUOTONE_THRESHOLD_DB = 16.1  # 3 dB above both baselines, 2.6 dB below every calibration seed (docs/benchmarks.md)


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


@pytest.fixture(scope="module")
def duotone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_photo_task(tmp_path_factory.mktemp("duotone") / "task", size=32, n_train=200, mapping="duotone")


def test_the_duotone_task_is_a_per_pixel_map_that_both_baselines_miss(duotone):
    """The task that can tell: B is a fixed per-pixel colour map of A (blue ramp to orange ramp,
    light kept light), and neither doing nothing nor the best constant image comes near it."""
    a = np.asarray(Image.open(duotone / "test" / "A" / "0005.png"))
    b = np.asarray(Image.open(duotone / "test" / "B" / "0005.png"))
    assert np.array_equal(duotone_transform(a), b)
    assert a[..., 2].mean() > a[..., 0].mean() and b[..., 0].mean() > b[..., 2].mean()  # blue A, orange B
    luminance = [x.astype(float) @ [0.299, 0.587, 0.114] for x in (a, b)]
    assert np.corrcoef(luminance[0].ravel(), luminance[1].ravel())[0, 1] > 0.99  # light stays light
    assert identity_score(duotone) < 10.0 and constant_score(duotone) < 14.0


@pytest.mark.long
def test_cyclegan_train_learns_the_duotone_photographs(duotone, tmp_path):
    """A learning test on photographs: small networks, 400 steps, must end well above both
    baselines (calibration in docs/benchmarks.md, "The quality regression check")."""
    run = tmp_path / "run"
    result = run_here(
        "train", "--dataroot", str(duotone), "--output", str(run), "--seed", "0", "--img_height", "32",
        "--img_width", "32", "--ngf", "16", "--ndf", "16", "--n_residual_blocks", "1", "--n_epochs", "2",
        "--decay_epoch", "1", "--n_cpu", "0", "--logger", "none"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert (config["n_epochs"], config["decay_epoch"]) == (2, 1)
    psnr = score(load_generator(run).net, duotone)
    baselines = max(identity_score(duotone), constant_score(duotone))
    assert psnr > DUOTONE_THRESHOLD_DB, f"G_AB scored {psnr:.2f} dB on the duotone task (the better baseline: " \
                                        f"{baselines:.2f}); see docs/benchmarks.md for what a working pipeline scores"


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
