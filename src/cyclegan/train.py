"""The training loop of the reference design, with the reference's flags.

    python -m cyclegan.train --dataroot DIR [flags]      (or: cyclegan train ...)

``train(config)`` reads top to bottom: where the run starts (``resume``: new, ``--epoch N`` or
``--resume``), its data (``loader``), its networks, optimizers and schedulers (``models``,
``step``, ``perf``), then epoch after epoch of ``step.run_step`` with the progress line,
metrics and sample grids (``logger``) and run checkpoints (``checkpoint``). A run ends early in
three ways, each a named function here: a signal (``stop_run``: saved, ``TrainingStopped``),
``--max_steps`` (saved), a non-finite loss (``stop_if_diverged``: ``TrainingDiverged``, the last
good checkpoint kept). Under torchrun the networks are wrapped in DistributedDataParallel
(``distributed``). The flags are in ``options``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cyclegan.checkpoint import (
    best_checkpoint_path,
    checkpoint_path,
    list_run_checkpoints,
    resume_dir,
    save_networks,
    save_run_checkpoint,
)
from cyclegan.distributed import (
    DistEnv,
    any_rank,
    barrier,
    broadcast_int,
    env_from_environment,
    init_distributed,
    lost_peer,
    shutdown,
    wrap,
)
from cyclegan.errors import BadImageError, CycleGANError, PeerLost, TrainingDiverged, TrainingStopped
from cyclegan.images import make_grid, save_image
from cyclegan.science import composite, parse_bands
from cyclegan.loader import RunData, choose_dataset, make_loader, open_run_data, sample_batch, write_demo_data
from cyclegan.logger import NullLogger, Progress, make_logger
from cyclegan.memory import check_fits, out_of_memory_advice, resolve_recompute
from cyclegan.options import TrainConfig, check_path_flags, describe, get_args_parser, parse_config, validate
from cyclegan.perf import Speed, matmul_peak_gflops, prepare_networks, resolve_speed, step_flops
from cyclegan.registry import build_networks, get_model
from cyclegan.report import write_report
from cyclegan.resume import (
    Position,
    Start,
    check_run_dir,
    default_run_dir,
    load_networks,
    prepare_run_dir,
    restart_point,
    restore_training_state,
    resume_point,
    resume_run_dir,
    training_state,
)
from cyclegan.runlock import hold_run_folder
from cyclegan.runtime import StopSignals, format_eta, report_failure, resolve_device, setup_logging, split_debug
from cyclegan.scoring import Best, Scorer, best_so_far, improved
from cyclegan.step import build_optimizers, build_schedulers, run_step, step_schedulers
from cyclegan.utils import ReplayBuffer, atomic_write, seed_everything

__all__ = ["TrainConfig", "get_args_parser", "train", "main"]

log = logging.getLogger("cyclegan.train")


@dataclass
class Run:
    """Everything a run holds while it trains."""

    config: TrainConfig
    run_dir: Path
    env: DistEnv
    device: torch.device
    speed: Speed
    recompute: str  # the --activation_checkpointing mode in use (auto resolved)
    nets: dict[str, nn.Module]  # as built: what is saved and sampled
    trained: dict[str, nn.Module]  # what the step calls (DistributedDataParallel under torchrun)
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    buffers: dict[str, ReplayBuffer | None]
    scaler: Any
    position: Position
    scorer: Scorer | None = None  # --eval_every / --eval_every_steps (rank 0)
    best: Best | None = None  # --keep_best
    stop_reason: str | None = None  # set when --early_stop ends the run
    score_text: str | None = None  # the latest score and the best so far, for the progress line


def train(config: TrainConfig, explicit: set[str] | None = None) -> Path:
    """Train as the config says; returns the run folder. Raises ``TrainingStopped`` after a
    signal (having saved), ``TrainingDiverged`` on a non-finite loss, ``CycleGANError`` on bad input.
    ``explicit``: the options the user set (flags, ``--config``); None for a config built in code,
    all of it meant (a ``dataset_name`` then names the data). The run folder is locked
    (``runlock``) by rank 0 from before anything is written in it."""
    dataset_name_given = explicit is None or "dataset_name" in explicit
    explicit = explicit or set()
    check_path_flags(config)
    if config.resume:
        run_dir = resume_run_dir(config, explicit)
        if not run_dir.is_dir():
            raise CycleGANError(f"--resume: there is no run folder {run_dir}; give the run folder with --output, or "
                                "a checkpoint folder with --resume PATH")
    else:
        validate(config)
        check_scoring_files(config)
        config, _ = choose_dataset(config, dataset_name_given)  # no dataset given: the demo data, and runs/demo
        run_dir = default_run_dir(config)
        check_run_dir(config, run_dir)
    is_main = env_from_environment().is_main
    with hold_run_folder(run_dir) if is_main else contextlib.nullcontext():
        return train_in_folder(config, explicit)


def check_scoring_files(config: TrainConfig) -> None:
    """``--keep_best fid|kid`` needs the FID Inception network: refused before any work."""
    if config.keep_best in ("fid", "kid"):
        from cyclegan.measures import find_inception

        try:
            find_inception(config.inception)
        except CycleGANError as exc:
            raise CycleGANError(f"--keep_best {config.keep_best}: {exc}") from None


def train_in_folder(config: TrainConfig, explicit: set[str]) -> Path:
    """``train``, its run folder held. The config is settled here once (a resumed run's, the
    seed drawn when none was given) and not changed after: what config.json records is what ran."""
    resumed = None
    if config.resume:
        resumed = resume_point(config, explicit, is_main=env_from_environment().is_main)
        config = resumed.config
    validate(config)
    if resumed:
        check_scoring_files(config)  # a new run's were checked in train()
    env, device = init_distributed(resolve_device(config.device))
    if not env.is_main:
        logging.getLogger("cyclegan").setLevel(logging.WARNING)
    if config.seed is None:  # every rank must draw the same data order: rank 0's choice
        config = dataclasses.replace(config, seed=broadcast_int(random.SystemRandom().randrange(2**31), env, device))
        resumed = dataclasses.replace(resumed, config=config) if resumed else None
    _, data_root = choose_dataset(config, dataset_name_given=True)  # settled in train() or saved with the run
    run_dir = resumed.run_dir if resumed else default_run_dir(config)
    data = open_data(config, data_root, run_dir, env)  # every image checked before the old run is cleared
    if (data.domains["A"], data.domains["B"]) != (config.data_A, config.data_B):  # how the values were scaled
        config = dataclasses.replace(config, data_A=data.domains["A"], data_B=data.domains["B"])
        resumed = dataclasses.replace(resumed, config=config) if resumed else None
    start = resumed or new_start(config, env)
    seed_everything(config.seed + env.rank)  # per-rank model randomness; rank 0's weights are broadcast
    scorer = Scorer(config, data.val, run_dir, device) if env.is_main and (
        config.eval_every or config.eval_every_steps) else None
    run = build_run(start, env, device)
    run.scorer = scorer
    if config.keep_best:
        run.best = best_so_far(config.keep_best, (start.state or {}).get("best"), run_dir) if env.is_main else \
            Best(config.keep_best)
    if run.position.epoch >= config.n_epochs:
        log.info("the run in %s is already finished (%d epochs); pass a larger --n_epochs to continue it",
                 run.run_dir, config.n_epochs)
        return run.run_dir
    loader, sampler = make_loader(data.train, config, env.rank, env.world_size, device.type == "cuda")
    if config.batch_size * env.world_size > len(data.train):
        log.warning("--batch_size %d is more than the %d images an epoch has%s: each step trains on fewer images "
                    "than asked", config.batch_size, len(data.train), " across the ranks" if env.world_size > 1 else "")
    n_batches = len(loader)  # a whole epoch's (once positioned mid-epoch, the loader yields fewer)
    if start.state is None and config.epoch > 0:  # --epoch N: the steps of the epochs before it count
        run.position.step = config.epoch * n_batches
    if config.max_steps is not None and run.position.step >= config.max_steps:
        log.info("the run in %s is at step %d, not below --max_steps %d: nothing to do; continue it with a larger "
                 "--max_steps", run.run_dir, run.position.step, config.max_steps)
        return run.run_dir
    samples = sample_batch(data.val)
    announce(run, data, start)
    first_epoch = run.position.epoch
    with contextlib.closing(make_logger(run.run_dir, config.logger, config.to_json(), env.is_main,
                                        resumed_at=run.position.step if start.path is not None else None)) as run_logger:
        clock = Clock.for_run(run, n_batches)
        with StopSignals() as stop:
            for epoch in range(first_epoch, config.n_epochs):
                sampler.set_epoch(epoch, (run.position.batch if epoch == first_epoch else 0) * config.batch_size)
                if train_epoch(run, epoch, loader, n_batches, samples, stop, run_logger, clock):
                    return stop_run(run, stop)
    barrier(env)
    log.info("done: %d epochs in %s, run folder %s", config.n_epochs - first_epoch, format_eta(clock.elapsed()),
             run.run_dir)
    if env.is_main:
        log.info("report: %s", write_report(run.run_dir))
    return run.run_dir


def new_start(config: TrainConfig, env: DistEnv) -> Start:
    """A run that is not resumed: a new one (an old run in its folder cleared with
    ``--overwrite``), or the reference's ``--epoch N`` restart."""
    run_dir = default_run_dir(config)
    if env.is_main:
        prepare_run_dir(config, run_dir)
    return restart_point(config, run_dir) if config.epoch > 0 else Start(config, run_dir)


def open_data(config: TrainConfig, root: Path | None, run_dir: Path, env: DistEnv) -> RunData:
    """The run's data; the demo data (``root`` None) are written once, by rank 0."""
    if env.enabled and root is None:
        if env.is_main:
            write_demo_data(config, run_dir)
        barrier(env)
    return open_run_data(config, root, run_dir)


def build_run(start: Start, env: DistEnv, device: torch.device) -> Run:
    """The networks (with the start's weights), optimizers, schedulers and replay buffers of the
    run, on ``device``; a resumed run's state loaded into them."""
    config = start.config
    speed = resolve_speed(config.amp, config.channels_last, config.compile, device,
                          started=config.amp_used if start.state is not None else None)
    recompute = resolve_recompute(config, device)
    check_fits(config, device, recompute)
    nets = build_networks(config)
    load_networks(nets, start)
    prepare_networks(nets, speed, device, recompute)
    optimizers = build_optimizers(nets, config)
    trained = {name: wrap(net, env, device) for name, net in nets.items()}
    scaler = torch.amp.GradScaler(device.type) if speed.amp_dtype is torch.float16 else None
    schedulers = build_schedulers(optimizers, config)
    buffers = {k: ReplayBuffer(config.pool_size) if config.pool_size > 0 else None for k in ("A", "B")}
    position = Position(epoch=config.epoch)
    if start.state is not None:
        position = restore_training_state(start, optimizers, schedulers, buffers, scaler, device)
    config = dataclasses.replace(config, amp_used=speed.amp_name)  # config.json says what ran
    return Run(config, start.run_dir, env, device, speed, recompute, nets, trained, optimizers, schedulers, buffers,
               scaler, position)


def announce(run: Run, data: RunData, start: Start) -> None:
    """Write the run's config.json (rank 0) and say what is about to happen."""
    config, env = run.config, run.env
    if env.is_main:
        (run.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        with atomic_write(run.run_dir / "config.json", "w") as f:
            json.dump(config.to_json(), f, indent=2)
    log.info(
        "training on %s (%d images in A, %d in B) on %s, run folder %s, seed %d",
        data.root, len(data.train.files_A), len(data.train.files_B), run.device, run.run_dir, config.seed,
    )
    if env.enabled:
        log.info("%d processes (torchrun): batch %d per process, global batch %d", env.world_size,
                 config.batch_size, config.batch_size * env.world_size)
    if start.path is not None:
        log.info("starting from %s (epoch %d of %d, step %d)", start.path, run.position.epoch + 1, config.n_epochs,
                 run.position.step)


def steps_left(config: TrainConfig, position: Position, n_batches: int) -> int:
    """The steps this run will still take: to the end of its last epoch, or to --max_steps."""
    total = (config.n_epochs - position.epoch) * n_batches - position.batch
    if config.max_steps is not None:
        total = min(total, config.max_steps - position.step)
    return max(0, total)


class Clock:
    """The run's speed: img/s from the wall time between steps (the wait for data included), the
    fraction of the machine's measured matrix-multiply peak a step reaches (nanoGPT's MFU), and
    the time left."""

    def __init__(self, flops_per_image: float, peak_gflops: float, total_batches: int) -> None:
        self.flops, self.peak, self.total = flops_per_image, peak_gflops, total_batches
        self.done = 0
        self.start = self.last = time.perf_counter()

    @classmethod
    def for_run(cls, run: Run, n_batches: int) -> "Clock":
        config, is_main = run.config, run.env.is_main
        flops = step_flops(config) if is_main else 0
        peak = matmul_peak_gflops(run.device, run.speed.amp_dtype or torch.float32) if is_main else 0.0
        log.info("speed: %s; a step is %.3g GFLOP; measured %s matrix-multiply peak %.0f GFLOP/s",
                 run.speed.describe(), flops / 1e9, run.speed.amp_name if run.speed.amp_dtype else "fp32", peak)
        if is_main and run.speed.warning:
            log.warning("%s", run.speed.warning)
        return cls(flops / config.batch_size, peak, steps_left(config, run.position, n_batches))

    def lap(self) -> None:
        """Start timing the next step (at the start of an epoch)."""
        self.last = time.perf_counter()

    def tick(self, images: int, local_images: int) -> tuple[float, float, float]:
        """A step is done, of ``images`` images on all ranks and ``local_images`` on this one
        (the batch found, which a small dataset or an epoch's end makes smaller than
        ``--batch_size``): (img/s, this device's fraction of its peak, seconds left)."""
        now = time.perf_counter()
        step_s, self.last = max(now - self.last, 1e-9), now
        self.done += 1
        eta = (now - self.start) / self.done * max(0, self.total - self.done)
        return images / step_s, self.flops * local_images / step_s / 1e9 / max(self.peak, 1e-9), eta

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def train_epoch(run: Run, epoch: int, loader: Any, n_batches: int, samples: dict[str, torch.Tensor],
                stop: StopSignals, run_logger: NullLogger, clock: Clock) -> bool:
    """Train epoch ``epoch`` (``n_batches`` batches) from the sampler's position on; True when the
    run is to stop."""
    config, position, env = run.config, run.position, run.env
    first = position.batch if epoch == position.epoch else 0
    if first == 0:
        position.loss_G_sum = 0.0
    progress = Progress(n_batches, epoch, config.n_epochs, done=first,
                        terms=("D", "G", *get_model(config.model).loss_names), score=run.score_text)
    stopping, i = False, first - 1
    clock.lap()
    batches = enumerate(loader, start=first)
    while True:
        try:
            i, batch = next(batches)
        except StopIteration:
            break
        except BadImageError as exc:  # an image went bad since the run started: keep the work done
            raise bad_image_stop(run, exc, epoch, i + 1) from None
        real_A = batch["A"].to(run.device, non_blocking=True, memory_format=layout(run))
        real_B = batch["B"].to(run.device, non_blocking=True, memory_format=layout(run))
        try:
            losses = run_step(config, run.trained, run.optimizers, run.buffers, real_A, real_B,
                              amp_dtype=run.speed.amp_dtype, scaler=run.scaler)
        except torch.cuda.OutOfMemoryError as exc:
            raise out_of_memory_advice(config, run.device, run.recompute) from exc
        values = {k: float(v) for k, v in losses.items()}
        stop_if_diverged(run, values, batch, epoch, i)
        position.step += 1
        position.loss_G_sum += values["G"]
        img_s, peak_fraction, eta = clock.tick(real_A.size(0) * env.world_size, real_A.size(0))
        progress.update(i, values, img_s, peak_fraction, eta)
        if position.step % config.log_interval == 0 or i + 1 == n_batches:
            run_logger.scalars(position.step, {
                **values, "lr_G": run.optimizers["G"].param_groups[0]["lr"],
                "lr_D": run.optimizers["D_B"].param_groups[0]["lr"], "img_s": img_s, "peak_fraction": peak_fraction,
            }, epoch=epoch + 1, batch=i + 1)
        batches_done = epoch * n_batches + i
        if batches_done % config.sample_interval == 0 and env.is_main:
            grid = run.run_dir / "samples" / f"{batches_done:07d}.png"
            sample_images(config, run.nets, samples, grid, run.device)
            run_logger.image(batches_done, grid)
        if config.eval_every_steps and position.step % config.eval_every_steps == 0 and i + 1 < n_batches:
            score_now(run, epoch, run_logger)
            progress.score = run.score_text
        stopping = any_rank(stop.signum is not None, env, run.device) or run.stop_reason is not None or (
            config.max_steps is not None and position.step >= config.max_steps)
        if i + 1 < n_batches and (stopping or (config.save_every_steps and position.step % config.save_every_steps == 0)):
            save_run(run, epoch, i + 1)
        if stopping:
            break
    progress.close()
    if i + 1 == n_batches:
        end_epoch(run, epoch, n_batches, run_logger)
        stopping = stopping or run.stop_reason is not None
    return stopping


def bad_image_stop(run: Run, exc: BadImageError, epoch: int, batch: int) -> CycleGANError:
    """Save the run where it is and say which image failed (from a loader worker, the message
    arrives as the last line of the worker's traceback)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    what = lines[-1].removeprefix(f"{BadImageError.__module__}.{BadImageError.__name__}: ") if lines else "an image"
    saved = save_run(run, epoch, batch) if run.position.step > 0 else None
    where = f"the run was saved at step {run.position.step}" if saved else "nothing was trained yet"
    return CycleGANError(f"{what}; {where}. Replace or remove the file (or pass --bad_images skip), then continue "
                         f"with: cyclegan train --resume --output {run.run_dir}")


def layout(run: Run) -> torch.memory_format:
    return torch.channels_last if run.speed.channels_last else torch.contiguous_format


def end_epoch(run: Run, epoch: int, n_batches: int, run_logger: NullLogger) -> None:
    """Step the schedulers; score when ``--eval_every`` (or ``--eval_every_steps`` at the
    epoch's last step) asks; save the networks when ``--checkpoint_interval`` (or the end) asks,
    and a run checkpoint at the start of the next epoch."""
    config = run.config
    step_schedulers(run.schedulers, run.position.loss_G_sum / max(1, n_batches))
    completed = epoch + 1
    if (config.eval_every and completed % config.eval_every == 0) or (
            config.eval_every_steps and run.position.step % config.eval_every_steps == 0):
        score_now(run, completed, run_logger)
    if run.env.is_main and (completed == config.n_epochs or (
        config.checkpoint_interval != -1 and completed % config.checkpoint_interval == 0
    )):
        path = save_networks(checkpoint_path(run.run_dir, completed), run.nets,
                             {"epoch": completed, "config": config.to_json()})
        log.info("saved %s", path)
    save_run(run, completed, 0)


def score_now(run: Run, epoch: int, run_logger: NullLogger) -> None:
    """Score the generators (rank 0; the others wait), log the scores, keep the best
    generators (``--keep_best``) and note when ``--early_stop`` ends the run. ``epoch``: the
    epochs completed (a scoring inside an epoch counts the one under way as not completed)."""
    config, position = run.config, run.position
    if run.scorer is not None:
        scores = run.scorer.score(run.nets)
        run_logger.scalars(position.step, {f"eval_{k}": v for k, v in scores.items()}, epoch=epoch)
        text = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
        best = run.best
        if best is not None:
            value = scores[best.metric]
            if improved(best.metric, value, best.value):
                best.value, best.epoch, best.step, best.since = value, epoch, position.step, 0
                save_networks(best_checkpoint_path(run.run_dir), run.nets, {
                    "epoch": epoch, "step": position.step, "config": config.to_json(),
                    "best": {"metric": best.metric, "value": value}})
                text += f"; best {best.metric} so far: kept in {best_checkpoint_path(run.run_dir)}"
            else:
                best.since += 1
                text += (f"; best {best.metric} {best.value:.4g} at epoch {best.epoch} (step {best.step}), "
                         f"{best.since} scoring(s) ago")
            if config.early_stop and best.since >= config.early_stop:
                run.stop_reason = (f"--early_stop {config.early_stop}: {best.metric} has not improved for "
                                   f"{best.since} scorings (best {best.value:.4g} at epoch {best.epoch}, step "
                                   f"{best.step}, kept in {best_checkpoint_path(run.run_dir)})")
        log.info("scores at epoch %d, step %d: %s", epoch, position.step, text)
        shown = best.metric if best is not None else next(iter(scores), None)
        if shown is not None:
            run.score_text = f"{shown} {scores[shown]:.4g}" + (
                f" (best {best.value:.4g} at epoch {best.epoch})" if best is not None else "")
    if any_rank(run.stop_reason is not None, run.env, run.device) and run.stop_reason is None:
        run.stop_reason = "--early_stop (on rank 0)"  # every rank stops at this step


def save_run(run: Run, epoch: int, batch: int) -> Path | None:
    """A run checkpoint (rank 0) from which ``--resume`` continues at ``epoch``, ``batch``."""
    if not run.env.is_main:
        return None
    position = dataclasses.replace(run.position, epoch=epoch, batch=batch)
    state = training_state(position, run.optimizers, run.schedulers, run.buffers, run.scaler, run.config,
                           best=run.best.to_state() if run.best else None)
    try:
        return save_run_checkpoint(run.run_dir, position.step, run.nets, state, keep=run.config.keep_checkpoints)
    except OSError as exc:
        raise CycleGANError(
            f"could not save a checkpoint in {resume_dir(run.run_dir)} ({exc.strerror or exc}); the previous "
            "checkpoints are intact: free some space and continue with --resume"
        ) from exc


def stop_if_diverged(run: Run, values: dict[str, float], batch: dict[str, Any], epoch: int, i: int) -> None:
    """On a non-finite loss: list the batch's files in ``diverged_batch.txt`` and stop, naming
    the last good checkpoint."""
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if not bad:
        return
    step = run.position.step + 1
    report = run.run_dir / "diverged_batch.txt"
    with atomic_write(report, "w") as f:
        f.write(f"step {step}, epoch {epoch + 1}, batch {i + 1}: loss {', '.join(bad)} is not finite\n")
        f.writelines(f"A {p}\n" for p in batch["A_path"])
        f.writelines(f"B {p}\n" for p in batch["B_path"])
    last = list_run_checkpoints(run.run_dir)
    raise TrainingDiverged(
        f"loss {', '.join(bad)} became {values[bad[0]]} at step {step} (epoch {epoch + 1}, batch {i + 1}); the "
        f"batch's files are listed in {report}. The last good checkpoint is {last[-1] if last else 'none'}: lower "
        "--lr, check those images, and --resume"
    )


def stop_run(run: Run, stop: StopSignals) -> Path:
    """Every rank has stopped at the same step (and saved): leave together, as at the end of
    training, so that none tears its process group down while another still saves. A signal
    raises ``TrainingStopped``; ``--max_steps`` and ``--early_stop`` return the run folder."""
    barrier(run.env)
    config, step = run.config, run.position.step
    resume_cmd = f"cyclegan train --resume --output {run.run_dir}"
    if run.stop_reason is not None:
        log.info("stopped early at step %d by %s; continue with: %s", step, run.stop_reason, resume_cmd)
        return run.run_dir
    if config.max_steps is None or step < config.max_steps:  # a signal, here or on another rank
        signum = stop.signum or signal.SIGTERM
        raise TrainingStopped(
            f"stopped by {signal.Signals(signum).name} at step {step}; continue with: {resume_cmd}", 128 + signum
        )
    log.info("stopped at --max_steps %d; continue with: %s", step, resume_cmd)
    return run.run_dir


def sample_images(config: TrainConfig, nets: dict[str, nn.Module], batch: dict[str, torch.Tensor], path: Path,
                  device: torch.device) -> None:
    """A grid of the rows the config's model shows (``Model.sample_rows``): real A, G_AB(A), real
    B, then G_BA(B) (CycleGAN), G_AB(B) (CUT's identity image) or nothing more (pix2pix: B is the
    paired truth); generators in eval mode, then back in train mode."""
    model = get_model(config.model)
    generators = [nets[name] for name in model.generators.values()]
    for G in generators:
        G.eval()
    with torch.no_grad():
        real_A = batch["A"].to(device)
        real_B = batch["B"].to(device)
        images = model.sample_rows(nets, real_A, real_B)
    for G in generators:
        G.train()
    n = real_A.size(0)
    bands = parse_bands(config.display_bands)  # images of other than 1 or 3 channels: a composite, or grey
    images = [composite(x.cpu(), bands) for x in images]
    if len({x.size(1) for x in images}) > 1:  # grey and colour domains: show grey as RGB
        images = [x.expand(-1, 3, -1, -1) if x.size(1) == 1 else x for x in images]
    rows = [make_grid(x, nrow=n) for x in images]
    save_image(torch.cat(rows, dim=1), path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cyclegan.train`` and ``cyclegan train``; returns the exit status."""
    setup_logging()
    argv, debug = split_debug(sys.argv[1:] if argv is None else argv)
    try:
        config, explicit, print_config = parse_config(argv)
        if print_config:
            validate(config)
            print(describe(config), end="")
            return 0
        try:
            train(config, explicit)
        except RuntimeError as exc:
            lost = lost_peer(exc)
            if lost is None:
                raise
            raise PeerLost(lost) from exc  # --debug: the collective's traceback too
    except TrainingStopped as exc:
        log.warning("%s", exc)
        return exc.exit_code
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure ends in one line
        return report_failure(exc, log, debug)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
