"""Shared fixtures: small real image folders on disk and a runner for the real command line."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Under pytest-xdist (``make test`` runs ``-n auto``: a worker per core) each worker, and every
# process it starts, gets its share of the cores: set before torch is imported, so that the
# workers' thread pools do not fight over the same cores.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                     // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # should torch have come in first

from cyclegan.checkpoint import checkpoint_path, save_networks  # noqa: E402
from cyclegan.options import TrainConfig  # noqa: E402
from cyclegan.registry import build_networks  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests marked ``long`` (15 s to 2 min on 2 cores: learning runs, ``torchrun``
    launches, killed processes) run first, the rest in their order: parallel workers then share
    the long ones out at the start and finish together, instead of one starting a long test as
    the others run out of work."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def write_images(folder: Path, count: int, size=(40, 36), seed: int = 0, suffix: str = ".png") -> list[Path]:
    """``count`` random-noise RGB images (smooth enough to look like something) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BILINEAR)
        path = folder / f"img_{k:03d}{suffix}"
        img.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def image_folders(tmp_path: Path) -> Path:
    """A dataset in the reference layout: 4 train and 2 test images per domain."""
    root = tmp_path / "data"
    write_images(root / "train" / "A", 4, seed=1)
    write_images(root / "train" / "B", 4, seed=2)
    write_images(root / "test" / "A", 2, seed=3)
    write_images(root / "test" / "B", 2, seed=4)
    return root


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m cyclegan ARGS`` as a real process; stdout and stderr captured as text."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "cyclegan", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def run_here(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``cyclegan ARGS`` in this process, as ``run_cli`` runs it in a new one, without the second
    and a half a new Python takes to import torch: its exit status, its stdout, and its stderr with
    the log lines in it. For the tests of what a command does; those of what a process does
    (signals, exit statuses of the interpreter, the console script) use ``run_cli``."""
    from cyclegan.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's refusals and --help
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        os.chdir(here)
        root.removeHandler(handler)
        root.setLevel(level)
    return subprocess.CompletedProcess(["cyclegan", *args], code, out.getvalue(), err.getvalue())


# Narrow networks (16 filters where the reference has 64): what these runs test does not depend on
# the width, and checkpoints 16x smaller write fast.
SMALL_RUN = (
    "--img_height", "32", "--img_width", "32", "--n_residual_blocks", "1", "--ngf", "16", "--ndf", "16",
    "--n_cpu", "0", "--seed", "0",
)


def write_inception_stand_in(path: Path) -> Path:
    """A TorchScript module with the FID Inception's interface (uint8 images in,
    ``return_features=True``), standing in for the 91 MB file in tests."""

    class StandIn(nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
            f = x.float() / 255
            return torch.cat([f.mean((2, 3)), f.std((2, 3)), f[:, :, ::50, ::50].flatten(1)], 1)

    torch.jit.script(StandIn()).save(str(path))
    return path


def assert_same_losses_and_weights(first: tuple[list, dict], second: tuple[list, dict]) -> None:
    """Two runs of steps, each (the losses of every step, the networks' state dicts at the end),
    are equal to the bit."""
    (losses_a, nets_a), (losses_b, nets_b) = first, second
    for a, b in zip(losses_a, losses_b, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for name in nets_a:
        assert all(torch.equal(nets_a[name][k], nets_b[name][k]) for k in nets_a[name]), name


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """A run folder with an epoch checkpoint of small networks (as training writes it)."""
    torch.manual_seed(0)
    config = TrainConfig(img_height=32, img_width=32, n_residual_blocks=1, ngf=8, ndf=8)
    run = tmp_path / "run"
    save_networks(checkpoint_path(run, 1), build_networks(config), {"epoch": 1, "config": config.to_json()})
    return run
