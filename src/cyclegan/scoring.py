"""Scoring the generators while a run trains (``--eval_every``, ``--keep_best``, ``--early_stop``).

GAN losses do not say when a model is good; the papers report the best FID reached during
training. A ``Scorer`` translates a fixed subset of the held-out images (``--eval_images`` of
them, chosen once by a seeded draw, so that figures compare across epochs and runs) and
scores the translations the way ``cyclegan evaluate`` does, with the same code:

- FID and KID of G_AB's translations against real B images, on the FID Inception network
  (loaded once; the real images' features computed once and cached in ``<run>/eval/``). Left
  out, with one log line, when the Inception file is not there (unless ``--keep_best`` asks
  for them: then the run is refused before training);
- PSNR, SSIM and L1 against the paired truth (a paired model: pix2pix; with ``--eval_paired``
  any model, the held-out A and B files of the same name being pairs);
- the cycle error ``|G_BA(G_AB(A)) - A|`` (CycleGAN).

Scoring runs in inference mode with the generators in eval mode (batch norm's running
statistics and dropout untouched) and torch's random state forked: a run that scores trains
exactly the networks a run that does not would. ``Best`` is the best score so far and how many
scorings ago it was; it is part of a run checkpoint's state, so it survives ``--resume``, and
the generators that reached it are ``checkpoints/best.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cyclegan.checkpoint import best_checkpoint_path, load_checkpoint
from cyclegan.errors import CycleGANError
from cyclegan.measures import InceptionFeatures, find_inception, image_features, metrics_from_features, paired_metrics
from cyclegan.options import LOWER_IS_BETTER, TrainConfig
from cyclegan.registry import get_model
from cyclegan.science import composite, file_of, parse_bands, stem_of
from cyclegan.utils import atomic_write

__all__ = ["Best", "Scorer", "improved", "best_so_far"]

log = logging.getLogger("cyclegan.train")


@dataclass
class Best:
    """The best ``metric`` score so far (None before the first scoring), the epoch and step it
    was reached at, and the scorings since without improvement (for ``--early_stop``)."""

    metric: str
    value: float | None = None
    epoch: int = 0
    step: int = 0
    since: int = 0

    def to_state(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "epoch": self.epoch, "step": self.step,
                "since": self.since}

    @classmethod
    def from_state(cls, metric: str, state: dict[str, Any] | None) -> Best:
        """A run checkpoint's best (when it followed the same metric), else a fresh one."""
        if not state or state.get("metric") != metric:
            return cls(metric)
        return cls(metric, state.get("value"), int(state.get("epoch", 0)), int(state.get("step", 0)),
                   int(state.get("since", 0)))


def improved(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` beats ``best`` (lower for distances and errors, higher for PSNR and SSIM)."""
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def best_so_far(metric: str, state: dict[str, Any] | None, run_dir: Path) -> Best:
    """The best of a run that starts or resumes with ``--keep_best metric``: the run state's,
    checked against the best file on disk. A file of another metric (the run kept another score
    before) is renamed ``best_<metric>.safetensors``, never overwritten; a file better than the
    state's best (written just before a crash, after the last run checkpoint) is the best."""
    best = Best.from_state(metric, state)
    path = best_checkpoint_path(run_dir)
    if not path.is_file():
        return best
    try:
        meta = load_checkpoint(path)[1]
        kept = meta.get("best") or {}
        kept_metric, kept_value = kept.get("metric"), float(kept["value"])
    except (CycleGANError, KeyError, TypeError, ValueError):
        kept_metric, kept_value, meta = None, None, {}
    if kept_metric != metric:
        target = path.with_name(f"best_{kept_metric or 'unknown'}.safetensors")
        k = 1
        while target.exists():
            target = path.with_name(f"best_{kept_metric or 'unknown'}_{k}.safetensors")
            k += 1
        path.replace(target)
        log.info("--keep_best %s: the best generators kept for %s are now %s", metric, kept_metric or "another score",
                 target)
        return best
    if kept_value is not None and improved(metric, kept_value, best.value):
        best.value, best.epoch, best.step, best.since = kept_value, int(meta.get("epoch", 0)), int(
            meta.get("step", 0)), 0
    return best


def _check_pairs_by_name(val: Any) -> None:
    """``--eval_paired``: every held-out A file has a B file of the same name, and no more."""
    a, b = {stem_of(p): p for p in val.files_A}, {stem_of(p): p for p in val.files_B}
    alone = sorted(set(a) ^ set(b))
    if alone:
        first = a.get(alone[0]) or b.get(alone[0])
        raise CycleGANError(f"--eval_paired: {first} has no partner of the same name in the other domain's held-out "
                            f"folder ({len(alone)} file(s) without one); pairs share a name (A/x.png and B/x.png), "
                            "or leave --eval_paired out")


class Scorer:
    """The held-out subset, the Inception network and the real features, set up once before
    training (so that a missing file or too few images stop the run before any work)."""

    def __init__(self, config: TrainConfig, val: Any, run_dir: Path, device: torch.device) -> None:
        self.config, self.device = config, device
        model = get_model(config.model)
        self.forward_name = model.generators["AtoB"]
        self.back_name = model.generators.get("BtoA")
        self.paired = model.paired or config.eval_paired
        if config.eval_paired and not model.paired:
            _check_pairs_by_name(val)
        n = len(val)
        if n < 2:
            raise CycleGANError(f"--eval_every: the held-out set has {n} image(s); scoring needs at least 2 (FID and "
                                "KID compare sets): add images to test/ (or train/), or leave --eval_every out")
        count = min(config.eval_images, n)
        if count < config.eval_images:
            log.info("scoring: the held-out set has %d images, fewer than --eval_images %d: scoring all of them",
                     n, config.eval_images)
        chosen = sorted(np.random.default_rng(0).permutation(n)[:count].tolist())  # the same every time
        items = [val[(0, 0, i)] for i in chosen]  # val's transform is fixed; keyed items leave torch's RNG alone
        for item in items if config.eval_paired else ():
            if Path(item["A_path"]).stem != Path(item["B_path"]).stem:  # the two folders sort differently
                raise CycleGANError(f"--eval_paired: {item['A_path']} and {item['B_path']} come in the same place "
                                    "but differ in name; give pairs the same name and extension")
        self.real_A = torch.stack([item["A"] for item in items])
        self.real_B = torch.stack([item["B"] for item in items])
        self.files_B = [item["B_path"] for item in items]
        self.features: nn.Module | None = None
        self.real_features: torch.Tensor | None = None
        wants_inception = config.keep_best in ("fid", "kid")
        self.bands = parse_bands(config.display_bands)
        channels = self.real_B.shape[1]
        try:
            if channels not in (1, 3) and self.bands is None:  # FID sees RGB: which three channels?
                raise CycleGANError(f"FID and KID need three of the {channels} channels: give --display_bands R,G,B")
            inception = find_inception(config.inception)
        except CycleGANError as exc:
            if wants_inception:
                raise CycleGANError(f"--keep_best {config.keep_best}: {exc}") from None
            log.info("scoring leaves FID and KID out: %s", exc if channels not in (1, 3) and self.bands is None else
                     "the FID Inception network is not here (cyclegan download inception fetches it, or give "
                     "--inception PATH)")
        else:
            self.features = InceptionFeatures(inception, device)
            self.real_features = self._cached_real_features(inception, run_dir)
        if not self.names():
            raise CycleGANError(f"--eval_every: --model {config.model} has nothing to score without the FID Inception "
                                "network (no paired truth, no cycle): fetch it with cyclegan download inception (or "
                                "give --inception PATH), or give --eval_paired when the held-out files are pairs")
        log.info("scoring every %s on %d held-out images: %s", self._interval(), count, ", ".join(self.names()))

    def _interval(self) -> str:
        parts = [f"{self.config.eval_every} epoch(s)"] if self.config.eval_every else []
        if self.config.eval_every_steps:
            parts.append(f"{self.config.eval_every_steps} step(s)")
        return " and ".join(parts)

    def names(self) -> list[str]:
        """The scores each scoring gives."""
        names = ["fid", "kid"] if self.features is not None else []
        if self.paired:
            names += ["psnr", "ssim", "l1"]
        if self.back_name:
            names.append("cycle_l1")
        return names

    def _cached_real_features(self, inception: Path, run_dir: Path) -> torch.Tensor:
        """The real B images' features: read from ``<run>/eval/`` when the same files, size and
        Inception file made them, else computed and written there (atomically)."""
        stat = inception.stat()
        key = hashlib.sha256(json.dumps({
            "files": [[f, file_of(f).stat().st_size, file_of(f).stat().st_mtime_ns] for f in self.files_B],
            "shape": list(self.real_B.shape), "bands": self.bands,
            "inception": [str(inception.resolve()), stat.st_size, stat.st_mtime_ns],
        }).encode()).hexdigest()[:16]
        path = Path(run_dir) / "eval" / f"real_B_features_{key}.npy"
        if path.is_file():
            try:
                return torch.from_numpy(np.load(path, allow_pickle=False))
            except (OSError, ValueError):
                log.warning("scoring: %s is damaged; computing the real features again", path)
        assert self.features is not None
        with torch.inference_mode():
            features = image_features(list(composite(self.real_B, self.bands)), self.features)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            np.save(f, features.numpy(), allow_pickle=False)
        return features

    def score(self, nets: dict[str, nn.Module]) -> dict[str, float]:
        """The scores of the networks as they are now (see the module docstring)."""
        G = nets[self.forward_name]
        back = nets[self.back_name] if self.back_name else None
        modes = {name: net.training for name, net in nets.items()}
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                for net in nets.values():
                    net.eval()
                fakes, cycle = [], []
                for start in range(0, len(self.real_A), 8):
                    x = self.real_A[start:start + 8].to(self.device)
                    y = G(x).float()
                    fakes.append(y.cpu())
                    if back is not None:
                        cycle.append((back(y).float() - x).abs().mean((1, 2, 3)).cpu())
                fake = torch.cat(fakes)
                scores: dict[str, float] = {}
                if self.features is not None and self.real_features is not None:
                    fake_features = image_features(list(composite(fake, self.bands)), self.features)
                    found = metrics_from_features(self.real_features, fake_features)
                    scores.update(fid=found["fid"], kid=found["kid"])
                if self.paired:
                    found = paired_metrics(list(fake), list(self.real_B))
                    scores.update(psnr=found["psnr"], ssim=found["ssim"], l1=found["l1"])
                if cycle:
                    scores["cycle_l1"] = float(torch.cat(cycle).mean())
        finally:
            for name, net in nets.items():
                net.train(modes[name])
        return scores
