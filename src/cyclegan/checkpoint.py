"""Saving and loading runs: the four networks in one safetensors file, written atomically.

A checkpoint ``checkpoints/epoch_N.safetensors`` in a run folder holds the weights of G_AB,
G_BA, D_A and D_B after N completed epochs, their keys prefixed by the network's name
(``G_AB.model.1.weight``), and as metadata the epoch and the run's config as JSON. safetensors
holds tensors only, so loading a checkpoint never executes code. Weights saved by the reference
code (``G_AB_<N>.pth``, pickles) load through ``torch.load(weights_only=True)``, which refuses
anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from cyclegan.errors import CycleGANError
from cyclegan.utils import atomic_write

__all__ = [
    "NETWORK_NAMES",
    "checkpoint_path",
    "save_networks",
    "load_checkpoint",
    "load_state_dict_file",
    "list_checkpoints",
]

NETWORK_NAMES = ("G_AB", "G_BA", "D_A", "D_B")


def checkpoint_path(run_dir: str | os.PathLike[str], epoch: int) -> Path:
    """Where the checkpoint after ``epoch`` completed epochs lives in ``run_dir``."""
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch}.safetensors"


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


def save_networks(
    path: str | os.PathLike[str], networks: Mapping[str, nn.Module], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write the networks' weights to ``path`` (safetensors, atomically). Metadata is stored as JSON."""
    tensors: dict[str, torch.Tensor] = {}
    for name, net in networks.items():
        for key, value in net.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    data = save_safetensors_bytes(tensors, metadata=meta)
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
    metadata = {k: json.loads(v) for k, v in header.get("__metadata__", {}).items()}
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        states.setdefault(name, {})[rest] = value
    return states, metadata


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
