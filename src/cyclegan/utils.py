"""Small shared helpers: the replay buffer of past fakes, the linear-decay LR rule (both the
reference's), PSNR, seeding and atomic file writes."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "ReplayBuffer",
    "LambdaLR",
    "seed_everything",
    "atomic_write",
    "replace_dir",
    "current_umask",
    "fsync_dir",
    "psnr",
]


class ReplayBuffer:
    """A pool of past generated images, shown to the discriminator instead of only the newest.

    ``push_and_pop(batch)`` goes image by image: while fewer than ``max_size`` images are
    stored, the image is stored and returned; once full, with probability 1/2 a random stored
    image is returned (a copy) and the new one takes its place, otherwise the new image is
    returned. Stored images are detached copies on the images' device.

    ``rng`` is anything with ``uniform`` and ``randint`` (a ``random.Random``, or the ``random``
    module itself to draw exactly as the reference code does); by default the buffer owns a
    ``random.Random`` seeded from the ``random`` module, so ``random.seed`` makes it repeatable.
    """

    def __init__(self, max_size: int = 50, rng: Any = None) -> None:
        if max_size <= 0:
            raise ValueError(f"ReplayBuffer max_size must be > 0, got {max_size}")
        self.max_size = int(max_size)
        self.data: list[torch.Tensor] = []
        self.rng = rng if rng is not None else random.Random(random.getrandbits(64))

    def __len__(self) -> int:
        return len(self.data)

    def push_and_pop(self, data: torch.Tensor) -> torch.Tensor:
        to_return = []
        for element in data.detach():
            element = element.unsqueeze(0).clone()
            if len(self.data) < self.max_size:
                self.data.append(element)
                to_return.append(element)
            elif self.rng.uniform(0, 1) > 0.5:
                i = self.rng.randint(0, self.max_size - 1)
                to_return.append(self.data[i].clone())
                self.data[i] = element
            else:
                to_return.append(element)
        return torch.cat(to_return)


class LambdaLR:
    """The reference's LR multiplier: 1 until ``decay_start_epoch``, then linear to 0 at ``n_epochs``.

    Use as ``torch.optim.lr_scheduler.LambdaLR(optimizer, LambdaLR(n_epochs, offset, decay).step)``,
    stepped once per epoch; ``offset`` is the epoch training starts from, so a restarted run
    continues the schedule where it was.
    """

    def __init__(self, n_epochs: int, offset: int, decay_start_epoch: int) -> None:
        if n_epochs - decay_start_epoch <= 0:
            raise ValueError(
                f"decay must start before training ends: decay_start_epoch={decay_start_epoch} "
                f"is not below n_epochs={n_epochs}"
            )
        self.n_epochs = n_epochs
        self.offset = offset
        self.decay_start_epoch = decay_start_epoch

    def step(self, epoch: int) -> float:
        return 1.0 - max(0, epoch + self.offset - self.decay_start_epoch) / (
            self.n_epochs - self.decay_start_epoch
        )


def psnr(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image of a batch in [-1, 1] against its target."""
    mse = ((images.float() - targets.float()) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success flush, fsync and rename it over ``path``.

    A process that dies mid-write leaves at most a ``.tmp`` file, never a half-written ``path``.
    The file gets the mode a plain ``open`` would give it (0666 less the umask), and text is
    UTF-8, a file name that is not written as its own bytes (``surrogateescape``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        text = {} if "b" in mode else {"encoding": "utf-8", "errors": "surrogateescape"}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)  # make the rename itself durable


def replace_dir(source: Path, target: Path) -> None:
    """Rename the whole folder ``source`` to ``target``; an existing ``target`` is first renamed
    to ``.<name>.old`` beside it and removed only once ``source`` is in its place, so a process
    killed between the two renames leaves the old folder whole under that name. Whatever has
    that name already is left alone (``.<name>.old1``, ... is used instead)."""
    if target.exists():
        trash = target.with_name(f".{target.name}.old")
        k = 1
        while os.path.lexists(trash):
            trash = target.with_name(f".{target.name}.old{k}")
            k += 1
        os.replace(target, trash)
        os.replace(source, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(source, target)
    fsync_dir(target.parent)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
