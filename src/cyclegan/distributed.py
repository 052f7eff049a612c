"""Multi-process training with torch.distributed, switched on by the variables torchrun sets.

    torchrun --nproc_per_node=N -m cyclegan.train ...

``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` select the mode: with ``WORLD_SIZE`` > 1 each process
joins a process group (nccl on CUDA, gloo on the CPU), takes one device (``cuda:LOCAL_RANK``),
and wraps the networks in DistributedDataParallel. Everything else in training reads the
``DistEnv`` this module returns; with no torchrun it describes a single process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistEnv", "init_distributed", "wrap", "unwrap", "any_rank", "broadcast_int", "barrier", "shutdown",
           "lost_peer"]


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_environment() -> DistEnv:
    """What torchrun set, or a single process."""
    try:
        return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        return DistEnv()


def init_distributed(device: torch.device) -> tuple[DistEnv, torch.device]:
    """Join the process group when torchrun started several processes; the device of this rank."""
    env = env_from_environment()
    if not env.enabled:
        return env, device
    # A rank that dies of a signal (an abort inside a collective library, a segfault) would leave
    # only torchrun's "Signal 6 received"; this prints the Python stack of each of its threads
    # (where there is a standard error with a file descriptor to print to: not in every notebook).
    with contextlib.suppress(RuntimeError, ValueError, AttributeError, OSError):
        faulthandler.enable()
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return env, device


def wrap(net: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """``net`` in DistributedDataParallel when distributed (rank 0's weights are broadcast)."""
    if not env.enabled:
        return net
    ids = [device.index] if device.type == "cuda" else None
    # Buffers (pix2pix's batch-norm statistics) are broadcast from rank 0 at each forward: DDP's
    # default, left implicit because torch 2.13 warns on every rank when the argument is given.
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (so that all ranks stop at the same step)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_int(value: int, env: DistEnv, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def barrier(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# What the collective libraries say when the process at the other end has gone away (gloo:
# "Connection closed by peer" / "reset by peer" / a broken pipe; NCCL: "remote process exited").
_PEER_GONE = ("closed by peer", "reset by peer", "broken pipe", "remote process exited")


def lost_peer(exc: BaseException, env: DistEnv | None = None) -> str | None:
    """What to say when ``exc`` is a collective of a multi-process job failing because another
    process went away (that one's own error says why); None for any other failure."""
    env = env or env_from_environment()
    if not env.enabled or not isinstance(exc, RuntimeError):  # what torch's collectives raise
        return None
    text = str(exc)
    if not any(marker in text.lower() for marker in _PEER_GONE):
        return None
    reason = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0])  # gloo's "[.../pair.cc:553] "
    reason = reason.split(". ")[0].rstrip(".")
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "the process group"
    return (f"lost another process of this {env.world_size}-process job ({backend}: {reason}): it most likely "
            "failed first and its own error line says why; this process stops too")
