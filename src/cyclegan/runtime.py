"""How every command runs: the device it picks, its log lines, the signals that stop training,
and the one way a command's ``main`` reports a failure.

Every command's failure ends in ``report_failure``: one log line and an exit status, no
traceback. A ``CycleGANError`` (bad input: its message names the file or flag and what to do)
exits with its own status (2); an ``OSError`` names the path and the system's reason (2);
Ctrl-C exits 130; anything else is a failure the user did not cause, said in one line that asks
for a report (1). ``--debug`` (every command has it) or ``CYCLEGAN_DEBUG=1`` adds the full
traceback."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cyclegan.errors import CycleGANError

__all__ = ["resolve_device", "available_bytes", "setup_logging", "add_debug_flag", "split_debug", "report_failure",
           "run_command", "StopSignals", "format_eta", "settle_vector_math"]

log = logging.getLogger("cyclegan")


def resolve_device(name: str) -> torch.device:
    """``--device auto|cpu|cuda`` as a device; ``cuda`` without a GPU is a user error."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise CycleGANError("--device cuda: no CUDA device is available here; use --device cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


# The element-wise functions torch hands to Intel MKL's vector math library (VML) on the CPU.
_VML_FUNCTIONS = ("tanh", "exp", "log", "log2", "log10", "log1p", "expm1", "sqrt", "sin", "cos", "tan", "asin",
                  "acos", "atan", "erf", "erfc", "erfinv", "trunc")
_vector_math_settled = False


def settle_vector_math() -> None:
    """Call each of MKL's vector math functions once, first in one thread, then in all of them,
    and throw the results away; done once per process, when ``cyclegan`` is imported.

    torch splits a float tensor of more than 2048 elements between its threads and each thread
    calls MKL on its part. The first such call in a process, when two threads arrive at once,
    sometimes computes one thread's part by another, less exact route (about 1 in 10 training
    runs on a loaded 2-core machine: half of the generator's first ``tanh`` off by up to 1e-4).
    The run then differs from every other run with the same seed, and a resumed run from the
    straight one. Later calls are exact; this makes sure no result of a run's is a first call."""
    global _vector_math_settled
    if _vector_math_settled:
        return
    _vector_math_settled = True
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            one_thread = torch.linspace(0.1, 0.9, 64, dtype=dtype)  # under torch's grain: the calling thread
            all_threads = torch.linspace(0.1, 0.9, 4096 * max(torch.get_num_threads(), 2), dtype=dtype)
            for x in (one_thread, all_threads):
                for name in _VML_FUNCTIONS:
                    getattr(torch, name)(x)


def setup_logging() -> None:
    """Log lines to stderr, once per process (a no-op when the application configured logging).
    In a job of several processes (torchrun's ``WORLD_SIZE`` > 1) each line names its rank: the
    processes share one standard error, and an error line must say whose it is."""
    root = logging.getLogger()
    if not root.handlers:
        rank = ""
        if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
            rank = f"[rank {os.environ.get('RANK', '?')}] "
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {rank}%(message)s",
                            datefmt="%H:%M:%S")


def available_bytes(device: torch.device) -> int:
    """Free memory on a CUDA device; on the CPU, the kernel's MemAvailable (else a large number)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62


DEBUG_ENV = "CYCLEGAN_DEBUG"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Every command's ``--debug``: a failure prints its full traceback too."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=(
        f"on a failure, also print the full traceback (or set {DEBUG_ENV}=1)"))


def split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """The arguments without ``--debug`` (accepted anywhere, sub-commands included), and whether
    a traceback is wanted: ``--debug`` given or ``CYCLEGAN_DEBUG`` set (not 0)."""
    rest = [a for a in argv if a != "--debug"]
    return rest, len(rest) < len(argv) or os.environ.get(DEBUG_ENV, "0").strip() not in ("", "0")


def report_failure(exc: BaseException, logger: logging.Logger, debug: bool = False) -> int:
    """Log what went wrong in one line (with the traceback when ``debug``); the exit status."""
    if isinstance(exc, CycleGANError):
        message, code = str(exc), exc.exit_code
    elif isinstance(exc, KeyboardInterrupt):
        message, code = "interrupted (Ctrl-C)", 130
    elif isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        reason = exc.strerror or str(exc) or type(exc).__name__
        message = f"{where}: {reason}" if where else reason
        message += "; check the path, its permissions and the free space"
        code = 2
    elif isinstance(exc, MemoryError):
        message, code = "out of memory: use smaller images or batches, or a machine with more memory", 1
    else:
        message = (f"internal error ({type(exc).__name__}: {exc}); this is a bug in cyclegan, not in what you gave "
                   f"it: please report it with the output of the same command run with --debug")
        code = 1
    if debug:
        logger.error("%s", message, exc_info=(type(exc), exc, exc.__traceback__))
    else:
        logger.error("%s", message)
    return code


def run_command(parser: argparse.ArgumentParser, run: Callable[[Any], int | None], argv: Sequence[str] | None,
                logger: logging.Logger) -> int:
    """Parse ``argv`` with ``parser`` and ``run`` the result; any failure is reported by
    ``report_failure`` and its exit status returned (the shape of every command's ``main``)."""
    setup_logging()
    argv, debug = split_debug(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        return int(run(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure ends here, in one line
        return report_failure(exc, logger, debug)


def format_eta(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class StopSignals:
    """SIGINT / SIGTERM: the first asks training to stop after the current step (``signum`` is
    set); a second stops at once. Handlers are installed on entry (main thread only) and the
    previous ones restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}
        self.pid = os.getpid()

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a data-loader worker (forked with this handler): the main process decides
            return
        if self.signum is not None:  # second signal: default behaviour, now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning("%s received: stopping after this step (send it again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
