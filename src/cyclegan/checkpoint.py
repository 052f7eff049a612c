"""What a run leaves on disk and how it comes back: network checkpoints (the four networks in
one safetensors file), run checkpoints for ``--resume`` (networks, optimizers, schedulers,
replay buffers, RNG states, position), and weights files of other programs.

A checkpoint ``checkpoints/epoch_N.safetensors`` in a run folder holds the weights of G_AB,
G_BA, D_A and D_B (``--model cut`` / ``fastcut``: G_AB, D_B and the projection head F) after N
completed epochs, their keys prefixed by the network's name
(``G_AB.model.1.weight``), and as metadata the epoch and the run's config as JSON. safetensors
holds tensors only, so loading a checkpoint never executes code. Weights saved by the reference
code (``G_AB_<N>.pth``, pickles) load through ``torch.load(weights_only=True)``, which refuses
anything but tensors and plain containers.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from cyclegan.errors import CycleGANError
from cyclegan.registry import model_of_saved
from cyclegan.utils import ReplayBuffer, atomic_write, current_umask, fsync_dir, replace_dir

__all__ = [
    "checkpoint_path",
    "flatten_networks",
    "split_networks",
    "save_networks",
    "load_checkpoint",
    "load_state_dict_file",
    "list_checkpoints",
    "newest_checkpoint",
    "save_run_checkpoint",
    "load_run_checkpoint",
    "load_latest_run_checkpoint",
    "list_run_checkpoints",
    "rng_state",
    "set_rng_state",
    "buffers_state",
    "load_buffers_state",
]



def checkpoint_path(run_dir: str | os.PathLike[str], epoch: int) -> Path:
    """Where the checkpoint after ``epoch`` completed epochs lives in ``run_dir``."""
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch}.safetensors"


def best_checkpoint_path(run_dir: str | os.PathLike[str]) -> Path:
    """Where ``--keep_best`` keeps the networks of a run's best score (``scoring``)."""
    return Path(run_dir) / "checkpoints" / "best.safetensors"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> dict[int, Path]:
    """The checkpoints of ``run_dir`` by epoch."""
    found: dict[int, Path] = {}
    folder = Path(run_dir) / "checkpoints"
    if folder.is_dir():
        for p in folder.glob("epoch_*.safetensors"):
            suffix = p.stem.removeprefix("epoch_")
            if suffix.isdigit():
                found[int(suffix)] = p
    return dict(sorted(found.items()))


def flatten_networks(networks: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The networks' state dicts as one flat mapping ``"<network>.<key>"`` -> tensor (on the CPU,
    contiguous): what a checkpoint's safetensors file holds."""
    return {f"{name}.{key}": value.detach().cpu().contiguous()
            for name, net in networks.items() for key, value in net.state_dict().items()}


def split_networks(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``flatten_networks`` undone: ``{network: state dict}``."""
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        states.setdefault(name, {})[rest] = value
    return states


def save_networks(
    path: str | os.PathLike[str], networks: Mapping[str, nn.Module], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write the networks' weights to ``path`` (safetensors, atomically). Metadata is stored as JSON."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    data = save_safetensors_bytes(flatten_networks(networks), metadata=meta)
    path = Path(path)
    with atomic_write(path) as f:
        f.write(data)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a run checkpoint: ``({network name: state dict}, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise CycleGANError(f"checkpoint {path} does not exist")
    try:
        raw = path.read_bytes()
        tensors = load_safetensors_bytes(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, OSError) as exc:
        raise CycleGANError(f"checkpoint {path} is damaged or not a safetensors file ({exc}); use another one") from exc
    try:
        metadata = {k: json.loads(v) for k, v in (header.get("__metadata__") or {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise CycleGANError(f"checkpoint {path}: its metadata is damaged ({exc}); use another checkpoint") from exc
    return split_networks(tensors), metadata


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """One network's state dict from a ``.safetensors`` or ``.pth`` file, never executing code."""
    path = Path(path)
    if not path.is_file():
        raise CycleGANError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_safetensors_bytes(path.read_bytes())
        except (SafetensorError, ValueError) as exc:
            raise CycleGANError(f"weights file {path} is damaged or not a safetensors file ({exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        raise CycleGANError(
            f"weights file {path} could not be loaded safely ({type(exc).__name__}: {exc}); "
            "only plain state dicts of tensors are accepted"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CycleGANError(f"weights file {path} does not hold a state dict of tensors")
    return state


# ---------------------------------------------------------------------------------------------
# Run checkpoints: everything needed to continue a run exactly.
#
#   <run>/checkpoints/resume/step_000001200/networks.safetensors   the four networks
#                                          /state.pt               the rest (optimizers, schedulers,
#                                                                  replay buffers, RNG states,
#                                                                  position, config), tensors and
#                                                                  plain containers only
#
# A checkpoint folder is written under a temporary name, every file flushed and fsynced, then
# renamed into place: a folder named step_* is always whole. Loading checks both files and
# falls back to the newest one that loads.

RESUME_DIR = "resume"
_STEP_PREFIX = "step_"


def resume_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints" / RESUME_DIR


def list_run_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The run checkpoints of ``run_dir``, oldest first."""
    folder = resume_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(_STEP_PREFIX)
             and p.name[len(_STEP_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_STEP_PREFIX):]))


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_run_checkpoint(
    run_dir: str | os.PathLike[str], step: int, networks: Mapping[str, nn.Module], state: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write a run checkpoint for ``step`` atomically, then keep only the newest ``keep``."""
    folder = resume_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{_STEP_PREFIX}{step:09d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=folder))
    tmp.chmod(0o777 & ~current_umask())  # renamed into place: the mode of a plain mkdir, not 0700
    try:
        _write_file(tmp / "networks.safetensors", save_safetensors_bytes(flatten_networks(networks)))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        _write_file(tmp / "state.pt", buffer.getvalue())
        fsync_dir(tmp)
        replace_dir(tmp, final)  # the same step saved again (a resumed run): swapped, never none
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_run_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old != final:  # never the one just written
            shutil.rmtree(old, ignore_errors=True)
    return final


def set_aside(path: Path, why: str) -> Path:
    """Rename a run checkpoint so that --resume and pruning no longer see it (nothing is deleted)."""
    target = path.with_name(f"{path.name}.{why}")
    k = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{why}{k}")
        k += 1
    os.replace(path, target)
    return target


def clean_run_checkpoints(run_dir: str | os.PathLike[str]) -> None:
    """Tidy what a process killed while saving left: finish an interrupted swap, drop temp folders."""
    folder = resume_dir(run_dir)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(".old"):
            final = folder / p.name[1:-4]
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:  # killed between the two renames: the old checkpoint is the whole one
                os.replace(p, final)
        elif p.name.startswith(".") and p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True)


def load_run_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read a run checkpoint folder: ``({network: state dict}, state)``. Never executes code."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise CycleGANError(f"checkpoint {path} does not exist")
    try:
        tensors = load_safetensors_bytes((path / "networks.safetensors").read_bytes())
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - damaged, truncated, missing, or unsafe (a pickle with code)
        raise CycleGANError(f"checkpoint {path} is damaged or unsafe ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise CycleGANError(f"checkpoint {path} has no training state")
    states = split_networks(tensors)
    try:
        names = model_of_saved(state.get("config")).network_names
    except CycleGANError as exc:
        raise CycleGANError(f"checkpoint {path} is of an unknown model ({exc})") from None
    missing = [n for n in names if n not in states]
    if missing:
        raise CycleGANError(f"checkpoint {path} lacks the networks {', '.join(missing)}")
    return states, state


def load_latest_run_checkpoint(
    run_dir: str | os.PathLike[str], warn: Any = None, set_aside_damaged: bool = True
) -> tuple[Path, dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The newest run checkpoint of ``run_dir`` that loads; damaged ones are reported to ``warn``
    and (by one process only: ``set_aside_damaged``) renamed out of the way."""
    candidates = list_run_checkpoints(run_dir)
    if not candidates:
        raise CycleGANError(
            f"--resume: {resume_dir(run_dir)} holds no checkpoint; give the run folder with --output, or a "
            "checkpoint folder with --resume PATH"
        )
    for path in reversed(candidates):
        try:
            networks, state = load_run_checkpoint(path)
        except CycleGANError as exc:
            note = f"set aside as {set_aside(path, 'damaged').name}, " if set_aside_damaged else ""
            if warn is not None:
                warn(f"{exc}; {note}trying an older checkpoint")
            continue
        return path, networks, state
    raise CycleGANError(f"--resume: every checkpoint in {resume_dir(run_dir)} is damaged; nothing to resume from")


def newest_checkpoint(run_dir: Path) -> Path:
    """The most recently written checkpoint of a run folder (epoch file or run checkpoint)."""
    candidates = list(list_checkpoints(run_dir).values()) + list_run_checkpoints(run_dir)
    if not candidates:
        raise CycleGANError(f"--checkpoint {run_dir}: the run folder holds no checkpoint yet "
                            f"(looked in {run_dir / 'checkpoints'})")
    return max(candidates, key=lambda p: (p / "networks.safetensors" if p.is_dir() else p).stat().st_mtime)


# ---------------------------------------------------------------------------------------------
# Run state: what a run checkpoint's state.pt holds besides optimizers and schedulers, as tensors
# and plain containers (so that ``torch.load(weights_only=True)`` reads it).


def rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy and torch (and CUDA), as tensors and plain containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back the RNG states ``rng_state`` recorded."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def buffers_state(buffers: dict[str, ReplayBuffer | None]) -> dict[str, Any]:
    """The replay buffers' images (one tensor each, on the CPU) and their generators' states."""
    return {
        k: None if b is None else {"data": torch.cat(b.data).cpu() if b.data else None, "rng": b.rng.getstate()}
        for k, b in buffers.items()
    }


def load_buffers_state(buffers: dict[str, ReplayBuffer | None], state: dict[str, Any], device: torch.device) -> None:
    """Refill the replay buffers from ``buffers_state``, their images on ``device``."""
    for k, b in buffers.items():
        saved = state.get(k)
        if b is None or saved is None:
            continue
        b.data = [] if saved["data"] is None else [x.to(device) for x in saved["data"].split(1)][: b.max_size]
        b.rng.setstate(saved["rng"])
