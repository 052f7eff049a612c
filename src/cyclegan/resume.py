"""Where a run starts: a new run's folder, the reference's ``--epoch N`` restart (weights
only), or ``--resume`` (everything: the config merged with the flags given now, the networks,
optimizers, schedulers, replay buffers, RNG states and position), and the training state a run
checkpoint records for it."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cyclegan.checkpoint import (
    buffers_state,
    checkpoint_path,
    clean_run_checkpoints,
    list_checkpoints,
    list_run_checkpoints,
    load_buffers_state,
    load_checkpoint,
    load_latest_run_checkpoint,
    load_run_checkpoint,
    rng_state,
    set_aside,
    set_rng_state,
)
from cyclegan.errors import CycleGANError
from cyclegan.options import ARCHITECTURE_FIELDS, INVOCATION_FIELDS, TrainConfig, saved_fields
from cyclegan.step import lr_factor
from cyclegan.utils import ReplayBuffer

__all__ = ["Start", "resume_run_dir", "resume_point", "restart_point", "check_run_dir", "prepare_run_dir",
           "check_same_architecture", "training_state", "restore_training_state", "SCHEDULE_FIELDS"]

log = logging.getLogger("cyclegan.train")

# Flags that, changed on --resume, change the optimizers' rates and the schedule.
SCHEDULE_FIELDS = ("lr", "b1", "b2", "n_epochs", "decay_epoch", "lr_policy", "lr_decay_iters")


@dataclass
class Start:
    """What a run starts from: its config and folder, and for a restart or a resumed run the
    checkpoint, its networks' weights, its training state (``--resume`` only) and the flags
    changed on resume."""

    config: TrainConfig
    run_dir: Path
    path: Path | None = None
    net_states: dict[str, dict[str, torch.Tensor]] | None = None
    state: dict[str, Any] | None = None
    changed: dict[str, Any] = field(default_factory=dict)


def default_run_dir(config: TrainConfig) -> Path:
    return Path(config.output) if config.output else Path("runs") / config.dataset_name


# What a run writes in its folder, besides its data and config.json: cleared by --overwrite.
RUN_OUTPUTS = ("checkpoints", "samples", "tensorboard", "wandb", "metrics.jsonl", "report.html", "evaluation.json",
               "diverged_batch.txt")


def check_run_dir(config: TrainConfig, run_dir: Path) -> None:
    """Refuse to start a new run over an existing one unless asked to (nothing is written)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CycleGANError(f"--output {run_dir} is a file, not a folder: choose a folder for the run")
    if config.epoch == 0 and (run_dir / "config.json").exists() and not config.overwrite:
        raise CycleGANError(
            f"run folder {run_dir} already holds a run (config.json): continue it with --resume, "
            "choose another --output, or pass --overwrite to start over in it"
        )


def prepare_run_dir(config: TrainConfig, run_dir: Path) -> None:
    """With ``--overwrite``, clear what the old run in ``run_dir`` wrote (checkpoints, samples,
    metrics, logs, report) so that nothing of it can be mistaken for the new run's."""
    check_run_dir(config, run_dir)
    if config.epoch == 0 and (run_dir / "config.json").exists():
        for name in RUN_OUTPUTS:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def check_same_architecture(config: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    """Refuse to load a checkpoint into networks configured differently, listing every difference."""
    defaults = TrainConfig()
    diffs = [
        f"--{k} {getattr(config, k)} (checkpoint: {saved.get(k, getattr(defaults, k))})"
        for k in ARCHITECTURE_FIELDS
        if saved.get(k, getattr(defaults, k)) != getattr(config, k)
    ]
    if diffs:
        raise CycleGANError(
            f"{path} was trained with other network options; give the checkpoint's: " + ", ".join(diffs)
        )


def restart_point(config: TrainConfig, run_dir: Path) -> Start:
    """The reference's restart, ``--epoch N``: the networks saved after N epochs, nothing else."""
    ckpt = checkpoint_path(run_dir, config.epoch)
    if not ckpt.is_file():
        saved = ", ".join(str(e) for e in list_checkpoints(run_dir)) or "none"
        raise CycleGANError(f"--epoch {config.epoch}: no checkpoint {ckpt} (epochs saved in {run_dir}: {saved})")
    net_states, meta = load_checkpoint(ckpt)
    check_same_architecture(config, meta.get("config", {}), ckpt)
    return Start(config, run_dir, ckpt, net_states)


def resume_run_dir(config: TrainConfig, explicit: set[str]) -> Path:
    """The run folder ``--resume`` continues (read from the flags alone: nothing is opened):
    ``--output`` (or the default) for ``--resume`` alone, the folder given when it is a run
    folder, else the run folder that holds the checkpoint given (or ``--output`` when given)."""
    if config.resume == "latest":
        return default_run_dir(config)
    given = Path(config.resume).resolve()
    if (given / "checkpoints").is_dir():
        return given
    if "output" in explicit:
        return Path(config.output)
    path = given if given.is_dir() or not given.suffix else given.parent
    return path.parent.parent.parent  # <run>/checkpoints/resume/step_N


def _find_run_checkpoint(config: TrainConfig, run_dir: Path, is_main: bool) -> tuple[Path, dict, dict]:
    """The run checkpoint ``--resume`` names in ``run_dir``: the newest valid one, or the one
    given (later ones are then set aside)."""
    given = Path(config.resume).resolve() if config.resume != "latest" else None
    if given is None or (given / "checkpoints").is_dir():
        if is_main:
            clean_run_checkpoints(run_dir)
        path, states, state = load_latest_run_checkpoint(run_dir, warn=log.warning if is_main else None,
                                                         set_aside_damaged=is_main)
        return path, states, state
    if given.suffix == ".safetensors" and given.name.startswith("epoch_"):
        raise CycleGANError(
            f"--resume {given}: that file holds the networks only; continue from it with --epoch "
            f"{given.stem.removeprefix('epoch_')} (or resume from a folder under checkpoints/resume)"
        )
    states, state = load_run_checkpoint(given)
    path = given if given.is_dir() else given.parent
    if is_main:  # checkpoints after the one resumed from belong to an abandoned future
        for newer in list_run_checkpoints(run_dir):
            if int(newer.name.removeprefix("step_")) > state["step"]:
                log.warning("set aside %s (newer than the checkpoint resumed from)", set_aside(newer, "abandoned"))
    return path, states, state


def resume_point(config: TrainConfig, explicit: set[str], is_main: bool = True) -> Start:
    """``--resume``: the run's checkpoint, and its config overridden by the flags given now
    (``explicit``; network flags cannot change). The caller holds the run folder's lock."""
    run_dir = resume_run_dir(config, explicit)
    path, states, state = _find_run_checkpoint(config, run_dir, is_main)
    saved = saved_fields(state.get("config"), str(path))
    defaults = TrainConfig().to_json()
    merged = {**defaults, **{k: v for k, v in saved.items() if k in defaults and k not in INVOCATION_FIELDS}}
    changed = {k: getattr(config, k) for k in explicit if k in defaults and getattr(config, k) != merged.get(k)}
    changed.pop("resume", None)
    check_same_architecture(TrainConfig(**{**merged, **changed}), saved, path)
    for k, v in changed.items():
        if k not in ("output", *INVOCATION_FIELDS):
            log.info("on resume: --%s %s (the run had %s)", k, v, merged.get(k))
    merged.update(changed)
    merged["resume"], merged["output"] = config.resume, str(run_dir)
    return Start(TrainConfig(**merged), run_dir, path, states, state, changed)


def apply_schedule_changes(optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                           config: TrainConfig, old_lr: float) -> None:
    """After loading a run's optimizer and scheduler states, make flags changed on resume count:
    betas, the base learning rate and the schedule, with the rate of the current epoch recomputed.
    (The schedulers' ``get_last_lr()`` shows the new rate from their next step on.)"""
    for name, opt in optimizers.items():
        sched = schedulers[name]
        epoch = getattr(sched, "last_epoch", 0)
        factor = lr_factor(config, epoch)
        for group in opt.param_groups:
            group["betas"] = (config.b1, config.b2)
            group["initial_lr"] = config.lr
            # plateau (no factor): keep its reductions, rescaled to the new base rate
            group["lr"] = config.lr * factor if factor is not None else group["lr"] * config.lr / old_lr
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [config.lr] * len(opt.param_groups)


@dataclass
class Position:
    """Where a run is: the epoch and batch it continues at, the steps done, and the generator
    losses summed over the epoch so far (for ``--lr_policy plateau``)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_G_sum: float = 0.0


def training_state(position: Position, optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                   buffers: dict[str, ReplayBuffer | None], scaler: Any, config: TrainConfig,
                   best: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run checkpoint's ``state.pt`` holds besides the networks (``best``: the best
    score so far, ``scoring.Best``)."""
    return {
        "format": 1, "epoch": position.epoch, "batch": position.batch, "step": position.step,
        "loss_G_sum": position.loss_G_sum,
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "buffers": buffers_state(buffers), "rng": rng_state(), "config": config.to_json(),
        "scaler": scaler.state_dict() if scaler is not None else None, "best": best,
    }


def scheduler_state(saved: dict[str, Any], start_epoch: int) -> dict[str, Any]:
    """A saved scheduler's state as today's schedulers load it. Runs saved before the policies
    became one function (``step.lr_factor``) hold a ``StepLR`` or ``CosineAnnealingLR`` that
    counted its epochs from 0, not from the run's ``--epoch``: as the ``LambdaLR`` that replaced
    them, at the same rate."""
    if "step_size" not in saved and "T_max" not in saved:
        return saved
    state = {key: v for key, v in saved.items() if key not in ("step_size", "gamma", "T_max", "eta_min")}
    state["last_epoch"] = saved["last_epoch"] - start_epoch
    state["lr_lambdas"] = [None] * len(saved.get("base_lrs", [None]))
    return state


def restore_training_state(start: Start, optimizers: dict[str, torch.optim.Optimizer], schedulers: dict[str, Any],
                           buffers: dict[str, ReplayBuffer | None], scaler: Any, device: torch.device) -> Position:
    """Load a resumed run's state into the freshly built objects (the RNG states last) and
    apply the schedule flags changed on resume; returns where the run continues."""
    state = start.state
    assert state is not None
    for k, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][k])
    for k, sched in schedulers.items():
        sched.load_state_dict(scheduler_state(state["schedulers"][k], state["config"].get("epoch", 0)))
    load_buffers_state(buffers, state["buffers"], device)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    position = Position(state["epoch"], state["batch"], state["step"], state.get("loss_G_sum", 0.0))
    set_rng_state(state["rng"])
    if any(k in start.changed for k in SCHEDULE_FIELDS):
        apply_schedule_changes(optimizers, schedulers, start.config, state["config"].get("lr", start.config.lr))
    return position


def load_networks(nets: dict[str, nn.Module], start: Start) -> None:
    """The start's weights into the freshly built networks (nothing for a new run)."""
    if start.net_states is not None:
        for name, net in nets.items():
            net.load_state_dict(start.net_states[name])
