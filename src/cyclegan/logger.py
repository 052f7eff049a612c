"""What a run records for people to watch: the progress bar or log lines, ``metrics.jsonl``
always, and TensorBoard or W&B.

``Progress`` shows the loss terms, img/s, the fraction of the machine's peak and the time left:
a tqdm bar on a terminal, else a log line every tenth of an epoch.

``RunLogger`` is made on rank 0 only (other ranks get ``NullLogger``). Every ``--log_interval``
steps and at the end of each epoch it appends one JSON line to ``<run>/metrics.jsonl``:
``{"step", "epoch", "batch", "time", "D", "G", "adv", "cycle", "identity", "D_A", "D_B",
"lr_G", "lr_D", "img_s", "peak_fraction"}`` (CUT and FastCUT: ``"nce"`` and, with the identity
term, ``"nce_identity"`` instead of cycle, identity and D_A), and sends the same scalars to the
backend:

- ``tensorboard`` (the default): event files in ``<run>/tensorboard``, scalars under ``loss/``,
  ``lr/`` and ``speed/``, the sample grid as the image ``samples`` every ``--sample_interval``
  batches, and the config as text;
- ``wandb`` (``pip install "cyclegan[wandb]"``), offline: files in ``<run>/wandb`` for
  ``wandb sync``;
- ``none``: only ``metrics.jsonl``.

A resumed run appends to the same files, which are first cut back to the step it resumes from:
the lines of later steps (written before a crash, by the attempt that the resumed run replaces)
and a last line torn by a crash are dropped from ``metrics.jsonl``, and TensorBoard purges its
events after that step. ``read_metrics`` skips lines that are not records and keeps the last
line of a step.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cyclegan.errors import CycleGANError
from cyclegan.runtime import format_eta
from cyclegan.utils import atomic_write

__all__ = ["LOGGERS", "Progress", "NullLogger", "RunLogger", "make_logger", "cut_metrics", "read_metrics"]

log = logging.getLogger("cyclegan.logger")
train_log = logging.getLogger("cyclegan.train")

LOGGERS = ("tensorboard", "wandb", "none")
# The loss terms the progress line shows, those of the run's model that are there.
LOSS_TERMS = ("D", "G", "adv", "cycle", "identity", "nce", "nce_identity")


class Progress:
    """A tqdm bar on a terminal; otherwise a log line every tenth of an epoch."""

    def __init__(self, total: int, epoch: int, n_epochs: int, done: int = 0,
                 terms: tuple[str, ...] = LOSS_TERMS, score: str | None = None) -> None:
        """``terms``: the loss terms shown, in order (``D``, ``G`` and the model's ``loss_names``);
        ``score``: the latest score and the best so far (``--eval_every``), shown after them."""
        from tqdm import tqdm

        self.total, self.epoch, self.n_epochs, self.terms, self.score = total, epoch, n_epochs, terms, score
        self.every = max(1, total // 10)
        tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{n_epochs}", unit="batch",
                        leave=False) if tty else None

    def update(self, i: int, losses: dict[str, float], img_per_s: float, peak_fraction: float, eta_s: float) -> None:
        terms = " ".join(f"{k} {losses[k]:.4f}" for k in self.terms if k in losses)
        text = f"{terms} | {img_per_s:.3g} img/s | {peak_fraction:.0%} of peak"
        if self.score:
            text += f" | {self.score}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text} | ETA {format_eta(eta_s)}", refresh=False)
            self.bar.update(1)
        elif (i + 1) % self.every == 0 or i + 1 == self.total:
            train_log.info(
                "[Epoch %d/%d] [Batch %d/%d] %s | ETA %s",
                self.epoch + 1, self.n_epochs, i + 1, self.total, text, format_eta(eta_s),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class NullLogger:
    """The logger of ranks other than 0: records nothing."""

    def scalars(self, step: int, values: dict[str, float], **context: Any) -> None:
        pass

    def image(self, step: int, path: Path) -> None:
        pass

    def close(self) -> None:
        pass


def _record(line: str) -> dict[str, Any] | None:
    """A line of ``metrics.jsonl`` as its record, or None when it is not one (cut short, damaged)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    return record


def cut_metrics(path: Path, last_step: int | None) -> None:
    """Keep the whole records of ``metrics.jsonl`` up to ``last_step`` (all, when None), rewritten
    atomically when anything goes: a line torn by a crash, records past the step resumed from."""
    if not path.is_file():
        return
    text = path.read_bytes().decode("utf-8", "replace")
    lines = text.split("\n")
    whole = lines[:-1]  # the last piece has no newline: empty, or a line a crash cut short
    kept = [line for line in whole if (r := _record(line)) is not None and (last_step is None or r["step"] <= last_step)]
    if len(kept) == len(lines) - 1 and not lines[-1]:
        return
    with atomic_write(path, "w") as f:
        f.write("".join(line + "\n" for line in kept))


class RunLogger(NullLogger):
    def __init__(self, run_dir: Path, backend: str, config: dict[str, Any], resumed_at: int | None = None) -> None:
        """``resumed_at``: the step a resumed (or restarted) run continues after; what was
        logged past it is dropped."""
        self.run_dir = Path(run_dir)
        self.backend = backend
        self.start = time.time()
        cut_metrics(self.run_dir / "metrics.jsonl", resumed_at)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.tb = self.wandb = None
        if backend == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # tensorboard is a dependency; a broken install says so
                raise CycleGANError("--logger tensorboard needs the tensorboard package: pip install tensorboard, "
                                    "or pass --logger none") from exc
            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"),
                                    purge_step=None if resumed_at is None else resumed_at + 1)
            self.tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())), 0)
        elif backend == "wandb":
            try:
                import wandb
            except ImportError as exc:
                raise CycleGANError('--logger wandb needs wandb: pip install "cyclegan[wandb]" (it runs offline; '
                                    "upload later with wandb sync)") from exc
            self.wandb = wandb.init(mode="offline", dir=str(self.run_dir), config=config,
                                    name=self.run_dir.name, resume="allow")
        elif backend != "none":
            raise CycleGANError(f"--logger {backend}: use one of {', '.join(LOGGERS)}")

    def scalars(self, step: int, values: dict[str, float], **context: Any) -> None:
        record = {"step": step, **context, "time": round(time.time() - self.start, 3), **values}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in values.items():
                group = ("lr" if key.startswith("lr_") else "speed" if key in ("img_s", "peak_fraction") else
                         "eval" if key.startswith("eval_") else "loss")
                self.tb.add_scalar(f"{group}/{key}", value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def image(self, step: int, path: Path) -> None:
        if self.tb is None and self.wandb is None:
            return
        from PIL import Image

        array = np.asarray(Image.open(path).convert("RGB"))
        if self.tb is not None:
            self.tb.add_image("samples", array, step, dataformats="HWC")
            self.tb.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.log({"samples": wandb.Image(array)}, step=step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def make_logger(run_dir: Path, backend: str, config: dict[str, Any], is_main: bool,
                resumed_at: int | None = None) -> NullLogger:
    return RunLogger(run_dir, backend, config, resumed_at) if is_main else NullLogger()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``, one per step (the last line written for a step wins),
    in step order; lines that are not records (cut short, damaged) are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        record = _record(line)
        if record is not None:
            by_step[record["step"]] = record
    return [by_step[k] for k in sorted(by_step)]
